"""Processes as an operator sees them with `ps`: read from Linux's /proc."""

from __future__ import annotations

from pathlib import Path


def state_and_parent(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid, from /proc; None once it is gone."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except (OSError, ValueError):
        return None
    return state, int(parent)


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited but not reaped, does not)."""
    found = state_and_parent(pid)
    return found is not None and found[0] != "Z"


def children(pid: int, marker: bytes) -> list[int]:
    """The live processes whose parent is `pid` and whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        child = int(entry.name)
        try:
            command = (entry / "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        state = state_and_parent(child)
        if state and state[1] == pid and state[0] != "Z" and marker in command:
            found.append(child)
    return found
