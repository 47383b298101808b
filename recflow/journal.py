"""The journal: the durable record of every event and of what is owed.

Each accepted callback is one event row; each step of a matched rule that
has been reached is one step row, in one of four states::

    queued --claim--> running --ok--> done   (and the next step: queued)
       ^                 |
       +----- retry -----+--last attempt or permanent--> failed

and every attempt is one run row (start, end, outcome, outputs, error).
A step is claimed atomically with a lease, so two workers never run it at
once and a step marked done never runs again; a lease that expires (a
worker killed mid-step) lets the recovery pass hand it to another worker.

`Journal` is the interface; `open_journal` picks the implementation for a
backend URL (`recflow.journal_sqlite`, `recflow.journal_redis`).
Outputs and errors arrive here already masked by the worker.
"""

from __future__ import annotations

import abc
import dataclasses
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from recflow.queue import Backend, StepKey, StepQueue

STATES = ("queued", "running", "done", "failed")


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """An event to record with the first step of each matched rule."""

    id: str
    data: Mapping[str, Any]  # Event.to_dict()
    received_at: float
    rules: tuple[str, ...]  # matched rule names, in file order
    first_steps: tuple[tuple[str, str, str | None], ...]  # (rule, action, step id)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A step a worker now holds: what it needs to run it."""

    key: StepKey
    attempt: int
    event: Mapping[str, Any]  # Event.to_dict()
    # (action, step id, outputs) of the rule's earlier steps, in order
    previous: tuple[tuple[str, str | None, Mapping[str, Any]], ...]


@dataclasses.dataclass(frozen=True)
class Owner:
    """Who holds a lease: host, process and a token unique to this start.

    The token tells a restarted process from an earlier one that had the
    same pid (pid 1 in a container, for one).
    """

    host: str
    pid: int
    token: str

    @classmethod
    def current(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), os.urandom(6).hex())

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.token}"

    def knows_dead(self, other: str) -> bool:
        """True when `other` surely names a process that no longer runs.

        Only a process on this host can be checked; a lease held elsewhere
        is left to expire.
        """
        host, _, rest = other.partition(":")
        pid_text, _, token = rest.partition(":")
        if host != self.host or not pid_text.isdigit():
            return False
        pid = int(pid_text)
        if pid == self.pid:
            return token != self.token
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """True when `pid` has exited but was not reaped (Linux's /proc says "Z").

    A worker process whose receiver was killed is re-parented, and where
    nothing reaps orphans (a container without an init, some VMs) it stays
    a zombie that `kill(pid, 0)` still finds: it runs nothing, though.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) S ...": the state follows the last parenthesis.
            return stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Journal(abc.ABC):
    """What the pipeline, the workers and the command line ask of a journal."""

    @abc.abstractmethod
    def record(self, events: Sequence[NewEvent], now: float) -> list[bool]:
        """Claim and record events in one commit; True for each new one.

        A known event id (a duplicate) records nothing and gives False.
        Raises `BackendError` when the commit fails.
        """

    def record_and_enqueue(
        self, events: Sequence[NewEvent], now: float, queue: StepQueue
    ) -> list[bool]:
        """`record`, then enqueue the first steps of the new events on `queue`.

        What the pipeline calls. Here the enqueue follows the commit: a task
        lost in between is found by the recovery pass, since the journal
        records its step. A backend that can write both in one commit
        overrides this.
        """
        fresh = self.record(events, now)
        queue.put_many(first_step_keys(events, fresh))
        return fresh

    @abc.abstractmethod
    def claim(self, key: StepKey, owner: Owner, lease: float, now: float) -> Claim | None:
        """Take a step that is due (queued and past `next_at`, or running with
        an expired lease), as `running` with attempts + 1; else None."""

    @abc.abstractmethod
    def renew(self, keys: Sequence[StepKey], owner: Owner, lease_until: float) -> None:
        """Extend the leases `owner` holds on running steps."""

    @abc.abstractmethod
    def succeed(
        self,
        claim: Claim,
        owner: Owner,
        outputs: Mapping[str, Any],
        now: float,
        next_step: tuple[str, str | None] | None,
    ) -> bool:
        """Mark a claimed step done and queue `next_step` (action, id) in
        one commit; False when the lease was lost to another worker."""

    @abc.abstractmethod
    def fail(
        self, claim: Claim, owner: Owner, error: str, now: float, retry_at: float | None
    ) -> bool:
        """Record a failed attempt: queued again at `retry_at`, or failed for
        good when it is None; False when the lease was lost."""

    @abc.abstractmethod
    def overdue(self, now: float, grace: float, owner: Owner) -> list[StepKey]:
        """Steps owed but not in progress: queued past `next_at + grace`, or
        running past their lease or held by a dead process (released)."""

    @abc.abstractmethod
    def retry(self, event_id: str | None, now: float) -> list[StepKey]:
        """Queue failed steps again with attempts reset: those of one event,
        or every failed step when `event_id` is None."""

    @abc.abstractmethod
    def list_events(self, limit: int = 20, failed_only: bool = False) -> list[dict[str, Any]]:
        """Recent events, newest first, in the shape `recflow events --json`
        prints."""

    @abc.abstractmethod
    def get_event(self, id_prefix: str) -> dict[str, Any] | None:
        """One event by id or unique id prefix, with each step's runs.

        Raises `LookupError` when the prefix is ambiguous.
        """

    @abc.abstractmethod
    def ping(self) -> bool:
        """True when the journal answers."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""


def first_step_keys(events: Sequence[NewEvent], fresh: Sequence[bool]) -> list[StepKey]:
    """The step keys of the first step of each matched rule of the new events."""
    return [
        StepKey(event.id, rule, 0)
        for event, new in zip(events, fresh, strict=True)
        if new
        for rule, _, _ in event.first_steps
    ]


def open_journal(backend: Backend, upgrade: bool = True) -> Journal:
    """The journal implementation for a parsed backend URL.

    `upgrade=False` (the commands that read the journal) refuses an SQLite
    file of an earlier schema rather than upgrade it: an upgrade is for the
    new release's `recflow serve` or `recflow worker`, once the old ones
    have stopped, not a side effect of a look at the events.
    """
    if backend.kind == "sqlite":
        from recflow.journal_sqlite import SqliteJournal

        return SqliteJournal(backend.location, upgrade=upgrade)
    from recflow.journal_redis import RedisJournal

    return RedisJournal(backend.location)
