"""`recflow serve` end to end: the real command, real HTTP, the real pipeline."""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from serve_util import running_server, signed_form

KEY = "PSK_serve_test_0d9c8b7a"
TOKEN = "PT_serve_token_6f5e4d3c"
ACCOUNT = "b3877c40-da60-4998-90ad-b792e98472af"
ENV = {"TEST_SIGNING_KEY": KEY, "TEST_API_TOKEN": TOKEN}

CALLBACK = [
    ("AccountSid", ACCOUNT),
    ("CallSid", "b3877c40-da60-4998-90ad-b792e98472ca"),
    ("RecordingSid", "5a1b2c3d-90ad-4998-b792-e984a1b2c3d4"),
    ("RecordingUrl", "https://example.signalwire.com/api/laml/2010-04-01/Recordings/5a1b"),
    ("RecordingStatus", "completed"),
    ("RecordingDuration", "7"),
]

CONFIG = """\
server:
  listen: 127.0.0.1:8080
  path: /recordings
providers:
  - name: main
    kind: signalwire
    space: example.signalwire.com
    account_sid: {account}
    api_token: ${{TEST_API_TOKEN}}
    signing_key: ${{TEST_SIGNING_KEY}}
backend: sqlite:///./var/recflow.db
workers: 1
rules:
  - name: forward
    when: {{status: completed}}
    steps:
      - action: webhook
        with: {{url: "{hook}"}}
"""


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
        length = int(self.headers.get("Content-Length", 0))
        type(self).received.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def hook() -> Iterator[tuple[str, list[bytes]]]:
    """A local HTTP endpoint the rule's webhook step posts to."""
    received: list[bytes] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def config_file(tmp_path: Path, hook: tuple[str, list[bytes]]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(account=ACCOUNT, hook=hook[0]))
    return path


def _events(config_file: Path) -> list[dict]:
    done = subprocess.run(
        [sys.executable, "-c", "from recflow.cli import main; main()", "events", "--json"],
        env={**os.environ, **ENV, "RECFLOW_CONFIG": str(config_file)},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_serve_end_to_end(config_file: Path, hook: tuple[str, list[bytes]]) -> None:
    _, received = hook
    with running_server(config_file, env=ENV) as url, httpx.Client(trust_env=False) as client:
        body, headers = signed_form(url.callback_url, CALLBACK, KEY)
        signed = client.post(url.callback_url, content=body, headers=headers)
        duplicate = client.post(url.callback_url, content=body, headers=headers)
        forged_body, forged_headers = signed_form(url.callback_url, CALLBACK, "PSK_forged")
        forged = client.post(url.callback_url, content=forged_body, headers=forged_headers)
        missing = [pair for pair in CALLBACK if pair[0] != "RecordingUrl"]
        bad_body, bad_headers = signed_form(url.callback_url, missing, KEY)
        malformed = client.post(url.callback_url, content=bad_body, headers=bad_headers)
        health = client.get(url + "/healthz")

        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        events = _events(config_file)
        log = url.log()

    # uvicorn re-raises SIGTERM once it has shut down gracefully.
    assert url.process.returncode in (0, -signal.SIGTERM)
    assert "recflow serve stopped: backend closed" in url.log()
    assert (signed.status_code, signed.content) == (204, b"")
    assert (duplicate.status_code, duplicate.content) == (204, b"")
    assert (forged.status_code, forged.json()) == (403, {"error": "forbidden"})
    assert malformed.status_code == 400
    assert "RecordingUrl" in malformed.json()["error"]
    assert (health.status_code, health.json()) == (200, {"status": "ok"})

    assert len(received) == 1
    assert json.loads(received[0])["event"]["recording_sid"] == CALLBACK[2][1]
    [event] = events
    assert event["recording_sid"] == CALLBACK[2][1]
    assert event["rules"] == ["forward"]
    assert KEY not in log and TOKEN not in log
    assert signed.headers["x-request-id"] in log


def test_serve_refuses_an_unknown_account_and_gets(config_file: Path) -> None:
    pairs = [("AccountSid", "someone-else"), *CALLBACK[1:]]
    with running_server(config_file, env=ENV) as url, httpx.Client(trust_env=False) as client:
        body, headers = signed_form(url.callback_url, pairs, KEY)
        unknown = client.post(url.callback_url, content=body, headers=headers)
        query = url.callback_url + "?" + urlencode(CALLBACK)
        get_unsigned = client.get(query)

    assert unknown.status_code == 403
    assert get_unsigned.status_code == 403


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--listen", "nowhere"], "is not HOST:PORT", id="bad-listen"),
        pytest.param(["--listen", ""], "is not HOST:PORT", id="empty-listen"),
        pytest.param(["--listen", "[::1:8080"], "is not HOST:PORT", id="unclosed-bracket"),
        pytest.param(["--workers", "-1"], "--workers", id="negative-workers"),
        pytest.param(["--workers", "100000"], "--workers", id="absurd-workers"),
        pytest.param(["--listen", "127.0.0.1:BUSY"], "Address already in use", id="address-in-use"),
        pytest.param(["-c", "/nonexistent/config.yaml"], "cannot read", id="missing-config"),
    ],
)
def test_serve_bad_arguments_fail_in_one_line(
    config_file: Path, args: list[str], message: str
) -> None:
    command = [sys.executable, "-c", "from recflow.cli import main; main()", "serve"]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        args = [a.replace("BUSY", str(busy.getsockname()[1])) for a in args]
        done = subprocess.run(
            [*command, "-c", str(config_file), *args],
            env={**os.environ, **ENV},
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
