"""The pipeline: from a matched event to durable work, and the runtime around it.

`open_runtime(config, host)` opens the backend named by `config.backend`
(queue and journal) and returns a `Runtime`: its `pipeline` is what the
receiver calls, `start(n)` starts `n` worker threads, `close()` stops them.

`Pipeline.submit` answers only once the event and the first step of each
matched rule are committed. Commits are grouped: one committer thread takes
every submission waiting, writes them in one transaction (one fsync for
the group), then resolves each submission, so a burst of callbacks costs a
few fsyncs instead of one each while every answer still follows its
commit. Tasks are enqueued after the commit and before the answer; a task
lost between the two (a crash) is found by the workers' recovery pass,
since the journal records the step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Sequence
from typing import NamedTuple

from recflow.config import Config, RuleConfig
from recflow.errors import BackendError
from recflow.event import Event
from recflow.journal import Journal, NewEvent, Owner, open_journal
from recflow.plugins import PluginHost
from recflow.queue import StepKey, StepQueue, parse_backend
from recflow.worker import StepRunner, WorkerPool

logger = logging.getLogger(__name__)

# The most submissions written in one transaction.
MAX_GROUP = 500


class _Submission(NamedTuple):
    event: NewEvent
    done: concurrent.futures.Future[bool]


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
        done: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._pending.put(_Submission(record, done))
        fresh = await asyncio.wrap_future(done)
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

    def _commit_loop(self) -> None:
        while True:
            first = self._pending.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._pending.get_nowait()
                except queue_module.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            self._commit(group)
            if stop:
                return

    def _commit(self, group: list[_Submission]) -> None:
        try:
            fresh = self.journal.record([s.event for s in group], time.time())
        except Exception as exc:
            error = exc if isinstance(exc, BackendError) else BackendError(str(exc))
            logger.error("cannot commit %d callbacks: %s", len(group), exc)
            for submission in group:
                submission.done.set_exception(error)
            return
        self.queue.put_many(
            [
                StepKey(s.event.id, rule, 0)
                for s, new in zip(group, fresh, strict=True)
                if new
                for rule, _, _ in s.event.first_steps
            ]
        )
        for submission, new in zip(group, fresh, strict=True):
            submission.done.set_result(new)


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
