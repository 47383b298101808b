"""commit_process: the receiver's commits, made by a child process.

`Pipeline.submit` is driven in an asyncio loop, as the receiver drives it,
on a real SQLite file and on a real redis-server; the last test kills the
commit process of a real `recflow serve` and checks what the provider sees.
The child is found through `pipeline._process._child`, the one private
name these tests use, because an operator would find it with `ps`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pipeline_util import (
    TOKEN,
    callback_pairs,
    ensure_test_plugin,
    make_config,
    make_event,
    plugin_host,
    rule,
    step,
    submit,
    wait_for,
    write_config,
)
from proc_util import alive, children
from redis_util import backend_url, redis_server, redis_url  # noqa: F401  (fixtures)
from serve_util import running_server, signed_form

from recflow import commit_process
from recflow import pipeline as pipeline_module
from recflow.config import Config
from recflow.errors import BackendError
from recflow.event import Event
from recflow.journal_sqlite import SqliteJournal
from recflow.pipeline import Pipeline, Runtime, open_runtime

RULES = (rule("archive", step("t_echo")),)
# Far longer than any commit here takes: only a submission left unanswered waits this long.
HANG = 60.0


@pytest.fixture
def runtimes() -> Iterator[Callable[[Config], Runtime]]:
    """Open runtimes that commit from a child process, as `recflow serve` does."""
    opened: list[Runtime] = []

    def open_(config: Config) -> Runtime:
        runtime = open_runtime(config, plugin_host(), commit_process=True)
        opened.append(runtime)
        return runtime

    yield open_
    for runtime in opened:
        runtime.close(timeout=10)


def _child(pipeline: Pipeline) -> subprocess.Popen[bytes]:
    process = pipeline._process  # noqa: SLF001 - the test finds the child, as `ps` would
    assert process is not None and process._child is not None  # noqa: SLF001
    return process._child  # noqa: SLF001


def _lock(db: Path) -> sqlite3.Connection:
    """Hold SQLite's write lock on `db`: a commit waits until `_unlock`."""
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("begin exclusive")
    return holder


def _unlock(holder: sqlite3.Connection) -> None:
    holder.execute("rollback")
    holder.close()


def test_new_then_duplicate(tmp_path, runtimes, backend_url):  # noqa: F811
    runtime = runtimes(make_config(tmp_path, RULES, backend_url))
    event = make_event()

    assert submit(runtime, event, RULES) is True
    assert submit(runtime, event, RULES) is False

    shown = runtime.journal.get_event(event.id)
    assert [(s["rule"], s["state"]) for s in shown["steps"]] == [("archive", "queued")]
    assert runtime.queue.pending() == 1


def test_the_same_event_twice_in_one_loop_turn_is_new_once(
    tmp_path,
    runtimes,
    backend_url,  # noqa: F811
):
    runtime = runtimes(make_config(tmp_path, RULES, backend_url))
    twice, other = make_event("RE1"), make_event("RE2")

    async def one_turn():
        # Submitted together, before any awaits: they share one frame.
        return await asyncio.gather(
            runtime.pipeline.submit(twice, RULES),
            runtime.pipeline.submit(other, RULES),
            runtime.pipeline.submit(twice, RULES),
        )

    first, second, again = asyncio.run(one_turn())

    assert (first, second, again) in [(True, True, False), (False, True, True)]
    assert len(runtime.journal.list_events(limit=10)) == 2
    assert runtime.queue.pending() == 2


@pytest.mark.parametrize(
    "turns",
    [
        pytest.param(1, id="not-sent-yet"),
        pytest.param(3, id="sent-not-answered"),
    ],
)
def test_close_commits_everything_submitted_before_it(
    tmp_path,
    runtimes,
    backend_url,  # noqa: F811
    turns,
):
    runtime = runtimes(make_config(tmp_path, RULES, backend_url))
    events = [make_event(f"RE{i}") for i in range(20)]

    async def submit_then_close():
        tasks = [asyncio.ensure_future(runtime.pipeline.submit(e, RULES)) for e in events]
        for _ in range(turns):
            await asyncio.sleep(0)
        # As `recflow serve`'s lifespan does: close from the event loop itself.
        runtime.pipeline.close()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG)

    outcomes = asyncio.run(submit_then_close())

    assert outcomes == [True] * len(events)
    recorded = {e["id"] for e in runtime.journal.list_events(limit=100)}
    assert recorded == {e.id for e in events}
    with pytest.raises(BackendError, match="closed"):
        submit(runtime, make_event("RE-late"), RULES)


def test_a_killed_child_fails_what_it_had_not_answered_and_is_replaced(tmp_path, runtimes, caplog):
    runtime = runtimes(make_config(tmp_path, RULES))
    pipeline = runtime.pipeline
    assert submit(runtime, make_event("RE-before"), RULES) is True
    killed = _child(pipeline)
    in_flight = [make_event(f"RE{i}") for i in range(3)]

    async def kill_while_committing():
        tasks = [asyncio.ensure_future(pipeline.submit(e, RULES)) for e in in_flight]
        await asyncio.sleep(0)  # the submissions are posted
        await asyncio.sleep(0)  # and sent, in one frame the child cannot commit yet
        os.kill(killed.pid, signal.SIGKILL)
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG)

    holder = _lock(tmp_path / "recflow.db")
    try:
        outcomes = asyncio.run(kill_while_committing())
    finally:
        _unlock(holder)

    assert [type(o) for o in outcomes] == [BackendError] * 3
    assert all("commit process" in str(o) for o in outcomes)
    assert killed.returncode == -signal.SIGKILL
    assert "exit status -9" in caplog.text
    # The next submission starts a new child; the provider's retries are new.
    assert submit(runtime, make_event("RE-after"), RULES) is True
    assert _child(pipeline).pid != killed.pid
    assert [submit(runtime, e, RULES) for e in in_flight] == [True] * 3
    assert submit(runtime, make_event("RE-before"), RULES) is False


def test_a_child_killed_while_idle_is_replaced_by_the_next_submission(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, RULES))
    pipeline = runtime.pipeline
    killed = _child(pipeline)

    async def serve_kill_serve():
        # One event loop throughout, as in `recflow serve`: it watches the child.
        before = await pipeline.submit(make_event("RE1"), RULES)
        os.kill(killed.pid, signal.SIGKILL)
        await asyncio.to_thread(killed.wait)
        await asyncio.sleep(0.05)  # a turn of the loop: it reads the end of the socket
        return before, await pipeline.submit(make_event("RE2"), RULES)

    assert asyncio.run(serve_kill_serve()) == (True, True)
    assert _child(pipeline).pid != killed.pid


def test_a_child_that_died_between_two_loops_is_replaced_at_once(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, RULES))
    killed = _child(runtime.pipeline)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()

    assert submit(runtime, make_event(), RULES) is True


def test_a_backend_the_child_cannot_open_fails_at_construction(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, ()))
    (tmp_path / "a-file").write_text("not a directory\n")
    unusable = f"sqlite:///{tmp_path / 'a-file' / 'recflow.db'}"

    with pytest.raises(BackendError) as raised:
        Pipeline(
            runtime.journal,
            runtime.queue,
            plugin_host(),
            commit_process=(unusable, str(tmp_path)),
        )

    message = str(raised.value)
    assert "the commit process did not start" in message
    assert "cannot open the journal" in message
    assert str(tmp_path / "a-file" / "recflow.db") in message


@pytest.fixture
def broken_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, Callable[[], None], str]]:
    """A backend URL, how to break its commits mid-run, and what the log then names."""
    if request.param == "sqlite":
        db = tmp_path / "recflow.db"

        def drop() -> None:
            with sqlite3.connect(db, isolation_level=None) as conn:
                conn.execute("drop table journal_events")

        yield f"sqlite:///{db}", drop, "no such table: journal_events"
        return
    import redis

    url = str(request.getfixturevalue("redis_url"))
    client = redis.Redis.from_url(url)

    def refuse_writes() -> None:
        # Redis refuses every write while it lacks a replica it was told to need.
        client.config_set("min-replicas-to-write", 1)

    try:
        yield url, refuse_writes, "NOREPLICAS"
    finally:
        client.config_set("min-replicas-to-write", 0)
        client.close()


@pytest.mark.parametrize(
    "broken_backend",
    [
        pytest.param("sqlite", id="sqlite-table-dropped"),
        pytest.param("redis", id="redis-refuses-writes", marks=pytest.mark.redis),
    ],
    indirect=True,
)
def test_commit_errors_fail_each_submission_and_log_the_cause(
    tmp_path, runtimes, broken_backend, caplog
):
    url, break_it, cause = broken_backend
    runtime = runtimes(make_config(tmp_path, RULES, url))
    assert submit(runtime, make_event("RE-before"), RULES) is True
    break_it()

    async def three():
        events = [make_event(f"RE{i}") for i in range(3)]
        return await asyncio.gather(
            *[runtime.pipeline.submit(e, RULES) for e in events], return_exceptions=True
        )

    outcomes = asyncio.run(three())

    assert [type(o) for o in outcomes] == [BackendError] * 3
    assert all(cause in str(o) for o in outcomes)
    logged = [r.getMessage() for r in caplog.records if r.name == "recflow.pipeline"]
    counts = [re.match(r"cannot commit (\d+) callbacks: .*" + cause, m) for m in logged]
    assert sum(int(m.group(1)) for m in counts if m) == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_the_child_ignores_ctrl_c_and_sigterm_and_stops_when_the_receiver_closes(
    tmp_path, runtimes, signum
):
    runtime = runtimes(make_config(tmp_path, RULES))
    child = _child(runtime.pipeline)

    os.kill(child.pid, signum)

    # A child the signal had killed could not answer this.
    assert submit(runtime, make_event(), RULES) is True
    assert child.poll() is None
    assert _child(runtime.pipeline).pid == child.pid
    runtime.pipeline.close()
    assert child.returncode == 0


# -- through the real `recflow serve` ------------------------------------------------

ENV = {"TEST_TOKEN": TOKEN}


def _post(url: str, recording: str) -> int:
    body, headers = signed_form(url, callback_pairs(recording), TOKEN, "X-Twilio-Signature")
    return httpx.post(url, content=body, headers=headers, timeout=60, trust_env=False).status_code


def _send(url: str, recording: str) -> http.client.HTTPConnection:
    """Send a signed callback and return at once: read the answer from the connection."""
    parts = urlsplit(url)
    body, headers = signed_form(url, callback_pairs(recording), TOKEN, "X-Twilio-Signature")
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    connection.request("POST", parts.path, body, headers)
    return connection


def _status(connection: http.client.HTTPConnection) -> int:
    try:
        return connection.getresponse().status
    finally:
        connection.close()


def _commit_children(pid: int) -> list[int]:
    """The live commit processes whose parent is `pid`, as `ps --ppid` lists them."""
    return children(pid, b"recflow.commit_process")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the child")
def test_serve_survives_kill_9_of_its_commit_process(tmp_path):
    ensure_test_plugin()
    config = write_config(tmp_path, "      - action: t_echo\n")
    db = tmp_path / "var" / "recflow.db"
    in_flight = [f"RE{i:032x}" for i in range(4)]
    later = [f"RE{i:032x}" for i in range(100, 110)]

    with running_server(config, env=ENV, args=["--no-worker"]) as server:
        url = server.callback_url
        assert _post(url, "RE" + "b" * 32) == 204
        [killed] = _commit_children(server.process.pid)
        # Held, the lock keeps the child from committing what it is sent.
        holder = _lock(db)
        try:
            sent = [_send(url, r) for r in in_flight]
            # Answered once the server has read the callbacks sent before.
            assert httpx.get(server + "/healthz", timeout=30).status_code == 200
            os.kill(killed, signal.SIGKILL)
            answers = [_status(connection) for connection in sent]
        finally:
            _unlock(holder)
        statuses = [_post(url, r) for r in later]
        children = _commit_children(server.process.pid)
    log = server.log()  # whole once the server has stopped

    assert answers == [503] * len(in_flight)
    assert set(statuses) <= {204, 503}
    assert statuses[-5:] == [204] * 5
    assert len(children) == 1 and children != [killed]
    [replacement] = children
    assert "exit status -9" in log
    assert log.count("-> 503: backend cannot commit") == statuses.count(503) + len(in_flight)
    journal = SqliteJournal(str(db))
    acknowledged = [r for r, s in zip(later, statuses, strict=True) if s == 204]
    missing = [r for r in acknowledged if journal.get_event(make_event(r).id) is None]
    assert missing == []
    # Stopping the server stopped its commit process too: no orphan is left.
    wait_for(lambda: not alive(replacement), what="the commit process to stop")


def _big_event(number: int) -> Event:
    """An event of about 20 KB: a few hundred of them fill the socket's buffers."""
    event = make_event(f"RE{number:032x}")
    return dataclasses.replace(event, params={**event.params, "Pad": "x" * 20_000})


def test_a_stalled_child_is_back_pressure_not_a_death(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, RULES))
    child = _child(runtime.pipeline)
    events = [_big_event(number) for number in range(1000)]  # ~20 MB, over the buffers

    async def stalled_then_resumed():
        os.kill(child.pid, signal.SIGSTOP)
        try:
            waiting = [asyncio.ensure_future(runtime.pipeline.submit(e, RULES)) for e in events]
            await asyncio.sleep(1.0)  # sends that the socket could not take now wait
            healthy_while_stalled = await runtime.pipeline.healthy()
        finally:
            os.kill(child.pid, signal.SIGCONT)
        return healthy_while_stalled, await asyncio.gather(*waiting)

    healthy_while_stalled, answers = asyncio.run(stalled_then_resumed())

    assert answers == [True] * len(events)
    assert _child(runtime.pipeline) is child and child.poll() is None, "the child was replaced"
    assert healthy_while_stalled is True, "one second of stall is within the commit timeout"
    assert len(runtime.journal.list_events(limit=2000)) == len(events)


def test_callbacks_get_503_when_the_child_stalls_past_the_commit_timeout(
    tmp_path, runtimes, monkeypatch, caplog
):
    monkeypatch.setattr(pipeline_module, "COMMIT_TIMEOUT", 1.0)
    monkeypatch.setattr(pipeline_module, "SWEEP_EVERY", 0.2)
    runtime = runtimes(make_config(tmp_path, RULES))
    child = _child(runtime.pipeline)
    stalled, later = make_event("RE1"), make_event("RE2")

    async def stalled_child():
        os.kill(child.pid, signal.SIGSTOP)
        try:
            outcome = await asyncio.gather(
                runtime.pipeline.submit(stalled, RULES), return_exceptions=True
            )
            healthy = await runtime.pipeline.healthy()
        finally:
            os.kill(child.pid, signal.SIGCONT)
        return outcome[0], healthy

    outcome, healthy = asyncio.run(stalled_child())

    assert isinstance(outcome, BackendError) and "not committed within 1 s" in str(outcome)
    assert healthy is False, "a failed commit makes the health check fail for a while"
    assert "1 callback not committed within 1 s, answered 503" in caplog.text
    # The child was only slow: it committed the event after all (the
    # provider's retry is then a known duplicate), and takes the next one.
    assert submit(runtime, later, RULES) is True
    assert submit(runtime, stalled, RULES) is False


def test_the_backend_url_is_not_on_the_child_command_line(tmp_path, runtimes):
    runtime = runtimes(make_config(tmp_path, RULES))
    child = _child(runtime.pipeline)

    command_line = Path(f"/proc/{child.pid}/cmdline").read_bytes()

    assert b"sqlite" not in command_line and str(tmp_path).encode() not in command_line


def test_the_child_keeps_the_write_ahead_log_bounded(tmp_path, runtimes):
    # With only the receiver writing (`serve --no-worker`, workers elsewhere
    # idle), the child's own commits are what checkpoint the log.
    runtime = runtimes(make_config(tmp_path, RULES))
    db = Path(runtime.journal.path)
    events = [_big_event(number) for number in range(2500)]  # ~50 MB of event data

    async def submit_all():
        for start in range(0, len(events), 100):
            batch = events[start : start + 100]
            await asyncio.gather(*(runtime.pipeline.submit(e, RULES) for e in batch))

    asyncio.run(submit_all())

    wal = db.with_name(db.name + "-wal")
    limit = commit_process.CHECKPOINT_PAGES * 4096
    assert wal.stat().st_size < 1.5 * limit
    assert db.stat().st_size > 40_000_000  # the events were copied into the database
    assert len(runtime.journal.list_events(limit=3000)) == 2500
