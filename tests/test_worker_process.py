"""worker_process: `recflow serve` runs its workers in a child process.

Each test runs the real `recflow serve` and looks at its children as an
operator would (`ps`, through /proc). The steps come from the
`recflow-testactions` plugin: each run of `t_append` appends a line to a
file, so the file counts real runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from pipeline_util import (
    TOKEN,
    callback_pairs,
    ensure_test_plugin,
    lines,
    make_event,
    settled,
    wait_for,
    write_config,
)
from proc_util import alive, children
from serve_util import running_server, signed_form

from recflow.journal_sqlite import SqliteJournal

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc for children"),
]

ENV = {"TEST_TOKEN": TOKEN}
WORKER = b"--parent-fd"
COMMITTER = b"recflow.commit_process"


@pytest.fixture(autouse=True)
def _plugin() -> None:
    ensure_test_plugin()


def _post(url: str, recording: str) -> int:
    body, headers = signed_form(url, callback_pairs(recording), TOKEN, "X-Twilio-Signature")
    return httpx.post(url, content=body, headers=headers, timeout=30, trust_env=False).status_code


def _steps(tmp_path: Path, recording: str) -> list[dict]:
    journal = SqliteJournal(str(tmp_path / "var" / "recflow.db"))
    return journal.get_event(make_event(recording).id)["steps"]


def _worker_of(pid: int) -> int:
    return wait_for(lambda: children(pid, WORKER), what="the worker process")[0]


def test_steps_run_in_a_worker_process_that_is_replaced_when_killed(tmp_path):
    out = tmp_path / "runs.txt"
    config = write_config(tmp_path, f'      - action: t_append\n        with: {{file: "{out}"}}\n')

    with running_server(config, env=ENV) as server:
        first = _worker_of(server.process.pid)
        assert _post(server.callback_url, "RE" + "1" * 32) == 204
        wait_for(lambda: len(lines(out)) == 1, what="the first step")

        os.kill(first, signal.SIGKILL)
        replacement = wait_for(
            lambda: [p for p in children(server.process.pid, WORKER) if p != first],
            what="a new worker process",
        )[0]
        assert _post(server.callback_url, "RE" + "2" * 32) == 204
        wait_for(lambda: len(lines(out)) == 2, what="the step after the restart")
    log = server.log()

    assert "the worker process exited (status -9): starting a new one" in log
    assert not alive(replacement), "the worker process outlived recflow serve"


def test_a_new_worker_process_runs_the_config_serve_loaded_not_the_edited_file(tmp_path):
    out, elsewhere = tmp_path / "runs.txt", tmp_path / "elsewhere.txt"
    config = write_config(tmp_path, f'      - action: t_append\n        with: {{file: "{out}"}}\n')
    loaded = config.read_text()

    with running_server(config, env=ENV) as server:
        first = _worker_of(server.process.pid)
        assert httpx.get(server + "/healthz", timeout=30).json() == {"status": "ok"}
        # Edited while serving, as one does before a restart that has not come
        # yet: the rule renamed and its file changed.
        config.write_text(
            loaded.replace("name: log", "name: renamed").replace(str(out), str(elsewhere))
        )
        os.kill(first, signal.SIGKILL)
        wait_for(
            lambda: [p for p in children(server.process.pid, WORKER) if p != first],
            what="a new worker process",
        )
        health = httpx.get(server + "/healthz", timeout=30)
        assert _post(server.callback_url, "RE" + "5" * 32) == 204
        wait_for(lambda: len(lines(out)) == 1, what="the step, as serve loaded it")
        steps = wait_for(
            lambda: settled_steps(tmp_path, "RE" + "5" * 32), what="the step to settle"
        )

    assert [(s["rule"], s["state"]) for s in steps] == [("log", "done")]
    assert not elsewhere.exists()
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"
    assert "the worker process exited once in the last 60 s" in health.json()["workers"]


def test_a_symlink_switch_moves_no_process_of_serve_to_another_database(tmp_path):
    # A deploy that switches `current` from one release to the next, with
    # `recflow serve -c current/config.yaml` running the old one meanwhile.
    out = tmp_path / "runs.txt"
    v1, v2, current = tmp_path / "v1", tmp_path / "v2", tmp_path / "current"
    v1.mkdir()
    v2.mkdir()
    write_config(v1, f'      - action: t_append\n        with: {{file: "{out}"}}\n')
    shutil.copy(v1 / "config.yaml", v2 / "config.yaml")
    current.symlink_to(v1)
    recording = "RE" + "6" * 32

    with running_server(current / "config.yaml", env=ENV) as server:
        worker = _worker_of(server.process.pid)
        committer = children(server.process.pid, COMMITTER)[0]
        (tmp_path / "next").symlink_to(v2)
        os.replace(tmp_path / "next", current)
        # Both children die after the switch and are started again.
        os.kill(worker, signal.SIGKILL)
        os.kill(committer, signal.SIGKILL)
        wait_for(
            lambda: [p for p in children(server.process.pid, WORKER) if p != worker],
            what="a new worker process",
        )
        # The callback the dead committer could not answer is retried, as a
        # provider would after a 503.
        wait_for(lambda: _post(server.callback_url, recording) == 204, what="a 204")
        wait_for(lambda: len(lines(out)) == 1, what="the step")
        steps = wait_for(lambda: settled_steps(v1, recording), what="the step in v1's journal")

    assert [s["state"] for s in steps] == ["done"]
    assert not (v2 / "var").exists(), "a process of serve opened the new release's database"


def test_sigterm_to_the_process_group_starts_no_new_worker_process(tmp_path):
    config = write_config(tmp_path, '      - action: t_append\n        with: {file: "/dev/null"}\n')

    with running_server(config, env=ENV) as server:
        worker = _worker_of(server.process.pid)
        callback = urlsplit(server.callback_url)
        with socket.create_connection((callback.hostname, callback.port)) as slow:
            # A callback still arriving keeps serve in its shutdown for a few
            # seconds, as a busy one would be.
            slow.sendall(
                f"POST {callback.path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n\r\nAccountSid=".encode()
            )
            time.sleep(0.3)
            # What systemd does by default: every process of the group at once.
            os.kill(server.process.pid, signal.SIGTERM)
            os.kill(worker, signal.SIGTERM)
            server.process.wait(60)
    log = server.log()

    assert "starting a new one" not in log
    assert children(server.process.pid, WORKER) == []


def test_healthz_says_when_the_worker_process_is_stopped(tmp_path):
    config = write_config(tmp_path, '      - action: t_append\n        with: {file: "/dev/null"}\n')

    with running_server(config, env=ENV) as server:
        worker = _worker_of(server.process.pid)
        os.kill(worker, signal.SIGSTOP)
        try:
            stopped = wait_for(
                lambda: (
                    (h := httpx.get(server + "/healthz", timeout=30).json())["status"] == "degraded"
                    and h
                ),
                timeout=30,
                what="/healthz to see the silence",
            )
        finally:
            os.kill(worker, signal.SIGCONT)
        wait_for(
            lambda: httpx.get(server + "/healthz", timeout=30).json() == {"status": "ok"},
            what="/healthz to see it again",
        )

    assert stopped["workers"].startswith(
        f"no sign of life from the worker process (pid {worker}) for "
    )


def test_sigterm_ends_a_stopped_worker_process_without_killing_it(tmp_path):
    config = write_config(tmp_path, '      - action: t_append\n        with: {file: "/dev/null"}\n')

    with running_server(config, env=ENV) as server:
        worker = _worker_of(server.process.pid)
        os.kill(worker, signal.SIGSTOP)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(60)
    log = server.log()

    assert "the worker process did not stop" not in log
    assert not alive(worker)


def test_kill_9_of_serve_ends_its_worker_process_and_the_step_runs_again(tmp_path):
    out = tmp_path / "runs.txt"
    slow = f'      - action: t_append\n        with: {{file: "{out}", sleep: 3}}\n'
    config = write_config(tmp_path, slow, workers=1)
    recording = "RE" + "3" * 32

    with running_server(config, env=ENV) as server:
        worker = _worker_of(server.process.pid)
        assert _post(server.callback_url, recording) == 204
        wait_for(lambda: _steps(tmp_path, recording)[0]["state"] == "running", what="the step")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()

    wait_for(lambda: not alive(worker), timeout=10, what="the orphaned worker to end")
    assert lines(out) == [], "the step finished although its worker was to die with serve"
    with running_server(config, env=ENV):
        steps = wait_for(
            lambda: (s := settled_steps(tmp_path, recording)) and s, what="the step to run again"
        )
    assert [(s["state"], s["attempts"]) for s in steps] == [("done", 2)]
    assert len(lines(out)) == 1


def test_sigterm_lets_the_running_step_finish(tmp_path):
    out = tmp_path / "runs.txt"
    slow = f'      - action: t_append\n        with: {{file: "{out}", sleep: 2}}\n'
    config = write_config(tmp_path, slow, workers=1)
    recording = "RE" + "4" * 32

    with running_server(config, env=ENV) as server:
        worker = _worker_of(server.process.pid)
        assert _post(server.callback_url, recording) == 204
        wait_for(lambda: _steps(tmp_path, recording)[0]["state"] == "running", what="the step")
        server.process.send_signal(signal.SIGTERM)
        # uvicorn exits by the signal it stopped on, once shut down.
        assert server.process.wait(60) in (0, -signal.SIGTERM)

    assert not alive(worker)
    assert [s["state"] for s in _steps(tmp_path, recording)] == ["done"]
    assert len(lines(out)) == 1


def settled_steps(tmp_path: Path, recording: str) -> list[dict] | None:
    journal = SqliteJournal(str(tmp_path / "var" / "recflow.db"))
    return settled(journal, make_event(recording).id)
