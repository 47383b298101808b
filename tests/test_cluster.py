"""Many machines, one Redis: receivers and workers as separate processes.

One redis-server, two `recflow serve --no-worker` receivers and three
`recflow worker` processes, all real, on 127.0.0.1. Every callback of a
burst is delivered to both receivers at once (as a provider's retry racing
the original would be); one worker is killed with SIGKILL in the middle of
a slow step and a replacement started, as a supervisor would. Every event
must then be recorded once, every step done exactly once, and the command
line, pointed at the same Redis, must see and retry all of them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pipeline_util import ACCOUNT, TOKEN, callback_pairs, ensure_test_plugin, lines, wait_for
from redis_util import redis_server, redis_url, start_redis  # noqa: F401  (fixtures)
from serve_util import running_server, signed_form

from recflow.event import event_id
from recflow.journal_redis import RedisJournal

pytestmark = [pytest.mark.slow, pytest.mark.redis]

ENV = {"TEST_TOKEN": TOKEN}
EVENTS = 24
RECORDINGS = [f"RE{n:032x}" for n in range(1, EVENTS + 1)]
IDS = [event_id(ACCOUNT, r, "completed") for r in RECORDINGS]

CONFIG = """\
providers:
  - name: main
    kind: twilio
    account_sid: {account}
    api_token: ${{TEST_TOKEN}}
    api_url: http://127.0.0.1:9/2010-04-01
backend: {backend}
workers: 2
rules:
  - name: archive
    steps:
      - action: t_append
        with: {{file: "{out}", started: "{started}", text: first, sleep: 0.8}}
        retry: {{attempts: 3, backoff: 0.1}}
      - action: t_append
        with: {{file: "{out}", text: second}}
  - name: audit
    steps:
      - action: t_fail
        with: {{unless_exists: "{fixed}", message: audit service down}}
        retry: {{attempts: 1}}
"""


def _recflow(*args: str) -> list[str]:
    return [sys.executable, "-c", "from recflow.cli import main; main()", *args]


class Workers:
    """`recflow worker` processes of one config, stopped by pid on `stop()`."""

    def __init__(self, config: Path, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        logs.mkdir(exist_ok=True)

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.logs / f"worker-{len(self.processes) + 1}.log", "wb") as log:
            process = subprocess.Popen(
                _recflow("worker", "-c", str(self.config)),
                stdout=log,
                stderr=log,
                cwd=self.config.parent,
                env={**os.environ, **ENV},
            )
        self.processes[process.pid] = process
        return process

    def kill(self, pid: int) -> None:
        """SIGKILL one worker and reap it, so that the others can tell it is gone."""
        os.kill(pid, signal.SIGKILL)
        self.processes[pid].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.iterdir()))


@contextlib.contextmanager
def _workers(config: Path, logs: Path) -> Iterator[Workers]:
    workers = Workers(config, logs)
    try:
        yield workers
    finally:
        workers.stop()


def _post_to_all(receivers: list[Any], recording: str) -> list[int]:
    """The same signed callback to every receiver at the same moment."""

    def post(url: str) -> int:
        body, headers = signed_form(url, callback_pairs(recording), TOKEN, "X-Twilio-Signature")
        answer = httpx.post(url, content=body, headers=headers, timeout=30, trust_env=False)
        return answer.status_code

    with concurrent.futures.ThreadPoolExecutor(len(receivers)) as pool:
        return list(pool.map(post, [r.callback_url for r in receivers]))


def _fresh_holders(redis_url: str, within: float = 0.3) -> list[int]:  # noqa: F811
    """The pids of workers that started a step less than `within` s ago.

    The slow step sleeps before it writes its line, so a worker killed
    now dies with the step unfinished, not between its line and its commit.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        found = []
        for member in client.zrange("recflow:journal:running", 0, -1):
            name = member.decode()
            owner = client.hget(f"recflow:journal:step:{name}", "owner")
            last = client.lindex(f"recflow:journal:runs:{name}", -1)
            if owner and last:
                started = float(json.loads(last)["started_at"])
                if started > time.time() - within:
                    found.append(int(owner.split(b":")[1]))
        return found
    finally:
        client.close()


def _settled(
    journal: RedisJournal, events: int = EVENTS, steps: int = 3, states: tuple[str, ...] = ()
) -> list[dict[str, Any]] | None:
    """The events once there are `events` with `steps` steps each, none of them
    queued or running (and each in one of `states`, if given); else None."""
    found = journal.list_events(limit=events + 10)
    seen = [s["state"] for e in found for s in e["steps"]]
    if len(found) != events or len(seen) != steps * events:
        return None
    if any(state in ("queued", "running") or states and state not in states for state in seen):
        return None
    return found


def test_two_receivers_three_workers_one_killed_every_step_once(tmp_path, redis_url):  # noqa: F811
    ensure_test_plugin()
    out, started, fixed = tmp_path / "runs.txt", tmp_path / "started.txt", tmp_path / "fixed"
    config = tmp_path / "config.yaml"
    config.write_text(
        CONFIG.format(account=ACCOUNT, backend=redis_url, out=out, started=started, fixed=fixed)
    )
    journal = RedisJournal(redis_url)

    with (
        running_server(config, env=ENV, args=["--no-worker"]) as first,
        running_server(config, env=ENV, args=["--no-worker"]) as second,
        _workers(config, tmp_path / "logs") as workers,
    ):
        for _ in range(3):
            workers.start()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda r: _post_to_all([first, second], r), RECORDINGS))
        assert answers == [[204, 204]] * EVENTS

        # Halfway: kill -9 a worker that has just started a slow step.
        wait_for(lambda: len(lines(out)) >= EVENTS // 2, 60, "half of the steps to finish")
        holders = wait_for(lambda: _fresh_holders(redis_url), 30, "a step to start")
        workers.kill(holders[0])
        workers.start()

        events = wait_for(lambda: _settled(journal), 60, "every step to settle")

        # Both archive steps done exactly once; the audit step failed, as configured.
        for event in events:
            assert [(s["rule"], s["index"], s["state"]) for s in event["steps"]] == [
                ("archive", 0, "done"),
                ("archive", 1, "done"),
                ("audit", 0, "failed"),
            ], event["id"]
        assert sorted(e["id"] for e in events) == sorted(IDS)
        ran = Counter(tuple(line.split()[:3]) for line in lines(out))
        twice = {key: count for key, count in ran.items() if count != 1}
        assert not twice, [(journal.get_event(k[0]), workers.log()) for k in twice]
        assert ran == {(i, "archive", str(n)): 1 for i in IDS for n in (0, 1)}
        runs = [r for i in IDS for r in journal.get_event(i)["steps"][0]["runs"]]
        assert Counter(r["outcome"] for r in runs)["done"] == EVENTS
        assert any(r["outcome"] == "lost" for r in runs), "the killed worker held no step"

        # The command line, against the same Redis, sees and retries them all.
        shown = subprocess.run(
            _recflow("events", "-c", str(config), "--failed", "--json", "--limit", "100"),
            capture_output=True,
            env={**os.environ, **ENV},
            check=True,
        )
        assert sorted(e["id"] for e in json.loads(shown.stdout)) == sorted(IDS)
        fixed.touch()
        retried = subprocess.run(
            _recflow("retry", "-c", str(config), "--failed"),
            capture_output=True,
            env={**os.environ, **ENV},
            check=True,
        )
        assert retried.stdout.decode().count("queued again:") == EVENTS
        wait_for(lambda: _settled(journal, states=("done",)), 60, "the retried steps to finish")
        shown = subprocess.run(
            _recflow("events", "-c", str(config), "--json", "--limit", "100"),
            capture_output=True,
            env={**os.environ, **ENV},
            check=True,
        )
        listed = json.loads(shown.stdout)
        assert len(listed) == EVENTS
        assert {s["state"] for e in listed for s in e["steps"]} == {"done"}
    journal.close()


def test_a_receiver_answers_503_while_redis_is_down_and_loses_nothing_it_acknowledged(tmp_path):
    ensure_test_plugin()
    out, data = tmp_path / "runs.txt", tmp_path / "redis"
    data.mkdir()
    config = tmp_path / "config.yaml"
    with start_redis(data) as redis_before:
        port = redis_before.port
        config.write_text(
            CONFIG.format(
                account=ACCOUNT,
                backend=redis_before.url,
                out=out,
                started=tmp_path / "started.txt",
                fixed=tmp_path / "fixed",
            ).replace("sleep: 0.8", "sleep: 0")
        )
        with running_server(config, env=ENV, args=["--no-worker"]) as receiver:
            assert _post_to_all([receiver], RECORDINGS[0]) == [204]
            os.kill(redis_before.process.pid, signal.SIGKILL)
            redis_before.process.wait()

            # The provider is told to try again later, and /healthz says why.
            assert _post_to_all([receiver], RECORDINGS[1]) == [503]
            health = httpx.get(receiver + "/healthz", timeout=30, trust_env=False)
            assert health.status_code != 200

            with start_redis(data, port=port):
                assert _post_to_all([receiver], RECORDINGS[1]) == [204]
                with _workers(config, tmp_path / "logs") as workers:
                    workers.start()
                    journal = RedisJournal(f"redis://127.0.0.1:{port}/0")
                    events = wait_for(lambda: _settled(journal, 2), 60, "both events to settle")
                    journal.close()

    assert sorted(e["recording_sid"] for e in events) == RECORDINGS[:2]
    assert sorted(line.split()[2] for line in lines(out)) == ["0", "0", "1", "1"]
