"""The Journal contract, run against every backend: SQLite and Redis.

tests/test_journal.py covers each operation on its own; this suite holds
the backends to the promises that matter once many processes share one
journal: an event id is claimed once however many receivers record it at
the same moment, a step is claimed by one worker at a time, an outcome
recorded under a lost lease is refused, and both backends show the same
history in the same shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pipeline_util import make_event
from redis_util import backend_url, redis_server, redis_url  # noqa: F401  (fixtures)

from recflow.errors import BackendError
from recflow.journal import Journal, NewEvent, Owner, open_journal
from recflow.journal_redis import RedisJournal
from recflow.queue import StepKey, parse_backend

NOW = 1_800_000_000.0
ME = Owner("here", 1, "me")
OTHER = Owner("elsewhere", 2, "them")
RULE = "archive: ünïcode ✓"  # a colon and non-ASCII must survive key names


@pytest.fixture
def journal(backend_url: str) -> Iterator[Journal]:  # noqa: F811
    opened = open_journal(parse_backend(backend_url))
    yield opened
    opened.close()


def new_event(
    recording: str, rules: tuple[str, ...] = (RULE,), at: float = NOW, step_id: str | None = None
) -> NewEvent:
    event = make_event(recording)
    return NewEvent(
        id=event.id,
        data=event.to_dict(),
        received_at=at,
        rules=rules,
        first_steps=tuple((rule, "t_echo", step_id) for rule in rules),
    )


def in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` in `count` threads released at the same moment."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results


# -- dedupe ------------------------------------------------------------------


def test_a_duplicate_in_the_same_batch_and_in_a_later_one_is_refused(journal):
    first, second = new_event("RE1"), new_event("RE2")

    assert journal.record([first, second, first], NOW) == [True, True, False]
    assert journal.record([second], NOW + 1) == [False]
    assert sorted(e["id"] for e in journal.list_events()) == sorted([first.id, second.id])
    assert len(journal.get_event(first.id)["steps"]) == 1


def test_threads_recording_one_event_at_once_get_one_true(journal):
    event = new_event("RE1")

    answers = in_threads(8, lambda _: journal.record([event], NOW))

    assert sorted(a[0] for a in answers) == [False] * 7 + [True]
    assert len(journal.get_event(event.id)["steps"]) == 1


_RACER = """
import json, random, sys
from recflow.journal import NewEvent, Owner, open_journal
from recflow.queue import StepKey, parse_backend

url, mode, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
items = json.loads(sys.stdin.readline())
journal = open_journal(parse_backend(url))
journal.ping()
random.Random(seed).shuffle(items)
print("ready", flush=True)
sys.stdin.readline()
won = []
for item in items:
    if mode == "record":
        event = NewEvent(item["id"], item["data"], item["at"], tuple(item["rules"]),
                         tuple(tuple(s) for s in item["steps"]))
        if journal.record([event], item["at"])[0]:
            won.append(item["id"])
    else:
        key = StepKey(*item)
        if journal.claim(key, Owner.current(), 60, 1800000000.0) is not None:
            won.append(item)
print(json.dumps(won), flush=True)
"""


def race_in_processes(url: str, mode: str, items: list[Any], processes: int = 2) -> list[Any]:
    """What each of `processes` Python processes won of `items`, racing."""
    command = [sys.executable, "-c", _RACER, url, mode]
    racers = [
        subprocess.Popen(
            [*command, str(seed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        for seed in range(processes)
    ]
    try:
        for racer in racers:
            assert racer.stdin and racer.stdout
            racer.stdin.write(json.dumps(items) + "\n")
            racer.stdin.flush()
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            assert racer.stdin
            racer.stdin.write("go\n")
            racer.stdin.flush()
        won = []
        for racer in racers:
            out, _ = racer.communicate(timeout=60)
            assert racer.returncode == 0
            won.append(json.loads(out))
        return won
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()


def test_two_processes_recording_the_same_events_claim_each_once(backend_url):  # noqa: F811
    events = [new_event(f"RE{i}") for i in range(60)]
    items = [
        {"id": e.id, "data": e.data, "at": NOW, "rules": e.rules, "steps": e.first_steps}
        for e in events
    ]

    first, second = race_in_processes(backend_url, "record", items)

    assert sorted(first + second) == sorted(e.id for e in events)
    assert set(first).isdisjoint(second)
    journal = open_journal(parse_backend(backend_url))
    try:
        assert len(journal.list_events(limit=100)) == 60
    finally:
        journal.close()


# -- claims and leases -------------------------------------------------------


def test_threads_claiming_one_step_at_once_get_one_claim(journal):
    event = new_event("RE1")
    journal.record([event], NOW)
    key = StepKey(event.id, RULE, 0)
    owners = [Owner("host", i, "t") for i in range(8)]

    claims = in_threads(8, lambda i: journal.claim(key, owners[i], 60, NOW))

    won = [i for i, claim in enumerate(claims) if claim is not None]
    assert len(won) == 1
    assert claims[won[0]].attempt == 1
    step = journal.get_event(event.id)["steps"][0]
    assert (step["state"], step["attempts"]) == ("running", 1)


def test_two_processes_claiming_the_same_steps_take_each_once(backend_url):  # noqa: F811
    journal = open_journal(parse_backend(backend_url))
    events = [new_event(f"RE{i}") for i in range(40)]
    try:
        journal.record(events, NOW - 1)
    finally:
        journal.close()
    keys = [[e.id, RULE, 0] for e in events]

    first, second = race_in_processes(backend_url, "claim", keys)

    assert sorted(map(tuple, first + second)) == sorted(map(tuple, keys))
    assert not {tuple(k) for k in first} & {tuple(k) for k in second}


# Each case: what befalls ME's claim (a 10 s lease) before ME reports at
# NOW + 20, whether the report counts, and the step's state after it.
@pytest.mark.parametrize(
    ("meanwhile", "report", "accepted", "state"),
    [
        pytest.param(None, "succeed", True, "done", id="succeed"),
        pytest.param(None, "fail", True, "failed", id="fail"),
        pytest.param(None, "retry", True, "queued", id="fail-to-retry"),
        pytest.param("taken", "succeed", False, "running", id="succeed-taken-over"),
        pytest.param("taken", "fail", False, "running", id="fail-taken-over"),
        pytest.param("retried", "succeed", False, "queued", id="succeed-after-their-retry"),
    ],
)
def test_an_outcome_counts_only_while_the_step_is_still_held(
    journal, meanwhile, report, accepted, state
):
    event = new_event("RE1")
    journal.record([event], NOW)
    key = StepKey(event.id, RULE, 0)
    mine = journal.claim(key, ME, 10, NOW)
    if meanwhile in ("taken", "retried"):
        theirs = journal.claim(key, OTHER, 60, NOW + 11)
        if meanwhile == "retried":
            assert journal.fail(theirs, OTHER, "oops", NOW + 12, NOW + 13)

    if report == "succeed":
        answer = journal.succeed(mine, ME, {"n": 1}, NOW + 20, ("t_echo", None))
    else:
        answer = journal.fail(mine, ME, "no", NOW + 20, NOW + 30 if report == "retry" else None)

    assert answer is accepted
    steps = journal.get_event(event.id)["steps"]
    assert steps[0]["state"] == state
    assert len(steps) == (2 if state == "done" else 1)
    failed = [e["id"] for e in journal.list_events(failed_only=True)]
    assert failed == ([event.id] if state == "failed" else [])


def test_a_step_done_is_never_claimed_again_even_past_every_lease(journal):
    event = new_event("RE1")
    journal.record([event], NOW)
    key = StepKey(event.id, RULE, 0)
    assert journal.succeed(journal.claim(key, ME, 10, NOW), ME, {}, NOW + 1, None)

    assert journal.claim(key, OTHER, 10, NOW + 10_000) is None
    assert journal.overdue(NOW + 10_000, 0, OTHER) == []
    assert journal.retry(None, NOW + 10_000) == []


def test_the_next_step_is_queued_once_and_sees_earlier_outputs(journal):
    event = new_event("RE1", step_id="first")
    journal.record([event], NOW)
    first = journal.claim(StepKey(event.id, RULE, 0), ME, 60, NOW)

    assert journal.succeed(first, ME, {"url": "s3://b/k", "bytes": 3}, NOW + 1, ("t_echo", "two"))
    second = journal.claim(StepKey(event.id, RULE, 1), ME, 60, NOW + 2)

    assert second.previous == (("t_echo", "first", {"url": "s3://b/k", "bytes": 3}),)
    assert second.event == event.data
    steps = journal.get_event(event.id)["steps"]
    assert [(s["index"], s["id"], s["state"]) for s in steps] == [
        (0, "first", "done"),
        (1, "two", "running"),
    ]


def test_a_retry_is_not_due_before_its_time(journal):
    event = new_event("RE1")
    journal.record([event], NOW)
    key = StepKey(event.id, RULE, 0)
    assert journal.fail(journal.claim(key, ME, 60, NOW), ME, "busy", NOW, NOW + 30)

    assert journal.claim(key, ME, 60, NOW + 29) is None
    again = journal.claim(key, ME, 60, NOW + 30)

    assert again is not None and again.attempt == 2


# -- recovery ----------------------------------------------------------------


def test_overdue_sorts_steps_by_why_they_are_owed(journal):
    here = Owner.current()
    dead = Owner(here.host, _exited_pid(), "gone")
    alive = Owner(here.host, os.getppid(), "alive")
    ids = {}
    for name in ("fresh", "stale", "expired", "dead", "alive", "done"):
        event = new_event(name, at=NOW)
        journal.record([event], NOW - 100 if name != "fresh" else NOW)
        ids[name] = StepKey(event.id, RULE, 0)
    journal.claim(ids["expired"], OTHER, 10, NOW - 50)
    journal.claim(ids["dead"], dead, 3600, NOW - 50)
    journal.claim(ids["alive"], alive, 3600, NOW - 50)
    done = journal.claim(ids["done"], OTHER, 3600, NOW - 50)
    journal.succeed(done, OTHER, {}, NOW - 40, None)

    owed = journal.overdue(NOW, 30, here)

    assert sorted(owed) == sorted([ids["stale"], ids["expired"], ids["dead"]])
    # The dead process's lease was ended: any worker may take the step now.
    claim = journal.claim(ids["dead"], here, 60, NOW)
    assert claim is not None and claim.attempt == 2
    assert journal.claim(ids["alive"], here, 60, NOW) is None


def test_retry_of_every_failed_step_across_events(journal):
    keys = []
    for name in ("RE1", "RE2", "RE3"):
        event = new_event(name)
        journal.record([event], NOW)
        keys.append(StepKey(event.id, RULE, 0))
    for key in keys[:2]:
        assert journal.fail(journal.claim(key, ME, 60, NOW), ME, "down", NOW, None)

    assert len(journal.list_events(failed_only=True)) == 2
    assert sorted(journal.retry(None, NOW + 1)) == sorted(keys[:2])
    assert journal.list_events(failed_only=True) == []
    assert journal.retry(None, NOW + 2) == []
    states = {e["id"]: e["steps"][0]["state"] for e in journal.list_events()}
    assert sorted(states.values()) == ["queued", "queued", "queued"]


# -- one history, one shape ----------------------------------------------------


def _history(journal: Journal) -> dict[str, Any]:
    """A short life of two events: retries, a failure, a lost lease, a retry."""
    one = new_event("RE1", rules=(RULE, "mail"), at=NOW, step_id="archive")
    two = new_event("RE2", rules=("mail",), at=NOW + 1)
    assert journal.record([one, two, one], NOW) == [True, True, False]
    a = StepKey(one.id, RULE, 0)
    claim = journal.claim(a, ME, 5, NOW + 2)
    assert journal.fail(claim, ME, "404 not yet", NOW + 3, NOW + 4)
    claim = journal.claim(a, ME, 5, NOW + 4)
    lost = journal.claim(a, OTHER, 5, NOW + 10)  # ME's lease ran out
    assert not journal.succeed(claim, ME, {}, NOW + 11, None)
    assert journal.succeed(lost, OTHER, {"url": "file:///a.wav"}, NOW + 12, ("delete", None))
    m = StepKey(two.id, "mail", 0)
    assert journal.fail(journal.claim(m, ME, 5, NOW + 13), ME, "smtp refused", NOW + 14, None)
    journal.retry(two.id, NOW + 15)
    assert journal.fail(journal.claim(m, ME, 5, NOW + 16), ME, "smtp refused", NOW + 17, None)
    return {
        "list": journal.list_events(),
        "failed": journal.list_events(failed_only=True),
        "one": journal.get_event(one.id[:10]),
        "two": journal.get_event(two.id),
    }


def test_both_backends_tell_the_same_history_in_the_same_shape(tmp_path, redis_url):  # noqa: F811
    sqlite = open_journal(parse_backend(f"sqlite:///{tmp_path / 'r.db'}"))
    redis_journal = open_journal(parse_backend(redis_url))
    try:
        expected, got = _history(sqlite), _history(redis_journal)
    finally:
        sqlite.close()
        redis_journal.close()

    assert got == expected
    one = got["one"]
    assert [(s["rule"], s["index"], s["state"]) for s in one["steps"]] == [
        (RULE, 0, "done"),
        (RULE, 1, "queued"),
        ("mail", 0, "queued"),
    ]
    assert [(r["attempt"], r["outcome"]) for r in one["steps"][0]["runs"]] == [
        (1, "error"),
        (2, "lost"),
        (3, "done"),
    ]
    assert one["received_at"] == "2027-01-15T08:00:00.000+00:00"
    assert [(r["attempt"], r["outcome"]) for r in got["two"]["steps"][0]["runs"]] == [
        (1, "failed"),
        (1, "failed"),
    ]
    assert [e["id"] for e in got["failed"]] == [got["two"]["id"]]


# -- Redis specifics -------------------------------------------------------------


def test_redis_that_does_not_answer_is_a_backend_error(redis_server):  # noqa: F811
    journal = RedisJournal(f"redis://:hunter2@127.0.0.1:{_closed_port()}/0")

    with pytest.raises(BackendError) as raised:
        journal.record([new_event("RE1")], NOW)

    assert "hunter2" not in str(raised.value)
    assert "127.0.0.1" in str(raised.value)
    assert journal.ping() is False
    with pytest.raises(BackendError):
        journal.list_events()


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://127.0.0.1:notaport/0", id="port"),
        pytest.param("redis://127.0.0.1:6379/zero", id="db"),
    ],
)
def test_a_malformed_redis_url_is_a_backend_error(url):
    with pytest.raises(BackendError, match="backend redis://"):
        RedisJournal(url)


def test_redis_keys_stay_under_the_recflow_prefix(redis_url, redis_server):  # noqa: F811
    journal = RedisJournal(redis_url)
    event = new_event("RE1")
    journal.record([event], NOW)
    key = StepKey(event.id, RULE, 0)
    journal.fail(journal.claim(key, ME, 60, NOW), ME, "no", NOW, None)

    keys = [k.decode() for k in redis_server.client().keys("*")]  # type: ignore[attr-defined]

    assert keys and all(k.startswith("recflow:") for k in keys)


def _exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_listing_never_shows_a_done_step_without_the_step_it_queued(journal):
    """A reader racing a worker sees the step running, or done with its successor."""
    events = [new_event(f"RE-race-{i}") for i in range(40)]
    journal.record(events, NOW)
    claims = [journal.claim(StepKey(e.id, RULE, 0), ME, 60, NOW) for e in events]
    seen: list[list[str]] = []

    def finish_all() -> None:
        for claim in claims:
            assert claim is not None
            journal.succeed(claim, ME, {}, NOW + 1, ("t_echo", None))

    worker = threading.Thread(target=finish_all)
    worker.start()
    while worker.is_alive():
        for row in journal.list_events(limit=40):
            seen.append([step["state"] for step in row["steps"]])
    worker.join()

    assert {tuple(states) for states in seen} <= {("running",), ("done", "queued")}
