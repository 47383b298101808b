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

`recflow serve` commits from a process of its own instead of a thread
(`commit_process=True`, see `recflow.commit_process`): the submissions of
one turn of the event loop go to it in one frame, and its answers come
back the same way. Tests and embedders that build a `Pipeline` themselves
get the committer thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import queue as queue_module
import threading
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeAlias

from recflow.commit_process import Answer, CommitProcess
from recflow.config import Config, RuleConfig
from recflow.errors import BackendError
from recflow.event import Event
from recflow.journal import Journal, NewEvent, Owner, open_journal
from recflow.log_output import counted
from recflow.plugins import PluginHost
from recflow.queue import StepQueue, parse_backend
from recflow.worker import StepRunner, WorkerPool

logger = logging.getLogger(__name__)

# With a commit process: how long a callback waits for its commit before
# it is answered 503, how often that is checked, and how long `healthy`
# says no after a commit failed (seconds).
COMMIT_TIMEOUT = 10.0
SWEEP_EVERY = 1.0
UNHEALTHY_AFTER_FAILURE = 10.0
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

    def __init__(
        self,
        journal: Journal,
        queue: StepQueue,
        host: PluginHost,
        *,
        commit_process: tuple[str, str] | None = None,
    ) -> None:
        """`commit_process`: (backend URL, base dir) to commit from a child process."""
        self.journal = journal
        self.queue = queue
        self.host = host
        self._pending: queue_module.SimpleQueue[_Submission | None] = queue_module.SimpleQueue()
        self._closed = False
        self._committer: threading.Thread | None = None
        self._process: CommitProcess | None = None
        # For the process: submissions sent and not answered, by number, and
        # those of this turn of the event loop, not sent yet.
        self._numbers = itertools.count()
        self._waiting: dict[int, _Submission] = {}
        self._outbox: list[tuple[int, NewEvent]] = []
        self._outbox_lock = threading.Lock()
        self._loop_cache: tuple[int, asyncio.AbstractEventLoop] | None = None
        self._sweeper: asyncio.AbstractEventLoop | None = None
        self._failed_at = 0.0  # when a commit last failed, for `healthy`
        # Called once a group with new events is committed (from the commit
        # process's answers): how `recflow serve` wakes its worker process.
        self.on_fresh: Callable[[], None] | None = None
        if commit_process is not None:
            backend, base_dir = commit_process
            self._process = CommitProcess(backend, base_dir, self._answered, self._lost)
        else:
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
        loop = self._running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        if self._process is None:
            self._pending.put(_Submission(record, loop, future))
        else:
            self._post(_Submission(record, loop, future))
        fresh = await future
        observers = self.host.hook.event_received
        if fresh and observers.get_hookimpls():  # a call costs even with no plugin
            try:
                observers(event=event, rules=list(record.rules))
            except Exception as exc:  # an observer must not lose the callback
                logger.error("hook event_received raised, ignored: %s", exc)
        return fresh

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """`asyncio.get_running_loop()`, without its system call each time.

        On Python 3.11 it calls getpid() to detect a fork, which under load
        cost as much as building the event record. A loop cached for this
        thread that is running is the running one: a thread runs one loop
        at a time.
        """
        ident = threading.get_ident()
        cached = self._loop_cache
        if cached is not None and cached[0] == ident and cached[1].is_running():
            return cached[1]
        loop = asyncio.get_running_loop()
        self._loop_cache = (ident, loop)
        return loop

    async def healthy(self) -> bool:
        """True when the journal answers and commits go through.

        With a commit process: False while a callback has waited half of
        `COMMIT_TIMEOUT` for its commit, and for `UNHEALTHY_AFTER_FAILURE`
        seconds after a commit failed, so that a load balancer sends the
        provider's callbacks elsewhere meanwhile.
        """
        if self._closed:
            return False
        if self._process is not None:
            now = time.time()
            with self._outbox_lock:
                oldest = next(iter(self._waiting.values()), None)
            if oldest is not None and now - oldest.event.received_at > COMMIT_TIMEOUT / 2:
                return False
            if now - self._failed_at < UNHEALTHY_AFTER_FAILURE:
                return False
        return await asyncio.to_thread(self.journal.ping)

    def close(self) -> None:
        """Commit what was submitted, then stop the committer."""
        if not self._closed:
            self._closed = True
            if self._process is not None:
                self._flush()
                self._process.close()
                with self._outbox_lock:
                    unanswered, self._waiting = list(self._waiting.values()), {}
                _answer(unanswered, [BackendError("the pipeline is closed") for _ in unanswered])
                return
            self._pending.put(None)
            assert self._committer is not None
            self._committer.join()
            # A submit that passed its check as close began is refused, not left waiting.
            late: list[_Submission] = []
            while not self._pending.empty():
                item = self._pending.get_nowait()
                if item is not None:
                    late.append(item)
            _answer(late, [BackendError("the pipeline is closed") for _ in late])

    # -- committing from a child process ----------------------------------------

    def _post(self, submission: _Submission) -> None:
        """Queue a submission for the frame sent at the end of this loop turn."""
        number = next(self._numbers)
        with self._outbox_lock:
            self._waiting[number] = submission
            self._outbox.append((number, submission.event))
            first = len(self._outbox) == 1
        if first:
            # After every callback this turn has ready: they share the frame.
            submission.loop.call_soon(self._flush, submission.loop)
        if self._sweeper is not submission.loop:
            self._sweeper = submission.loop
            submission.loop.call_later(SWEEP_EVERY, self._sweep, submission.loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Answer 503 to callbacks waiting on their commit for `COMMIT_TIMEOUT` s.

        A commit process stalled (stopped, or waiting on a lock another
        process holds) would otherwise hold them until the provider gives
        up; a 503 now makes it retry, and a commit that does come later
        makes that retry a known duplicate. Runs every `SWEEP_EVERY` s while
        anything waits: one timer, not one per callback.
        """
        now = time.time()
        with self._outbox_lock:
            expired = []
            for number, submission in self._waiting.items():  # oldest first
                if now - submission.event.received_at < COMMIT_TIMEOUT:
                    break
                expired.append(number)
            late = [self._waiting.pop(number) for number in expired]
            more = bool(self._waiting)
        if late:
            self._failed_at = now
            logger.error(
                "%s not committed within %g s, answered 503: is the commit process"
                " stalled, or the backend locked?",
                counted(len(late), "callback"),
                COMMIT_TIMEOUT,
            )
            reason = f"not committed within {COMMIT_TIMEOUT:g} s"
            _answer(late, [BackendError(reason) for _ in late], here=loop)
        if more and not self._closed:
            loop.call_later(SWEEP_EVERY, self._sweep, loop)
        else:
            self._sweeper = None

    def _flush(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        with self._outbox_lock:
            items, self._outbox = self._outbox, []
        if not items:
            return
        assert self._process is not None
        try:
            self._process.send(items, loop)
        except BackendError as exc:
            logger.error(
                "cannot send %s to the commit process: %s", counted(len(items), "callback"), exc
            )
            self._lost([number for number, _ in items], str(exc))

    def _answered(self, answers: list[tuple[int, Answer]]) -> None:
        """The commit process's answers, in the event loop that reads them."""
        group: list[_Submission] = []
        outcomes: list[_Outcome] = []
        errors: dict[str, int] = {}
        with self._outbox_lock:
            for number, answer in answers:
                submission = self._waiting.pop(number, None)
                if submission is None:
                    continue
                group.append(submission)
                if isinstance(answer, bool):
                    outcomes.append(answer)
                else:
                    outcomes.append(BackendError(answer))
                    errors[answer] = errors.get(answer, 0) + 1
        for message, count in errors.items():
            logger.error("cannot commit %s: %s", counted(count, "callback"), message)
        if errors:
            self._failed_at = time.time()
        if True in outcomes:
            self.queue.wakeup.set()
            if self.on_fresh is not None:
                self.on_fresh()
        _answer(group, outcomes, here=self._process.loop if self._process else None)

    def _lost(self, numbers: list[int], reason: str) -> None:
        self._failed_at = time.time()
        with self._outbox_lock:
            lost = [s for n in numbers if (s := self._waiting.pop(n, None)) is not None]
        _answer(lost, [BackendError(reason) for _ in lost])

    # -- committing from a thread ------------------------------------------------

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


def _answer(
    group: Sequence[_Submission],
    outcomes: Sequence[_Outcome],
    here: asyncio.AbstractEventLoop | None = None,
) -> None:
    """Hand each submission its outcome, in one call per event loop.

    `here` is the loop running this call, if any: its futures are resolved
    at once rather than through a thread-safe wake-up.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], _Outcome]]] = {}
    for submission, outcome in zip(group, outcomes, strict=True):
        by_loop.setdefault(submission.loop, []).append((submission.future, outcome))
    for loop, items in by_loop.items():
        if loop is here:
            _settle(items)
            continue
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
        commit_process: bool = False,
        upgrade: bool = True,
    ) -> None:
        # A loaded config's SQLite path is absolute already; this is for one made by hand.
        base_dir = os.path.dirname(os.path.abspath(config.path)) if config.path else "."
        backend = parse_backend(config.backend, base_dir)
        # The journal first: its opening waits out another process's upgrade
        # of the file, which Huey's storage would take for a locked database.
        self.journal = open_journal(backend, upgrade=upgrade)
        self.queue = StepQueue(backend)
        self.pipeline = Pipeline(
            self.journal,
            self.queue,
            host,
            commit_process=(config.backend, base_dir) if commit_process else None,
        )
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


def open_runtime(
    config: Config,
    host: PluginHost,
    *,
    commit_process: bool = False,
    upgrade: bool = True,
    **options: float,
) -> Runtime:
    """Open the backend of `config` for the receiver and the workers.

    `commit_process` commits accepted callbacks from a child process (what
    `recflow serve` does); `upgrade=False` refuses a journal of an earlier
    schema instead of upgrading it (`open_journal`); `options` tune leases
    and recovery (`lease`, `recovery_interval`, `recovery_grace`, in
    seconds); the defaults suit production. Raises `BackendError` when the
    backend cannot be opened.
    """
    return Runtime(config, host, commit_process=commit_process, upgrade=upgrade, **options)
