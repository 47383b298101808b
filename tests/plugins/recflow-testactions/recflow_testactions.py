"""Actions for recflow's tests, installed with pip like any third-party plugin.

Each run of `t_append` appends one line to a file, so a test can count how
often a step really ran, even across a `kill -9` of the process that ran it.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from recflow import ActionError, hookimpl
from recflow.plugins import ActionSpec

_FILE = {"type": "object", "required": ["file"], "properties": {"file": {"type": "string"}}}


def _append_line(path: str, text: str) -> int:
    with open(path, "a", encoding="utf-8") as stream:
        stream.write(text + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    with open(path, encoding="utf-8") as stream:
        return sum(1 for _ in stream)


def append(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Wait `sleep` seconds (a slow step), then append one line per run."""
    if params.get("started"):
        _append_line(params["started"], f"{ctx.event.id} {ctx.rule} {ctx.step_index}")
    time.sleep(float(params.get("sleep", 0)))
    text = f"{ctx.event.id} {ctx.rule} {ctx.step_index} {params.get('text', '')}".rstrip()
    count = _append_line(params["file"], text)
    return {"line": text, "count": count}


def flaky(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Fail the first `failures` runs (counted in `file`), then succeed."""
    count = _append_line(params["file"], str(ctx.attempt))
    if count <= int(params.get("failures", 2)):
        raise ActionError(f"flaky failure number {count}")
    return {"runs": count}


def fail(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Always fail, with `message`; `permanent` skips the attempts left."""
    if params.get("file"):
        _append_line(params["file"], str(ctx.attempt))
    if params.get("unless_exists") and os.path.exists(params["unless_exists"]):
        return {"recovered": True}
    raise ActionError(
        params.get("message", "always fails"), permanent=params.get("permanent", False)
    )


def crash(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Raise an unexpected exception, as a buggy plugin would."""
    raise RuntimeError(params.get("message", "boom"))


async def echo(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """A coroutine action: returns its parameters."""
    await asyncio.sleep(0)
    return dict(params)


@hookimpl
def register_actions(register: Any) -> None:
    register(
        ActionSpec(name="t_append", run=append, schema=_FILE, description=append.__doc__ or "")
    )
    register(ActionSpec(name="t_flaky", run=flaky, schema=_FILE, description=flaky.__doc__ or ""))
    register(ActionSpec(name="t_fail", run=fail, description=fail.__doc__ or ""))
    register(ActionSpec(name="t_crash", run=crash, description=crash.__doc__ or ""))
    register(ActionSpec(name="t_echo", run=echo, description=echo.__doc__ or ""))
