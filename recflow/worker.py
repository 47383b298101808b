"""Workers: threads that take steps from the queue and run them.

A worker takes a step key from Huey, claims the step in the journal (or
drops the task: the step is done, failed, running elsewhere or not due),
renders its parameters, runs the action through the plugin manager, and
records the outcome and the next step in one commit before enqueueing that
step. A housekeeping thread moves delayed retries to the queue, renews the
leases of running steps (so a long upload is not handed to another worker)
and, every `recovery_interval`, enqueues steps the journal owes that no
task will bring: a worker killed mid-step, a task lost with its queue.

Threads, not Huey's consumer, so that the process that runs them (the web
server, or `recflow worker`) keeps its own signal handling.

An attempt that runs past its step's `timeout` (an action stuck on a dead
network share, a plugin waiting forever) is failed by the housekeeping
thread, with the rule's retries, and a new worker thread takes the stuck
one's place. A known shortcoming: the stuck thread itself cannot be
stopped (Python threads cannot be killed); it goes on until its action
returns, and then its outcome is refused, since the journal has moved to
the next attempt, and the thread ends. `close()` stops waiting for it after
its own timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from recflow.config import Config, RuleConfig, StepConfig
from recflow.context import StepContext
from recflow.errors import ActionError, BackendError
from recflow.event import Event
from recflow.journal import Claim, Journal, Owner
from recflow.plugins import PluginHost, call_action
from recflow.queue import StepKey, StepQueue
from recflow.secrets import Redactor
from recflow.templates import StepsSoFar, render_params

logger = logging.getLogger(__name__)
action_logger = logging.getLogger("recflow.action")


class _Permanent(Exception):
    """A failure no attempt can mend: a missing rule, action or provider."""


@dataclasses.dataclass(eq=False)
class _Run:
    """One attempt this process runs: its claim, its monotonic deadline, its
    thread. Its lock makes "record the outcome" and "time it out" one or the
    other, never both."""

    claim: Claim
    due: float
    thread: threading.Thread
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    recorded: bool = False  # its own outcome went to the journal
    timed_out: bool = False  # failed by `StepRunner.time_out`


def _why_lost(recorded: bool | None) -> str:
    """Why an attempt's outcome was not recorded (`StepRunner._record`)."""
    if recorded is None:
        return "it had timed out; its outcome is not recorded"
    return "another worker took the step over"


class StepRunner:
    """Runs one step key to an outcome recorded in the journal."""

    def __init__(
        self,
        config: Config,
        host: PluginHost,
        journal: Journal,
        queue: StepQueue,
        owner: Owner,
        lease: float,
    ) -> None:
        self.config = config
        self.host = host
        self.journal = journal
        self.queue = queue
        self.owner = owner
        self.lease = lease
        self.redactor = Redactor(config.secrets)
        # The attempts this process is running, timed-out ones included
        # until their threads are free.
        self._runs: set[_Run] = set()
        self._lock = threading.Lock()
        # Per thread: whether its last attempt timed out (`replaced`).
        self._local = threading.local()

    def running(self) -> list[StepKey]:
        """The steps this process is running now, within their timeouts
        (their leases to renew)."""
        with self._lock:
            return [run.claim.key for run in self._runs if not run.timed_out]

    def run(self, key: StepKey) -> str | None:
        """Run `key` if the journal lets this worker claim it.

        Returns the outcome (`done`, `retry`, `failed`, `lost`), or None when
        the task was dropped because the step was not this worker's to run.
        """
        self._local.timed_out = False
        claim = self.journal.claim(key, self.owner, self.lease, time.time())
        if claim is None:
            logger.debug("task for %s/%s/%d dropped: not due", *key)
            return None
        _, step = self._rule_and_step(key)
        timeout = step.timeout if step is not None else StepConfig.timeout
        run = _Run(claim, time.monotonic() + timeout, threading.current_thread())
        with self._lock:
            self._runs.add(run)
        try:
            return self._run_claimed(run)
        finally:
            with self._lock:
                self._runs.discard(run)
            self._local.timed_out = run.timed_out

    def replaced(self) -> bool:
        """Whether the calling thread's last attempt timed out: another thread
        took its place (`time_out`), and this one is to end."""
        return bool(getattr(self._local, "timed_out", False))

    def stuck_threads(self) -> set[threading.Thread]:
        """The threads still in attempts that timed out, replaced already."""
        with self._lock:
            return {run.thread for run in self._runs if run.timed_out}

    def time_out(self) -> int:
        """Fail the attempts that have run past their step's timeout; how many.

        Each is recorded as failed, retried as the step's `retry` says, and
        its lease is no longer renewed. Its thread is left to finish, and
        counted as replaced: the caller starts one in its place. An attempt
        whose own outcome was recorded first is left alone.
        """
        now = time.monotonic()
        with self._lock:
            late = [run for run in self._runs if run.due <= now and not run.timed_out]
        timed_out = 0
        for run in late:
            # The run's lock, not the runner's: recording may wait on the backend.
            with run.lock:
                if run.recorded:
                    continue
                run.timed_out = True
                timed_out += 1
                self._record_timeout(run)
        return timed_out

    def _record_timeout(self, run: _Run) -> None:
        claim = run.claim
        event, rule, step = self._resolve(claim)
        timeout = step.timeout if step is not None else StepConfig.timeout
        logger.error(
            "step timed out event=%s rule=%s step=%d action=%s attempt=%d: still running"
            " after %g s; failed, its thread left stuck in the action and replaced",
            claim.key.event_id,
            claim.key.rule,
            claim.key.step_index + 1,
            step.action if step else "?",
            claim.attempt,
            timeout,
        )
        try:
            error = f"timed out after {timeout:g} s"
            self._fail(run, event, rule, step, error, False, timing_out=True)
        except BackendError as exc:
            # Not renewed any more: its lease runs out and recovery runs it again.
            logger.warning("step %s/%s/%d timed out; cannot record it: %s", *claim.key, exc)

    def _record(self, run: _Run, write: Callable[[], bool]) -> bool | None:
        """Record `run`'s own outcome with `write`, unless its timeout came first.

        True when recorded; False when the journal refused it (the step was
        taken over); None when the run had timed out: then nothing is
        written, so that a late outcome can never stand for a later attempt,
        not even one that `recflow retry` numbered the same.
        """
        with run.lock:
            if run.timed_out:
                return None
            run.recorded = True
            return write()

    def _resolve(self, claim: Claim) -> tuple[Event, RuleConfig | None, StepConfig | None]:
        """The claimed step's event, and its rule and step in this config (if any)."""
        return Event.from_dict(claim.event), *self._rule_and_step(claim.key)

    def _rule_and_step(self, key: StepKey) -> tuple[RuleConfig | None, StepConfig | None]:
        rule = self.config.rule(key.rule)
        step = rule.steps[key.step_index] if rule and key.step_index < len(rule.steps) else None
        return rule, step

    def _run_claimed(self, run: _Run) -> str:
        claim = run.claim
        key = claim.key
        event, rule, step = self._resolve(claim)
        if rule is None or step is None:
            error = f"rule {key.rule!r} has no step {key.step_index + 1} in the config any more"
            return self._fail(run, event, rule, step, error, permanent=True)

        self._hook("step_started", event=event, rule=rule, step=step, attempt=claim.attempt)
        try:
            outputs = self._execute(claim, event, rule, step)
        except ActionError as exc:
            return self._fail(run, event, rule, step, str(exc), exc.permanent)
        except _Permanent as exc:
            return self._fail(run, event, rule, step, str(exc), permanent=True)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            # An action may raise anything, asyncio's CancelledError and
            # SystemExit included: the attempt fails, and the thread goes on
            # to the next step rather than end and leave the pool short.
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            return self._fail(run, event, rule, step, error, permanent=False)

        outputs = self.redactor.mask_obj(outputs)
        following = rule.steps[key.step_index + 1] if key.step_index + 1 < len(rule.steps) else None
        next_step = (following.action, following.id) if following else None
        recorded = self._record(
            run, lambda: self.journal.succeed(claim, self.owner, outputs, time.time(), next_step)
        )
        if not recorded:
            self._log(claim, step, "lost", _why_lost(recorded))
            return "lost"
        self._log(claim, step, "done", None)
        self._hook("step_succeeded", event=event, rule=rule, step=step, outputs=outputs)
        if next_step is not None:
            self.queue.put_many([StepKey(key.event_id, key.rule, key.step_index + 1)])
        return "done"

    def _execute(
        self, claim: Claim, event: Event, rule: RuleConfig, step: StepConfig
    ) -> dict[str, Any]:
        spec = self.host.actions.get(step.action)
        if spec is None:
            raise _Permanent(f"action {step.action!r} is not installed")
        provider = self.config.provider_for(event.account_sid)
        if provider is None:
            raise _Permanent(f"no provider in the config has account {event.account_sid}")
        by_id = StepsSoFar((sid, dict(out)) for _, sid, out in claim.previous if sid)
        try:
            params = render_params(
                step.params, {"event": event, "rule": {"name": rule.name}, "steps": by_id}
            )
        except Exception as exc:  # a TemplateError, or a filter that raised
            raise _Permanent(f"cannot render parameters: {exc}") from exc
        ctx = StepContext(
            event=event,
            rule=rule.name,
            step_index=claim.key.step_index,
            step_id=step.id,
            attempt=claim.attempt,
            steps=by_id,
            previous=tuple((action, dict(out)) for action, _, out in claim.previous),
            provider=provider,
            logger=action_logger.getChild(step.action),
            secrets=self.config.secrets,
        )
        return call_action(spec, params, ctx)

    def _fail(
        self,
        run: _Run,
        event: Event,
        rule: RuleConfig | None,
        step: StepConfig | None,
        error: str,
        permanent: bool,
        timing_out: bool = False,
    ) -> str:
        """Record a failed attempt: its own failure, or, `timing_out`, its
        timeout (from `time_out`, which holds the run's lock)."""
        claim = run.claim
        error = self.redactor.mask(" ".join(error.split()) or "failed")
        now = time.time()
        retry_at = None
        if step is not None and not permanent and claim.attempt < step.retry.attempts:
            retry_at = now + step.retry.delay(claim.attempt)

        def write() -> bool:
            return self.journal.fail(claim, self.owner, error, now, retry_at)

        recorded = write() if timing_out else self._record(run, write)
        if not recorded:
            self._log(claim, step, "lost", _why_lost(recorded))
            return "lost"
        if retry_at is not None:
            self._log(claim, step, "retry", f"{error} (again in {retry_at - now:.3g} s)")
            self.queue.put(claim.key, delay=retry_at - now)
            return "retry"
        self._log(claim, step, "failed", error)
        if rule is not None and step is not None:
            self._hook("step_failed", event=event, rule=rule, step=step, error=error)
        return "failed"

    def _log(self, claim: Claim, step: StepConfig | None, outcome: str, why: str | None) -> None:
        key = claim.key
        level = logging.INFO if outcome in ("done", "retry") else logging.WARNING
        logger.log(
            level,
            "step %s event=%s rule=%s step=%d action=%s attempt=%d%s",
            outcome,
            key.event_id,
            key.rule,
            key.step_index + 1,
            step.action if step else "?",
            claim.attempt,
            f": {why}" if why else "",
        )

    def _hook(self, name: str, **kwargs: Any) -> None:
        try:
            getattr(self.host.hook, name)(**kwargs)
        except Exception as exc:  # a plugin's observer must not fail the step
            logger.error("hook %s raised, ignored: %s", name, self.redactor.mask(str(exc)))


class WorkerPool:
    """Worker threads and the housekeeping thread of one process."""

    def __init__(
        self,
        runner: StepRunner,
        *,
        recovery_interval: float = 30.0,
        recovery_grace: float = 30.0,
        tick: float = 0.25,
    ) -> None:
        self.runner = runner
        self.queue = runner.queue
        self.journal = runner.journal
        self.recovery_interval = recovery_interval
        self.recovery_grace = recovery_grace
        self.tick = tick
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0

    def start(self, workers: int) -> None:
        """Start `workers` threads; recovery first enqueues what is owed."""
        self.recover(grace=0.0)
        for _ in range(workers):
            self._start_worker()
        keeper = threading.Thread(target=self._keep, name="recflow-housekeeper", daemon=True)
        keeper.start()
        self._threads.append(keeper)
        logger.info("%d workers started", workers)

    def _start_worker(self) -> None:
        self._started += 1
        thread = threading.Thread(
            target=self._work, name=f"recflow-worker-{self._started}", daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def alive(self) -> int:
        """This pool's worker threads alive now, stuck ones included."""
        return sum(
            thread.is_alive() and thread.name.startswith("recflow-worker-")
            for thread in self._threads
        )

    def stop(self, timeout: float = 30.0) -> bool:
        """Let running steps finish, at most `timeout` s; True if all did.

        Steps not yet taken stay queued for the next start or another
        process.
        """
        self._stop.set()
        self.queue.wakeup.set()
        deadline = time.monotonic() + timeout
        # A thread stuck in an attempt already failed by its timeout has
        # nothing left to record: not waited for.
        stuck = self.runner.stuck_threads()
        for thread in self._threads:
            if thread not in stuck:
                thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = self.runner.running()
        if unfinished:
            logger.warning(
                "%d steps still running at shutdown; they run again after their lease",
                len(unfinished),
            )
        return not unfinished

    def recover(self, grace: float | None = None) -> int:
        """Enqueue steps the journal owes that no task will bring; how many."""
        grace = self.recovery_grace if grace is None else grace
        try:
            keys = self.journal.overdue(time.time(), grace, self.runner.owner)
        except BackendError as exc:
            logger.warning("recovery pass failed, will try again: %s", exc)
            return 0
        if keys:
            logger.info("recovery: %d owed steps enqueued again", len(keys))
            self.queue.put_many(keys)
        return len(keys)

    def _work(self) -> None:
        idle = 0.01
        while not self._stop.is_set():
            # Cleared before looking, so an enqueue after the look still wakes us.
            self.queue.wakeup.clear()
            try:
                key = self.queue.take()
            except Exception as exc:
                logger.warning("cannot read the queue, will try again: %s", exc)
                key = None
            if key is None:
                self.queue.wakeup.wait(idle)
                idle = min(idle * 2, 0.5)
                continue
            idle = 0.01
            try:
                self.runner.run(key)
            except BackendError as exc:
                # The journal said nothing was claimed, or the outcome could not
                # be recorded: the lease runs out and recovery runs it again.
                logger.warning("step %s/%s/%d: %s", *key, exc)
            except KeyboardInterrupt:
                raise
            except BaseException:
                logger.exception("step %s/%s/%d: unexpected error in the worker", *key)
            if self.runner.replaced():
                return  # stuck past a timeout, another thread took this one's place

    def _keep(self) -> None:
        last_recovery = last_renewal = time.monotonic()
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            try:
                self.queue.move_due()
            except Exception as exc:
                logger.warning("cannot move delayed steps, will try again: %s", exc)
            for _ in range(self.runner.time_out()):
                if not self._stop.is_set():
                    self._start_worker()
            if now - last_renewal >= self.runner.lease / 3:
                last_renewal = now
                running = self.runner.running()
                if running:
                    try:
                        self.journal.renew(
                            running, self.runner.owner, time.time() + self.runner.lease
                        )
                    except BackendError as exc:
                        logger.warning("cannot renew leases, will try again: %s", exc)
            if now - last_recovery >= self.recovery_interval:
                last_recovery = now
                self.recover()
