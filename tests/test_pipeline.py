"""The pipeline: durable, deduplicated, grouped commits of accepted callbacks."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from pipeline_util import (
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
from recflow.errors import BackendError
from recflow.journal_sqlite import SqliteJournal
from recflow.pipeline import Pipeline, open_runtime
from recflow.queue import Backend, StepQueue, parse_backend


@pytest.fixture
def runtimes():
    opened = []

    def open_(config, host=None, workers=0, **options):
        runtime = open_runtime(config, host or plugin_host(), **options)
        opened.append(runtime)
        runtime.start(workers)
        return runtime

    yield open_
    for runtime in opened:
        runtime.close(timeout=10)


class Seen:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str]]] = []

    @hookimpl
    def event_received(self, event, rules):
        self.received.append((event.id, rules))


def test_new_event_is_recorded_with_first_steps_queued(
    tmp_path,
    runtimes,
    backend_url,  # noqa: F811
):
    rules = (
        rule("archive", step("t_append", {"file": "a"}), step("t_append", {"file": "b"})),
        rule("mail", step("t_echo", {}, id="echo")),
    )
    runtime = runtimes(make_config(tmp_path, rules, backend_url))
    event = make_event()

    assert submit(runtime, event, rules) is True

    shown = runtime.journal.get_event(event.id)
    assert shown["rules"] == ["archive", "mail"]
    assert [(s["rule"], s["index"], s["action"], s["state"]) for s in shown["steps"]] == [
        ("archive", 0, "t_append", "queued"),
        ("mail", 0, "t_echo", "queued"),
    ]
    assert shown["recording_sid"] == "RE1"
    assert runtime.queue.pending() == 2


def test_duplicate_is_acknowledged_and_runs_nothing(tmp_path, runtimes, backend_url):  # noqa: F811
    rules = (rule("r", step("t_echo")),)
    runtime = runtimes(make_config(tmp_path, rules, backend_url))
    event = make_event()

    assert submit(runtime, event, rules) is True
    assert submit(runtime, event, rules) is False
    assert submit(runtime, make_event(status="absent"), rules) is True
    assert runtime.queue.pending() == 2


def test_ten_identical_callbacks_at_once_run_once(tmp_path, runtimes, backend_url):  # noqa: F811
    out = tmp_path / "runs.txt"
    rules = (rule("r", step("t_append", {"file": str(out)})),)
    seen = Seen()
    runtime = runtimes(make_config(tmp_path, rules, backend_url), plugin_host(seen), workers=4)
    event = make_event()

    async def burst():
        return await asyncio.gather(*[runtime.pipeline.submit(event, rules) for _ in range(10)])

    answers = asyncio.run(burst())

    assert sorted(answers) == [False] * 9 + [True]
    wait_for(lambda: settled(runtime.journal, event.id), what="the step to finish")
    assert len(lines(out)) == 1
    assert seen.received == [(event.id, ["r"])]


def test_a_burst_of_distinct_callbacks_all_commit(tmp_path, runtimes, backend_url):  # noqa: F811
    rules = (rule("r", step("t_echo")),)
    runtime = runtimes(make_config(tmp_path, rules, backend_url))
    events = [make_event(f"RE{i}") for i in range(200)]

    async def burst():
        return await asyncio.gather(*[runtime.pipeline.submit(e, rules) for e in events])

    assert asyncio.run(burst()) == [True] * 200
    assert len(runtime.journal.list_events(limit=1000)) == 200


def test_event_matching_no_rule_is_recorded_without_steps(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, ()))
    event = make_event()

    assert submit(runtime, event, ()) is True
    assert runtime.journal.get_event(event.id)["steps"] == []


def test_backend_that_cannot_commit_raises_backend_error(tmp_path):
    path = str(tmp_path / "locked.db")
    journal = SqliteJournal(path, busy_timeout=0.05)
    pipeline = Pipeline(journal, StepQueue(Backend("sqlite", path)), plugin_host())
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("begin exclusive")
    try:
        with pytest.raises(BackendError, match="locked"):
            asyncio.run(pipeline.submit(make_event(), ()))
    finally:
        holder.execute("rollback")
        holder.close()
        pipeline.close()
    assert asyncio.run(pipeline.healthy()) is False


def test_healthy_while_open_and_refuses_after_close(tmp_path):
    runtime = open_runtime(make_config(tmp_path, ()), plugin_host())
    assert asyncio.run(runtime.pipeline.healthy()) is True
    runtime.close()
    assert asyncio.run(runtime.pipeline.healthy()) is False
    with pytest.raises(BackendError):
        asyncio.run(runtime.pipeline.submit(make_event(), ()))


def test_steps_queued_before_a_restart_run_after_it(tmp_path, runtimes, backend_url):  # noqa: F811
    out = tmp_path / "runs.txt"
    rules = (rule("r", step("t_append", {"file": str(out)}), step("t_append", {"file": str(out)})),)
    config = make_config(tmp_path, rules, backend_url)
    first = runtimes(config)
    event = make_event()
    submit(first, event, rules)
    first.queue.flush()  # the task is lost; only the journal knows the step is owed
    first.close()

    second = runtimes(config, workers=2)

    steps = wait_for(lambda: settled(second.journal, event.id), what="recovery")
    assert [s["state"] for s in steps] == ["done", "done"]
    assert len(lines(out)) == 2


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("sqlite:///var/r.db", Backend("sqlite", "/etc/recflow/var/r.db"), id="rel"),
        pytest.param("sqlite:///./r.db", Backend("sqlite", "/etc/recflow/r.db"), id="dot"),
        pytest.param("sqlite:////srv/r.db", Backend("sqlite", "/srv/r.db"), id="absolute"),
        pytest.param(
            "redis://127.0.0.1:6379/0", Backend("redis", "redis://127.0.0.1:6379/0"), id="redis"
        ),
    ],
)
def test_parse_backend(url, expected):
    assert parse_backend(url, "/etc/recflow") == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("postgres://db/recflow", "'postgres' is not supported", id="scheme"),
        pytest.param("sqlite:///", "no file path", id="no-path"),
        pytest.param("recflow.db", "is not supported", id="bare-path"),
    ],
)
def test_parse_backend_refuses(url, message):
    with pytest.raises(BackendError, match=message):
        parse_backend(url)


def test_backend_path_is_relative_to_the_config_file(tmp_path, runtimes):
    config = make_config(tmp_path, (), backend="sqlite:///./var/recflow.db")
    runtime = runtimes(config)
    submit(runtime, make_event(), ())
    assert Path(tmp_path / "var" / "recflow.db").exists()
