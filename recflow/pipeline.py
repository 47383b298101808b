"""The pipeline: from a matched event to durable work, and the runtime around it.

`open_runtime(config, host)` opens the backend named by `config.backend`
(queue and journal) and returns a `Runtime`: its `pipeline` is what the
receiver calls, `start(n)` starts `n` worker threads, `close()` stops them.

`Pipeline.submit` answers only once the event and the first step of each
matched rule are committed. Commits are grouped: one committer thread takes
every submission waiting, writes them in one transaction (one fsync for
the group) with the group's first steps enqueued (`Journal.record_and_enqueue`:
in that same transaction on SQLite, right after it on Redis), then
resolves each submission, so a burst of callbacks costs a few fsyncs
instead of one each while every answer still follows its commit. A task
lost between a commit and its enqueue (a crash, on Redis) is found by the
workers' recovery pass, since the journal records the step.

A submission waits on a plain asyncio future of its own event loop; the
committer resolves a whole group with one `call_soon_threadsafe` per loop,
which costs the event loop far less than a `concurrent.futures.Future`
per callback (a lock and a condition each) wrapped for asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple, TypeAlias

from recflow.config import Config, RuleConfig
from recflow.errors import BackendError
from recflow.event import Event
from recflow.journal import Journal, NewEvent, Owner, open_journal
from recflow.plugins import PluginHost
from recflow.queue import StepQueue, parse_backend
from recflow.worker import StepRunner, WorkerPool

logger = logging.getLogger(__name__)

# The most submissions written in one transaction.
MAX_GROUP = 500
# How long the committer waits for a group to fill under load, in all and
# between two submissions, in seconds.
LINGER = 0.002
LINGER_GAP = 0.0005


class _Submission(NamedTuple):
    event: NewEvent
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[bool]


# What a submission learns: new (True), known (False), or why it failed.
_Outcome: TypeAlias = bool | BackendError


class Pipeline:
    """Commits accepted callbacks to the backend; what the receiver calls."""

    def __init__(self, journal: Journal, queue: StepQueue, host: PluginHost) -> None:
        self.journal = journal
        self.queue = queue
        self.host = host
        self._pending: queue_module.SimpleQueue[_Submission | None] = queue_module.SimpleQueue()
        self._closed = False
        self._committer = threading.Thread(
            target=self._commit_loop, name="recflow-committer", daemon=True
        )
        self._committer.start()

    async def submit(self, event: Event, rules: Sequence[RuleConfig]) -> bool:
        """Record `event` and the first step of each rule; True if it is new.

        A known event (a provider's retry, a duplicate sent at the same
        moment) returns False and runs nothing. Raises `BackendError` when
        the backend cannot commit: the receiver answers 503.
        """
        if self._closed:
            raise BackendError("the pipeline is closed")
        record = NewEvent(
            id=event.id,
            data=event.to_dict(),
            received_at=time.time(),
            rules=tuple(rule.name for rule in rules),
            first_steps=tuple(
                (rule.name, rule.steps[0].action, rule.steps[0].id) for rule in rules if rule.steps
            ),
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._pending.put(_Submission(record, loop, future))
        fresh = await future
        if fresh:
            try:
                self.host.hook.event_received(event=event, rules=list(record.rules))
            except Exception as exc:  # an observer must not lose the callback
                logger.error("hook event_received raised, ignored: %s", exc)
        return fresh

    async def healthy(self) -> bool:
        """True when the journal answers."""
        if self._closed:
            return False
        return await asyncio.to_thread(self.journal.ping)

    def close(self) -> None:
        """Commit what was submitted, then stop the committer."""
        if not self._closed:
            self._closed = True
            self._pending.put(None)
            self._committer.join()
            # A submit that passed its check as close began is refused, not left waiting.
            late: list[_Submission] = []
            while not self._pending.empty():
                item = self._pending.get_nowait()
                if item is not None:
                    late.append(item)
            _answer(late, [BackendError("the pipeline is closed") for _ in late])

    def _commit_loop(self) -> None:
        previous = 1
        while True:
            first = self._pending.get()
            if first is None:
                return
            group = [first]
            stop = False
            # Under load (the last group had company), wait a little for more:
            # a group's cost is mostly its commit, whatever its size.
            deadline = time.monotonic() + LINGER if previous > 1 else 0.0
            while len(group) < MAX_GROUP:
                try:
                    wait = deadline - time.monotonic()
                    if wait > 0 and len(group) < previous:
                        item = self._pending.get(timeout=min(wait, LINGER_GAP))
                    else:
                        item = self._pending.get_nowait()
                except queue_module.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            previous = len(group)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Submission]) -> None:
        try:
            events = [s.event for s in group]
            fresh = self.journal.record_and_enqueue(events, time.time(), self.queue)
        except Exception as exc:
            logger.error("cannot commit %d callbacks: %s", len(group), exc)
            message = str(exc)
            _answer(group, [BackendError(message) for _ in group])
            return
        _answer(group, fresh)


def _answer(group: Sequence[_Submission], outcomes: Sequence[_Outcome]) -> None:
    """Hand each submission its outcome, in one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], _Outcome]]] = {}
    for submission, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(submission.loop, []).append((submission.future, outcome))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, items)
        except RuntimeError:
            # The loop closed while its callbacks were committed: nobody waits.
            logger.debug("%d outcomes for a closed event loop dropped", len(items))


def _settle(items: list[tuple[asyncio.Future[bool], _Outcome]]) -> None:
    """Resolve futures, in their own event loop's thread."""
    for future, outcome in items:
        if future.done():  # cancelled: the request went away
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Runtime:
    """The backend, the pipeline and this process's workers."""

    def __init__(
        self,
        config: Config,
        host: PluginHost,
        *,
        lease: float = 60.0,
        recovery_interval: float = 30.0,
        recovery_grace: float = 30.0,
    ) -> None:
        base_dir = os.path.dirname(os.path.abspath(config.path)) if config.path else "."
        backend = parse_backend(config.backend, base_dir)
        self.queue = StepQueue(backend)
        self.journal = open_journal(backend)
        self.pipeline = Pipeline(self.journal, self.queue, host)
        self.owner = Owner.current()
        self.runner = StepRunner(config, host, self.journal, self.queue, self.owner, lease)
        self.workers = WorkerPool(
            self.runner, recovery_interval=recovery_interval, recovery_grace=recovery_grace
        )
        self._started = False

    def start(self, workers: int) -> None:
        """Start `workers` worker threads and the recovery pass; 0: web only."""
        if workers > 0 and not self._started:
            self._started = True
            self.workers.start(workers)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking submissions and steps; running steps get `timeout` s."""
        self.pipeline.close()
        if self._started:
            self.workers.stop(timeout)
        self.journal.close()


def open_runtime(config: Config, host: PluginHost, **options: float) -> Runtime:
    """Open the backend of `config` for the receiver and the workers.

    `options` tune leases and recovery (`lease`, `recovery_interval`,
    `recovery_grace`, in seconds); the defaults suit production.
    Raises `BackendError` when the backend cannot be opened.
    """
    return Runtime(config, host, **options)
