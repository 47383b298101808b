"""The pipeline's durability promises, kept on the Redis backend too.

tests/test_pipeline.py and tests/test_crash.py hold SQLite to them; the
same promises on Redis: a burst of identical callbacks runs once, queued
work survives a restart that lost every task, and `kill -9` of
`recflow serve` right after its answers loses nothing it acknowledged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
from collections import Counter

import httpx
import pytest
from pipeline_util import (
    ACCOUNT,
    TOKEN,
    callback_pairs,
    ensure_test_plugin,
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
from redis_util import redis_server, redis_url  # noqa: F401  (fixtures)
from serve_util import running_server, signed_form

from recflow.event import event_id
from recflow.journal_redis import RedisJournal
from recflow.pipeline import open_runtime

pytestmark = pytest.mark.redis


@pytest.fixture
def runtimes():
    opened = []

    def open_(config, workers=0):
        runtime = open_runtime(config, plugin_host())
        opened.append(runtime)
        runtime.start(workers)
        return runtime

    yield open_
    for runtime in opened:
        runtime.close(timeout=10)


def test_ten_identical_callbacks_at_once_run_once(tmp_path, redis_url, runtimes):  # noqa: F811
    out = tmp_path / "runs.txt"
    rules = (rule("r", step("t_append", {"file": str(out)})),)
    runtime = runtimes(make_config(tmp_path, rules, backend=redis_url), workers=4)
    event = make_event()

    async def burst():
        return await asyncio.gather(*[runtime.pipeline.submit(event, rules) for _ in range(10)])

    assert sorted(asyncio.run(burst())) == [False] * 9 + [True]
    wait_for(lambda: settled(runtime.journal, event.id), what="the step to finish")
    assert len(lines(out)) == 1


def test_steps_owed_after_a_restart_that_lost_every_task_run(
    tmp_path,
    redis_url,  # noqa: F811
    runtimes,
):
    out = tmp_path / "runs.txt"
    rules = (rule("r", step("t_append", {"file": str(out)}), step("t_append", {"file": str(out)})),)
    config = make_config(tmp_path, rules, backend=redis_url)
    first = runtimes(config)
    events = [make_event(f"RE{i}") for i in range(5)]
    for event in events:
        assert submit(first, event, rules)
    first.queue.flush()  # the tasks are lost; only the journal knows what is owed
    first.close()

    second = runtimes(config, workers=2)

    for event in events:
        steps = wait_for(lambda e=event: settled(second.journal, e.id), what="recovery")
        assert [s["state"] for s in steps] == ["done", "done"]
    assert len(lines(out)) == 10


def test_kill_9_of_serve_right_after_its_answers_loses_nothing(tmp_path, redis_url):  # noqa: F811
    ensure_test_plugin()
    out = tmp_path / "runs.txt"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""\
providers:
  - name: main
    kind: twilio
    account_sid: {ACCOUNT}
    api_token: ${{TEST_TOKEN}}
    api_url: http://127.0.0.1:9/2010-04-01
backend: {redis_url}
workers: 2
rules:
  - name: log
    steps:
      - action: t_append
        with: {{file: "{out}", text: first}}
      - action: t_append
        with: {{file: "{out}", text: second}}
"""
    )
    recordings = [f"RE{i:032x}" for i in range(30)]
    env = {"TEST_TOKEN": TOKEN}

    def post(url: str, recording: str) -> int:
        body, headers = signed_form(url, callback_pairs(recording), TOKEN, "X-Twilio-Signature")
        return httpx.post(
            url, content=body, headers=headers, timeout=30, trust_env=False
        ).status_code

    with running_server(config, env=env) as server:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda r: post(server.callback_url, r), recordings))
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()

    assert answers == [204] * 30
    journal = RedisJournal(redis_url)
    ids = [event_id(ACCOUNT, r, "completed") for r in recordings]
    with running_server(config, env=env):
        for eid in ids:
            steps = wait_for(
                lambda e=eid: (s := settled(journal, e)) and len(s) == 2 and s,
                what=f"event {eid} to finish after the restart",
            )
            assert [s["state"] for s in steps] == ["done", "done"]
    ran = Counter((line.split()[0], line.split()[2]) for line in lines(out))
    for eid in ids:
        for shown in journal.get_event(eid)["steps"]:
            lost = [r for r in shown["runs"] if r["outcome"] == "lost"]
            # At least once: a step killed between its action and its commit
            # runs again, and the journal shows the killed attempt as lost.
            assert ran[(eid, str(shown["index"]))] in (1, 1 + len(lost)), shown
    journal.close()
