"""The journal: atomic claims and leases, the query API, `recflow events` and `retry`."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from pipeline_util import (
    TOKEN,
    ensure_test_plugin,
    make_event,
    write_config,
)
from redis_util import backend_url, redis_server, redis_url  # noqa: F401  (fixtures)

from recflow.cli import cli
from recflow.errors import BackendError
from recflow.journal import Journal, NewEvent, Owner, open_journal
from recflow.journal_sqlite import SqliteJournal
from recflow.queue import StepKey, parse_backend

NOW = 1_800_000_000.0
ME = Owner("here", 1, "me")
OTHER = Owner("elsewhere", 2, "them")


@pytest.fixture
def journal(backend_url):  # noqa: F811
    opened = open_journal(parse_backend(backend_url))
    yield opened
    opened.close()


def _record(journal: Journal, recording: str = "RE1", rules=("r",), at: float = NOW - 60) -> str:
    event = make_event(recording)
    journal.record(
        [
            NewEvent(
                id=event.id,
                data=event.to_dict(),
                received_at=at,
                rules=tuple(rules),
                first_steps=tuple((r, "t_echo", None) for r in rules),
            )
        ],
        at,
    )
    return event.id


def test_record_claims_each_event_id_once(journal):
    event = make_event()
    new = NewEvent(event.id, event.to_dict(), NOW, ("r",), (("r", "t_echo", None),))

    assert journal.record([new, new], NOW) == [True, False]
    assert journal.record([new], NOW) == [False]
    assert len(journal.get_event(event.id)["steps"]) == 1


# (state changes before the claim) -> whether the claim at NOW succeeds
@pytest.mark.parametrize(
    ("prepare", "claimed"),
    [
        pytest.param([], True, id="queued-and-due"),
        pytest.param([("fail", 1, NOW + 60)], False, id="queued-for-later"),
        pytest.param([("claim", OTHER, 60)], False, id="running-with-a-lease"),
        pytest.param([("claim", OTHER, -1)], True, id="running-past-its-lease"),
        pytest.param([("claim", ME, 60), ("succeed",)], False, id="done"),
        pytest.param([("claim", ME, 60), ("fail", 1, None)], False, id="failed"),
    ],
)
def test_claim_only_takes_a_step_that_is_due(journal, prepare, claimed):
    key = StepKey(_record(journal), "r", 0)
    claim = None
    for op, *args in prepare:
        if op == "claim":
            claim = journal.claim(key, args[0], args[1], NOW - 10)
        elif op == "succeed":
            assert journal.succeed(claim, ME, {}, NOW - 5, None)
        elif op == "fail":
            claim = claim or journal.claim(key, ME, 60, NOW - 10)
            assert journal.fail(claim, ME, "no", NOW - 5, args[1])

    got = journal.claim(key, ME, 60, NOW)

    assert (got is not None) is claimed


def test_claim_hands_over_earlier_outputs_and_the_event(journal):
    key = StepKey(_record(journal), "r", 0)
    first = journal.claim(key, ME, 60, NOW)
    assert journal.succeed(first, ME, {"url": "file:///x"}, NOW, ("t_echo", "second"))

    second = journal.claim(StepKey(key.event_id, "r", 1), ME, 60, NOW)

    assert second.attempt == 1
    assert second.previous == (("t_echo", None, {"url": "file:///x"}),)
    assert second.event["recording_sid"] == "RE1"


def test_a_lost_lease_cannot_record_an_outcome(journal):
    key = StepKey(_record(journal), "r", 0)
    mine = journal.claim(key, ME, 1, NOW)
    theirs = journal.claim(key, OTHER, 60, NOW + 2)

    assert journal.succeed(mine, ME, {}, NOW + 3, None) is False
    assert journal.succeed(theirs, OTHER, {}, NOW + 3, None) is True
    runs = journal.get_event(key.event_id)["steps"][0]["runs"]
    assert [(r["attempt"], r["outcome"]) for r in runs] == [(1, "lost"), (2, "done")]


def test_renew_keeps_a_long_step_from_being_taken(journal):
    key = StepKey(_record(journal), "r", 0)
    journal.claim(key, ME, 10, NOW)
    journal.renew([key], ME, NOW + 100)

    assert journal.claim(key, OTHER, 10, NOW + 50) is None
    assert journal.overdue(NOW + 50, 0, OTHER) == []
    assert journal.overdue(NOW + 101, 0, OTHER) == [key]


def test_overdue_finds_queued_steps_past_the_grace(journal):
    key = StepKey(_record(journal, at=NOW), "r", 0)

    assert journal.overdue(NOW + 10, 30, ME) == []
    assert journal.overdue(NOW + 31, 30, ME) == [key]


def test_list_events_newest_first_and_failed_only(journal):
    old = _record(journal, "RE1", at=NOW)
    new = _record(journal, "RE2", at=NOW + 1)
    claim = journal.claim(StepKey(old, "r", 0), ME, 60, NOW + 2)
    journal.fail(claim, ME, "gave up", NOW + 2, None)

    assert [e["id"] for e in journal.list_events()] == [new, old]
    assert [e["id"] for e in journal.list_events(limit=1)] == [new]
    failed = journal.list_events(failed_only=True)
    assert [e["id"] for e in failed] == [old]
    assert failed[0]["steps"][0] | {"next_at": None} == {
        "rule": "r",
        "index": 0,
        "id": None,
        "action": "t_echo",
        "state": "failed",
        "attempts": 1,
        "error": "gave up",
        "outputs": None,
        "next_at": None,
    }


def test_get_event_by_prefix(journal):
    event_id = _record(journal)

    assert journal.get_event(event_id[:6])["id"] == event_id
    assert journal.get_event("zz") is None


def test_retry_requeues_failed_steps_with_attempts_reset(journal):
    event_id = _record(journal)
    key = StepKey(event_id, "r", 0)
    journal.fail(journal.claim(key, ME, 60, NOW), ME, "no", NOW, None)

    assert journal.retry(None, NOW + 1) == [key]
    assert journal.retry(event_id, NOW + 1) == []
    step = journal.get_event(event_id)["steps"][0]
    assert (step["state"], step["attempts"]) == ("queued", 0)
    assert journal.claim(key, ME, 60, NOW + 1).attempt == 1


def test_owner_knows_dead_only_on_its_own_host():
    me = Owner.current()

    assert me.knows_dead(f"{me.host}:{me.pid}:an-earlier-start")
    assert not me.knows_dead(str(me))
    assert not me.knows_dead(f"{me.host}:{1}:init")
    assert not me.knows_dead("another-host:999999:x")


# -- the command line ------------------------------------------------------------


@pytest.fixture
def cli_config(tmp_path, monkeypatch):
    ensure_test_plugin()
    monkeypatch.setenv("TEST_TOKEN", TOKEN)
    runs = tmp_path / "runs.txt"
    path = write_config(
        tmp_path,
        f"""\
      - action: t_fail
        with: {{file: "{runs}", message: "refused {TOKEN}"}}
        retry: {{attempts: 1}}
""",
    )
    return path


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _fail_one(config_path) -> str:
    """Record one event whose only step failed, through a real runtime."""
    import asyncio

    from recflow.config import load
    from recflow.pipeline import open_runtime
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager()
    config = load(str(config_path), host.actions)
    runtime = open_runtime(config, host)
    runtime.start(1)
    event = make_event()
    asyncio.run(runtime.pipeline.submit(event, config.rules))
    deadline = time.monotonic() + 20
    while runtime.journal.get_event(event.id)["steps"][0]["state"] != "failed":
        assert time.monotonic() < deadline, "the step did not fail in time"
        time.sleep(0.02)
    runtime.close()
    return event.id


def test_events_json_has_the_documented_shape_and_no_secret(cli_config):
    event_id = _fail_one(cli_config)

    code, output = _cli("events", "-c", str(cli_config), "--json")

    assert code == 0, output
    [event] = json.loads(output)
    assert {"id", "account_sid", "recording_sid", "status", "received_at", "rules", "steps"} <= set(
        event
    )
    assert event["id"] == event_id
    step = event["steps"][0]
    assert {k: step[k] for k in ("rule", "index", "action", "state", "attempts", "error")} == {
        "rule": "log",
        "index": 0,
        "action": "t_fail",
        "state": "failed",
        "attempts": 1,
        "error": "refused ***",
    }
    assert TOKEN not in output


def test_events_table_and_show(cli_config):
    event_id = _fail_one(cli_config)

    code, table = _cli("events", "-c", str(cli_config), "--failed")
    assert code == 0, table
    assert event_id[:12] in table
    assert "log#1" in table and "failed" in table and "refused ***" in table

    code, shown = _cli("events", "-c", str(cli_config), "show", event_id[:8])
    assert code == 0, shown
    assert f"event     {event_id}" in shown
    assert "attempt 1" in shown

    code, shown = _cli("events", "-c", str(cli_config), "show", f" {event_id[:8].upper()} ")
    assert code == 0, shown
    assert f"event     {event_id}" in shown

    code, missing = _cli("events", "-c", str(cli_config), "show", "nope")
    assert code == 1
    assert "no event with id 'nope'" in missing

    code, empty = _cli("events", "-c", str(cli_config), "show", " ")
    assert code == 2
    assert "give an event id, or the first characters of one" in empty


def test_retry_command_requeues_failed_steps(cli_config, tmp_path):
    event_id = _fail_one(cli_config)

    code, output = _cli("retry", "-c", str(cli_config), event_id[:10].upper())
    assert code == 0, output
    assert f"queued again: {event_id[:12]} log#1" in output

    code, output = _cli("events", "-c", str(cli_config), "--json")
    assert json.loads(output)[0]["steps"][0]["state"] == "queued"

    code, output = _cli("retry", "-c", str(cli_config), "--failed")
    assert (code, output.strip()) == (0, "no failed steps")


@pytest.mark.parametrize(
    "args",
    [pytest.param([], id="neither"), pytest.param(["abc", "--failed"], id="both")],
)
def test_retry_needs_one_target(cli_config, args):
    code, output = _cli("retry", "-c", str(cli_config), *args)

    assert code == 2
    assert "give either an EVENT_ID or --failed" in output


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["-c", "{config}", "events", "show", "{id}"], id="before-the-command"),
        pytest.param(["events", "show", "-c", "{config}", "{id}"], id="after-show"),
        pytest.param(["events", "-c", "{config}", "show", "{id}"], id="after-events"),
    ],
)
def test_config_option_works_before_or_after_the_command(cli_config, args):
    event_id = _fail_one(cli_config)

    filled = [a.format(config=cli_config, id=event_id[:10]) for a in args]
    code, output = _cli(*filled)

    assert code == 0, output
    assert event_id in output


def test_events_creates_no_database_where_there_is_none(cli_config):
    database = cli_config.parent / "var" / "recflow.db"
    assert not database.exists()

    code, output = _cli("events", "-c", str(cli_config))

    assert code == 1
    assert f"no database at {database} (from {cli_config}): nothing was received" in output
    assert not database.exists()


# -- the SQLite file of an earlier release ------------------------------------------

_V0 = Path(__file__).parent / "samples" / "journal-v0.sql"
_STEP_COLUMNS = "rule, idx, step_id, action, state, attempts, error, outputs"


def _v0_file(tmp_path: Path) -> Path:
    db = tmp_path / "recflow.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.executescript(_V0.read_text())
    return db


def test_a_file_of_the_earlier_schema_is_upgraded_with_nothing_lost(tmp_path, caplog):
    db = _v0_file(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = {
            event_id: sorted(
                conn.execute(
                    f"select {_STEP_COLUMNS} from journal_steps where event_id = ?",  # noqa: S608
                    (event_id,),
                )
            )
            for (event_id,) in conn.execute("select id from journal_events order by received_at")
        }
        runs_before = conn.execute("select * from journal_runs order by rowid").fetchall()

    with caplog.at_level("WARNING", logger="recflow.journal_sqlite"):
        journal = SqliteJournal(str(db))

    assert [m for m in caplog.messages if "upgrading" in m], caplog.messages
    assert [m for m in caplog.messages if "upgraded to schema version 1 in" in m]
    # The upgrade's copy of the tables went through the WAL; its space is given back.
    assert os.path.getsize(f"{db}-wal") == 0
    assert [e["id"] for e in journal.list_events(10)] == list(reversed(before))
    for event_id, steps in before.items():
        shown = journal.get_event(event_id)["steps"]
        after = [
            (s["rule"], s["index"], s["id"], s["action"], s["state"], s["attempts"], s["error"])
            for s in shown
        ]
        assert sorted(after) == [step[:7] for step in steps]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("select * from journal_runs order by rowid").fetchall() == runs_before
        assert conn.execute("pragma user_version").fetchone() == (1,)

    # What was owed still runs, what was known is still refused, what failed retries.
    done_first, failed, queued = before
    data = journal.get_event(done_first)["event"]
    later = NOW + 60
    assert journal.record([NewEvent(done_first, data, later, ("two",), ())], later) == [False]
    claim = journal.claim(StepKey(done_first, "two", 1), ME, 60, later)
    assert claim is not None
    assert claim.previous == (("t_echo", "s0", {"url": "file:///x"}),)
    assert journal.retry(failed, later) == [StepKey(failed, "one", 0)]
    assert journal.claim(StepKey(failed, "one", 0), ME, 60, later) is not None
    assert journal.claim(StepKey(queued, "one", 0), ME, 60, later) is not None
    assert journal.claim(StepKey(queued, "two", 0), ME, 60, later) is not None
    journal.close()

    caplog.clear()
    with caplog.at_level("WARNING", logger="recflow.journal_sqlite"):
        SqliteJournal(str(db)).close()
    assert not caplog.messages, "an upgraded file was upgraded again"


def test_an_upgrade_says_how_many_steps_of_no_event_it_left_out(tmp_path, caplog):
    db = _v0_file(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (gone,) = conn.execute("select event_id from journal_steps limit 1").fetchone()
        (their_steps,) = conn.execute(
            "select count(*) from journal_steps where event_id = ?", (gone,)
        ).fetchone()
        (all_steps,) = conn.execute("select count(*) from journal_steps").fetchone()
        conn.execute("delete from journal_events where id = ?", (gone,))
        conn.commit()

    with caplog.at_level("WARNING", logger="recflow.journal_sqlite"):
        journal = SqliteJournal(str(db))

    assert any(
        f"{their_steps} steps whose event is not in the file" in m for m in caplog.messages
    ), caplog.messages
    shown = sum(len(e["steps"]) for e in journal.list_events(10))
    assert shown == all_steps - their_steps
    journal.close()


@pytest.mark.parametrize(
    "args",
    [pytest.param(["events"], id="events"), pytest.param(["retry", "--failed"], id="retry")],
)
def test_commands_that_read_the_journal_refuse_an_earlier_file_and_leave_it(cli_config, args):
    # The release that made it may still be running: serve and worker upgrade it.
    database = cli_config.parent / "var" / "recflow.db"
    database.parent.mkdir()
    _v0_file(database.parent)

    code, output = _cli(*args, "-c", str(cli_config))

    assert code == 1
    assert f"the journal {database} has the tables of an earlier recflow" in output
    assert "`recflow serve` or `recflow worker` of this release upgrades them" in output
    with contextlib.closing(sqlite3.connect(database)) as conn:
        assert conn.execute("pragma user_version").fetchone() == (0,)
        columns = {row[1] for row in conn.execute("pragma table_info(journal_steps)")}
        assert "event_id" in columns
        assert conn.execute("pragma journal_mode").fetchone() == ("delete",), "switched to WAL"


def test_processes_opening_an_earlier_file_at_once_upgrade_it_once(tmp_path):
    db = _v0_file(tmp_path)
    opening = f"from recflow.journal_sqlite import SqliteJournal; SqliteJournal({str(db)!r})"
    children = [subprocess.Popen([sys.executable, "-c", opening]) for _ in range(3)]

    assert [child.wait(60) for child in children] == [0, 0, 0]
    journal = SqliteJournal(str(db))
    events = journal.list_events(10)
    assert len(events) == 3
    assert sum(len(e["steps"]) for e in events) == 5
    journal.close()


def test_opening_waits_out_another_process_holding_the_file_longer_than_its_busy_timeout(
    tmp_path, caplog
):
    # As another process's upgrade of a large file does: a second receiver
    # or `recflow events` started meanwhile must wait, not fail "locked".
    db = tmp_path / "recflow.db"
    SqliteJournal(str(db)).close()
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(db), "1.5"], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"holding\n"
        with caplog.at_level("WARNING", logger="recflow.journal_sqlite"):
            journal = SqliteJournal(str(db), busy_timeout=0.2)
        assert holder.wait(10) == 0
    finally:
        holder.kill()

    assert any("another process is writing it" in m for m in caplog.messages)
    event_id = _record(journal)
    assert journal.get_event(event_id)["steps"][0]["state"] == "queued"
    journal.close()


def test_opening_gives_up_on_a_file_held_past_the_wait_with_the_reason(tmp_path, monkeypatch):
    db = tmp_path / "recflow.db"
    SqliteJournal(str(db)).close()
    monkeypatch.setattr("recflow.journal_sqlite.OPEN_WAIT", 0.5)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(db), "30"], stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"holding\n"
        with pytest.raises(BackendError, match="another process has held its write lock"):
            SqliteJournal(str(db), busy_timeout=0.2)
    finally:
        holder.kill()
        holder.wait(10)


# Takes the file's write lock (argv[1]), says so, holds it argv[2] seconds.
_HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("begin immediate")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("commit")
"""


def test_a_file_that_cannot_be_written_is_refused_when_opened_not_at_the_first_callback(
    tmp_path,
):
    db = tmp_path / "recflow.db"
    journal = SqliteJournal(str(db))
    event_id = _record(journal)
    journal.close()
    # Immutable: refused even to root, as a read-only mount or file would be to a user.
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (needs root and a file system with it)")
    try:
        with pytest.raises(BackendError) as refused:
            SqliteJournal(str(db))
        # What `recflow events` opens: it only looks, and may.
        looking = SqliteJournal(str(db), upgrade=False)
        assert [e["id"] for e in looking.list_events(10)] == [event_id]
        looking.close()
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)

    assert str(refused.value).startswith(f"cannot open the journal {db}: ")
    assert "readonly" in str(refused.value)


def test_an_error_that_ended_a_transaction_is_the_one_reported(tmp_path):
    # SQLite rolls a transaction back itself on some errors (a full disk);
    # rolling back again must not replace the cause with "no transaction is active".
    journal = SqliteJournal(str(tmp_path / "recflow.db"))
    (pages,) = journal._conn().execute("pragma page_count").fetchone()
    journal._conn().execute(f"pragma max_page_count = {pages + 2}")
    big = {"account_sid": "AC1", "recording_sid": "RE1", "status": "completed", "x": "y" * 50_000}

    with pytest.raises(BackendError, match="full"):
        journal.record([NewEvent("e1", big, NOW, ("r",), (("r", "t_echo", None),))], NOW)
    journal.close()


def test_another_applications_database_is_refused_not_taken_over(tmp_path):
    db = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("create table customers (id integer primary key, name text)")
        conn.commit()

    with pytest.raises(BackendError, match="holds tables that are not recflow's"):
        SqliteJournal(str(db))

    with contextlib.closing(sqlite3.connect(db)) as conn:
        tables = [row[0] for row in conn.execute("select name from sqlite_master")]
        assert conn.execute("pragma journal_mode").fetchone() == ("delete",), "switched to WAL"
    assert tables == ["customers"]


def test_a_file_of_a_later_schema_is_refused_not_written(tmp_path):
    db = tmp_path / "recflow.db"
    SqliteJournal(str(db)).close()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("pragma user_version = 7")

    with pytest.raises(BackendError, match="made by a later recflow"):
        SqliteJournal(str(db))
