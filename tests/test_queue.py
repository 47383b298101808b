"""The step queue: batched enqueues, and tasks written in the journal's own commit."""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

import pytest
from pipeline_util import make_event
from redis_util import backend_url, redis_server, redis_url  # noqa: F401  (fixtures)

from recflow.journal import NewEvent, Owner, open_journal
from recflow.queue import StepKey, StepQueue, parse_backend

KEYS = [StepKey("e1", "archive", 0), StepKey("e1", "mail", 0), StepKey("e2", "archive", 3)]


def _drain(queue: StepQueue) -> list[StepKey]:
    taken = []
    while (key := queue.take()) is not None:
        taken.append(key)
    return taken


def _new_event(recording: str, rules: tuple[str, ...]) -> NewEvent:
    event = make_event(recording)
    return NewEvent(
        id=event.id,
        data=event.to_dict(),
        received_at=time.time(),
        rules=rules,
        first_steps=tuple((rule, "t_echo", None) for rule in rules),
    )


def test_put_many_enqueues_every_key_in_order(backend_url: str) -> None:  # noqa: F811
    queue = StepQueue(parse_backend(backend_url))
    queue.flush()
    queue.put_many(KEYS)
    assert queue.pending() == 3
    assert queue.wakeup.is_set()
    assert _drain(queue) == KEYS


def test_put_many_of_nothing_does_nothing(tmp_path: Path) -> None:
    queue = StepQueue(parse_backend(f"sqlite:///{tmp_path / 'q.db'}"))
    queue.put_many([])
    assert queue.pending() == 0
    assert not queue.wakeup.is_set()


def test_tasks_written_in_an_outside_transaction_are_taken(tmp_path: Path) -> None:
    # put_many_in writes Huey's own `task` table through another connection:
    # this is what would break if a Huey release changed that table.
    path = str(tmp_path / "q.db")
    queue = StepQueue(parse_backend(f"sqlite:///{path}"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("begin immediate")
    queue.put_many_in(conn, KEYS)
    assert queue.pending() == 0, "tasks visible before their transaction committed"
    conn.execute("commit")
    assert _drain(queue) == KEYS


def test_tasks_written_in_a_transaction_roll_back_with_it(tmp_path: Path) -> None:
    path = str(tmp_path / "q.db")
    queue = StepQueue(parse_backend(f"sqlite:///{path}"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("begin immediate")
    queue.put_many_in(conn, KEYS)
    conn.execute("rollback")
    assert queue.take() is None


def test_journal_commit_goes_on_when_its_tasks_cannot_be_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend = parse_backend(f"sqlite:///{tmp_path / 'r.db'}")
    queue = StepQueue(backend)
    journal = open_journal(backend)
    with sqlite3.connect(backend.location) as conn:
        conn.execute("drop table task")
    event = _new_event("RE1", ("archive",))
    with caplog.at_level(logging.WARNING, logger="recflow.queue"):
        assert journal.record_and_enqueue([event], time.time(), queue) == [True]
    assert "the recovery pass will" in caplog.text
    [step] = journal.get_event(event.id)["steps"]  # type: ignore[index]
    assert (step["rule"], step["state"]) == ("archive", "queued")
    # What the recovery pass finds owed:
    assert journal.overdue(time.time() + 1, 0.0, Owner.current()) == [
        StepKey(event.id, "archive", 0)
    ]


def test_record_and_enqueue_queues_first_steps_of_new_events_only(
    backend_url: str,  # noqa: F811
) -> None:
    backend = parse_backend(backend_url)
    queue = StepQueue(backend)
    queue.flush()
    journal = open_journal(backend)
    first = _new_event("RE1", ("archive", "mail"))
    second = _new_event("RE2", ())
    fresh = journal.record_and_enqueue([first, second, first], time.time(), queue)
    assert fresh == [True, True, False]
    assert _drain(queue) == [StepKey(first.id, "archive", 0), StepKey(first.id, "mail", 0)]
    assert journal.record_and_enqueue([first], time.time(), queue) == [False]
    assert queue.take() is None
