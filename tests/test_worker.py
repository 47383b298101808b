"""Workers: steps run in order, retried with backoff, failed for good, run again."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time

import pytest
from pipeline_util import (
    TOKEN,
    lines,
    make_config,
    make_event,
    plugin_host,
    rule,
    settled,
    step,
    submit,
    wait_for,
)
from redis_util import backend_url, redis_server, redis_url  # noqa: F401  (fixtures)

from recflow import hookimpl
from recflow.journal import Owner
from recflow.pipeline import open_runtime
from recflow.plugins import ActionSpec
from recflow.queue import StepKey


class Outcomes:
    """A plugin that records the step hooks it sees; one of them raises."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    @hookimpl
    def step_started(self, rule, step, attempt):
        self.seen.append(("started", step.action, attempt))
        raise RuntimeError("an observer's bug must not fail the step")

    @hookimpl
    def step_succeeded(self, step, outputs):
        self.seen.append(("succeeded", step.action, 0))

    @hookimpl
    def step_failed(self, step, error):
        self.seen.append(("failed", step.action, 0))


@pytest.fixture
def run_rules(tmp_path, backend_url):  # noqa: F811
    """Submit one event for `rules` to a runtime with workers; wait until settled."""
    opened = []

    def run(rules, host=None, event=None):
        config = make_config(tmp_path, rules, backend=backend_url)
        runtime = open_runtime(config, host or plugin_host())
        opened.append(runtime)
        runtime.start(2)
        event = event or make_event()
        submit(runtime, event, rules)
        steps = wait_for(lambda: settled(runtime.journal, event.id), what="steps to settle")
        return runtime, event, steps

    yield run
    for runtime in opened:
        runtime.close(timeout=10)


class Hang:
    """A plugin whose action `t_hang` hangs on its first attempt until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    @hookimpl
    def register_actions(self, register):
        register(ActionSpec(name="t_hang", run=self.run, description="hangs once"))

    def run(self, params, ctx):
        if ctx.attempt == 1:
            self.release.wait(60)
        return {"attempt": ctx.attempt}


def test_a_step_past_its_timeout_is_failed_retried_and_its_thread_replaced(
    tmp_path, run_rules, caplog
):
    out = tmp_path / "out.txt"
    rules = (
        rule(
            "r",
            step("t_hang", timeout=0.5, attempts=3),
            step("t_append", {"file": str(out)}),
        ),
    )
    hang = Hang()

    caplog.set_level("WARNING", logger="recflow.worker")
    try:
        runtime, event, steps = run_rules(rules, plugin_host(hang))

        assert [(s["state"], s["attempts"]) for s in steps] == [("done", 2), ("done", 1)]
        runs = runtime.journal.get_event(event.id)["steps"][0]["runs"]
        assert [(r["outcome"], r["error"]) for r in runs] == [
            ("error", "timed out after 0.5 s"),
            ("done", None),
        ]
        assert any("step timed out" in m and "replaced" in m for m in caplog.messages)
        # The stuck thread still runs; a new one took its place.
        assert runtime.workers.alive() == 3
    finally:
        hang.release.set()

    # Once its action returns, the stuck attempt's outcome is refused and its thread ends.
    wait_for(lambda: runtime.workers.alive() == 2, what="the stuck thread to end")
    assert any("it had timed out; its outcome is not recorded" in m for m in caplog.messages)
    steps = runtime.journal.get_event(event.id)["steps"]
    assert [(s["state"], s["attempts"], s["outputs"]) for s in steps[:1]] == [
        ("done", 2, {"attempt": 2})
    ]
    assert len(lines(out)) == 1


class HoldEach:
    """A plugin whose action `t_hold` holds each call until the test releases it."""

    def __init__(self) -> None:
        self.started = [threading.Event() for _ in range(3)]
        self.release = [threading.Event() for _ in range(3)]
        self._calls = 0
        self._lock = threading.Lock()

    @hookimpl
    def register_actions(self, register):
        register(ActionSpec(name="t_hold", run=self.run, description="holds each call"))

    def run(self, params, ctx):
        with self._lock:
            call = self._calls
            self._calls += 1
        self.started[call].set()
        self.release[call].wait(60)
        return {"call": call}


def test_a_timed_out_attempt_returning_during_a_retry_of_the_same_number_is_not_recorded(
    tmp_path, run_rules, caplog
):
    # `recflow retry` numbers attempts from 1 again: the late outcome of the
    # first attempt 1 must not be taken for the retried attempt 1's.
    rules = (rule("r", step("t_hold", timeout=2, attempts=1)),)
    hold = HoldEach()
    caplog.set_level("WARNING", logger="recflow.worker")
    try:
        runtime, event, steps = run_rules(rules, plugin_host(hold))
        assert [(s["state"], s["error"]) for s in steps] == [("failed", "timed out after 2 s")]

        runtime.queue.put_many(runtime.journal.retry(event.id, time.time()))
        assert hold.started[1].wait(10), "the retried attempt did not start"
        hold.release[0].set()
        wait_for(
            lambda: any("its outcome is not recorded" in m for m in caplog.messages),
            what="the late outcome to be refused",
        )
        hold.release[1].set()
        steps = wait_for(lambda: settled(runtime.journal, event.id), what="the retry")
    finally:
        for release in hold.release:
            release.set()

    assert [(s["state"], s["attempts"], s["outputs"]) for s in steps] == [("done", 1, {"call": 1})]


class RaiseOnce:
    """A plugin whose action `t_raise_once` raises `error` on its first call."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls = 0

    @hookimpl
    def register_actions(self, register):
        register(ActionSpec(name="t_raise_once", run=self.run, description="raises once"))

    def run(self, params, ctx):
        self.calls += 1
        if self.calls == 1:
            raise self.error
        return {"call": self.calls}


@pytest.mark.parametrize(
    ("error", "recorded"),
    [
        pytest.param(asyncio.CancelledError(), "CancelledError", id="cancelled"),
        pytest.param(SystemExit(3), "SystemExit: 3", id="system-exit"),
    ],
)
def test_an_action_raising_a_base_exception_fails_its_attempt_not_its_thread(
    tmp_path, run_rules, error, recorded
):

    runtime, event, steps = run_rules(
        (rule("r", step("t_raise_once", attempts=3)),), plugin_host(RaiseOnce(error))
    )

    assert [(s["state"], s["attempts"], s["outputs"]) for s in steps] == [("done", 2, {"call": 2})]
    runs = runtime.journal.get_event(event.id)["steps"][0]["runs"]
    assert [(r["outcome"], r["error"]) for r in runs] == [("error", recorded), ("done", None)]
    assert runtime.workers.alive() == 2, "a worker thread ended"


def test_steps_run_in_order_and_later_steps_read_earlier_outputs(tmp_path, run_rules):
    out = tmp_path / "out.txt"
    rules = (
        rule(
            "archive",
            step("t_append", {"file": str(out), "text": "first"}, id="first"),
            step("t_echo", {"said": "{{ steps.first.line }}", "rule": "{{ rule.name }}"}),
        ),
    )

    _, event, steps = run_rules(rules)

    assert [s["state"] for s in steps] == ["done", "done"]
    assert steps[1]["outputs"] == {
        "said": f"{event.id} archive 0 first",
        "rule": "archive",
    }
    assert lines(out) == [f"{event.id} archive 0 first"]


def test_step_failing_twice_then_succeeding_is_done_after_three_attempts(tmp_path, run_rules):
    counter = tmp_path / "flaky.txt"
    rules = (rule("r", step("t_flaky", {"file": str(counter), "failures": 2}, attempts=5)),)

    runtime, event, steps = run_rules(rules)

    assert steps[0]["state"] == "done"
    assert steps[0]["attempts"] == 3
    assert steps[0]["outputs"] == {"runs": 3}
    runs = runtime.journal.get_event(event.id)["steps"][0]["runs"]
    assert [r["outcome"] for r in runs] == ["error", "error", "done"]
    assert runs[0]["error"] == "flaky failure number 1"


def test_step_always_failing_fails_after_its_attempts_and_retry_runs_it(tmp_path, run_rules):
    runs_file = tmp_path / "runs.txt"
    fixed = tmp_path / "fixed"
    later = tmp_path / "later.txt"
    rules = (
        rule(
            "r",
            step("t_fail", {"file": str(runs_file), "unless_exists": str(fixed)}, attempts=3),
            step("t_append", {"file": str(later)}),
        ),
    )
    outcomes = Outcomes()

    runtime, event, steps = run_rules(rules, plugin_host(outcomes))

    assert [(s["state"], s["attempts"]) for s in steps] == [("failed", 3)]
    assert steps[0]["error"] == "always fails"
    assert lines(runs_file) == ["1", "2", "3"]
    assert not later.exists()
    assert ("failed", "t_fail", 0) in outcomes.seen
    assert runtime.journal.list_events(failed_only=True)[0]["id"] == event.id

    fixed.touch()
    keys = runtime.journal.retry(event.id, time.time())
    runtime.queue.put_many(keys)

    assert keys == [StepKey(event.id, "r", 0)]
    steps = wait_for(
        lambda: (s := settled(runtime.journal, event.id)) and len(s) == 2 and s,
        what="the retried rule to finish",
    )
    assert [(s["state"], s["attempts"]) for s in steps] == [("done", 1), ("done", 1)]
    assert len(lines(later)) == 1
    assert runtime.journal.list_events(failed_only=True) == []


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        pytest.param(
            step("t_fail", {"message": "bad credentials", "permanent": True}),
            "bad credentials",
            id="permanent-action-error",
        ),
        pytest.param(
            step("t_echo", {"x": "{{ event.no_such_field }}"}),
            "cannot render parameters",
            id="template-error",
        ),
        pytest.param(step("no_such_action"), "action 'no_such_action' is not installed", id="gone"),
    ],
)
def test_permanent_failures_skip_the_attempts_left(run_rules, failing, error):
    _, _, steps = run_rules((rule("r", failing),))

    assert steps[0]["state"] == "failed"
    assert steps[0]["attempts"] == 1
    assert error in steps[0]["error"]


def test_unexpected_exception_is_retried_and_recorded_in_one_line(run_rules):
    _, _, steps = run_rules(
        (rule("r", step("t_crash", {"message": "bug\non two lines"}, attempts=2)),)
    )

    assert (steps[0]["state"], steps[0]["attempts"]) == ("failed", 2)
    assert steps[0]["error"] == "RuntimeError: bug on two lines"


def test_secrets_are_masked_in_errors_and_outputs(run_rules):
    rules = (
        rule(
            "r",
            step("t_echo", {"url": f"https://user:{TOKEN}@example.com/x"}),
            step("t_fail", {"message": f"refused token {TOKEN}"}, attempts=1),
        ),
    )

    runtime, event, steps = run_rules(rules)

    assert steps[0]["outputs"] == {"url": "https://user:***@example.com/x"}
    assert steps[1]["error"] == "refused token ***"
    assert TOKEN not in str(runtime.journal.get_event(event.id))


def test_hooks_see_each_attempt_and_their_errors_are_ignored(tmp_path, run_rules):
    outcomes = Outcomes()
    rules = (rule("r", step("t_flaky", {"file": str(tmp_path / "c"), "failures": 1})),)

    _, _, steps = run_rules(rules, plugin_host(outcomes))

    assert steps[0]["state"] == "done"
    assert outcomes.seen == [
        ("started", "t_flaky", 1),
        ("started", "t_flaky", 2),
        ("succeeded", "t_flaky", 0),
    ]


def test_step_held_by_a_dead_worker_runs_again_at_start(tmp_path):
    out = tmp_path / "out.txt"
    rules = (rule("r", step("t_append", {"file": str(out)})),)
    config = make_config(tmp_path, rules)
    runtime = open_runtime(config, plugin_host())
    event = make_event()
    submit(runtime, event, rules)
    gone = Owner(Owner.current().host, _exited_pid(), "old")
    claim = runtime.journal.claim(StepKey(event.id, "r", 0), gone, 3600, time.time())
    assert claim is not None
    runtime.queue.flush()

    runtime.start(1)
    try:
        steps = wait_for(lambda: settled(runtime.journal, event.id), what="the step to run")
    finally:
        runtime.close()

    assert (steps[0]["state"], steps[0]["attempts"]) == ("done", 2)
    runs = runtime.journal.get_event(event.id)["steps"][0]["runs"]
    assert [r["outcome"] for r in runs] == ["lost", "done"]
    assert len(lines(out)) == 1


def test_step_held_by_a_live_worker_is_left_alone(tmp_path):
    rules = (rule("r", step("t_echo")),)
    runtime = open_runtime(make_config(tmp_path, rules), plugin_host())
    event = make_event()
    submit(runtime, event, rules)
    alive = Owner(Owner.current().host, os.getppid(), "other")
    runtime.journal.claim(StepKey(event.id, "r", 0), alive, 3600, time.time())

    try:
        assert runtime.workers.recover(grace=0) == 0
        assert runtime.runner.run(StepKey(event.id, "r", 0)) is None
    finally:
        runtime.close()


def test_close_lets_a_running_step_finish(tmp_path):
    out = tmp_path / "out.txt"
    started = tmp_path / "started.txt"
    rules = (
        rule("r", step("t_append", {"file": str(out), "started": str(started), "sleep": 0.5})),
    )
    runtime = open_runtime(make_config(tmp_path, rules), plugin_host())
    runtime.start(1)
    event = make_event()
    submit(runtime, event, rules)
    wait_for(lambda: lines(started), what="the step to start")

    runtime.close(timeout=10)

    assert len(lines(out)) == 1
    assert runtime.journal.get_event(event.id)["steps"][0]["state"] == "done"


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_step_longer_than_its_lease_keeps_it_by_renewing(tmp_path):
    out = tmp_path / "out.txt"
    rules = (rule("r", step("t_append", {"file": str(out), "sleep": 1.5})),)
    runtime = open_runtime(
        make_config(tmp_path, rules),
        plugin_host(),
        lease=0.6,
        recovery_interval=0.1,
        recovery_grace=0.1,
    )
    runtime.start(2)
    event = make_event()
    try:
        submit(runtime, event, rules)
        steps = wait_for(lambda: settled(runtime.journal, event.id), what="the long step")
    finally:
        runtime.close()

    assert (steps[0]["state"], steps[0]["attempts"]) == ("done", 1)
    assert len(lines(out)) == 1
