"""Secrets never leave the process: a realistic flow, then a scan of everything written.

The config takes every credential from the environment. A real
`recflow serve` gets a signed callback whose rules store the audio
(from the emulator, with the provider's token), post a webhook and send
mail through URLs holding passwords (both unreachable, so their errors
mention those URLs), and run a plugin action that crashes with a secret
in its message. Then `recflow events --json`, `events show`, `match`,
and `check` on a broken config run as a user would. Finally every byte
written is scanned for every secret: the server's logs, every command's
output, the SQLite files, the stored audio and anything else in the
directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from emulator import ACCOUNT, TOKEN, Emulator
from pipeline_util import ensure_test_plugin
from serve_util import running_server, signed_form

SECRETS = {
    "SW_TOKEN": TOKEN,  # the emulator accepts only its own token
    "SW_SIGNING_KEY": "PSKsigningkey4f7a9c2e",
    "HOOK_PASSWORD": "hookpassword8d3b1e6f",
    "WEBHOOK_SECRET": "webhooksecret2c9e7a1d",
    "SMTP_PASSWORD": "smtppassword5a1f3c8b",
    "CRASH_SECRET": "crashsecret7e2d4b9a",
    "WORKERS_SECRET": "workerssecret1b8c6d3f",
}
SID = "5ec2e75a-0b1c-4d2e-8f3a-4b5c6d7e8f90"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _config(emulator: Emulator, dead: int) -> str:
    return f"""\
server:
  path: /recordings
providers:
  - name: main
    kind: signalwire
    space: example.signalwire.com
    account_sid: {ACCOUNT}
    api_token: ${{SW_TOKEN}}
    signing_key: ${{SW_SIGNING_KEY}}
    api_url: {emulator.api_url}
backend: sqlite:///./var/recflow.db
workers: 2
rules:
  - name: archive
    steps:
      - id: archive
        action: store
        with:
          to: "file://./var/recordings/{{{{ event.recording_sid | filename }}}}.wav"
      - action: webhook
        retry: {{attempts: 1}}
        with:
          url: "http://hookuser:${{HOOK_PASSWORD}}@127.0.0.1:{dead}/hook"
          secret: ${{WEBHOOK_SECRET}}
  - name: mail
    steps:
      - action: notify
        retry: {{attempts: 1}}
        with:
          to: ["mailto://ops:${{SMTP_PASSWORD}}@127.0.0.1:{dead}?to=ops@example.com&from=rf@ex.com"]
          body: "Stored at {{{{ event.recording_sid }}}}"
          timeout: 5
  - name: crash
    steps:
      - action: t_crash
        retry: {{attempts: 1}}
        with:
          message: "plugin bug while holding ${{CRASH_SECRET}}"
"""


def _recflow(
    directory: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from recflow.cli import main; main()", *args],
        cwd=directory,
        env={**os.environ, **SECRETS},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _settled(directory: Path) -> list[dict[str, Any]]:
    """`recflow events --json` once every step is done or failed."""
    deadline = time.monotonic() + 60
    while True:
        result = _recflow(directory, "events", "--json", "-c", "config.yaml")
        rows = json.loads(result.stdout) if result.returncode == 0 else []
        states = [s["state"] for row in rows for s in row["steps"]]
        if len(states) == 4 and all(state in ("done", "failed") for state in states):
            return rows
        if time.monotonic() > deadline:
            pytest.fail(f"steps did not settle: {states} {result.stderr}")
        time.sleep(0.3)


@pytest.mark.slow
def test_no_secret_is_written_anywhere(emulator: Emulator, tmp_path: Path) -> None:
    ensure_test_plugin()
    emulator.add_recording(SID)
    dead = _closed_port()
    config = tmp_path / "config.yaml"
    config.write_text(_config(emulator, dead))
    config.chmod(0o600)
    pairs = [
        ("AccountSid", ACCOUNT),
        ("CallSid", "b3877c40-da60-4998-90ad-b792e98472ca"),
        ("RecordingSid", SID),
        ("RecordingUrl", emulator.recording_url(SID)),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "1"),
    ]
    outputs: list[str] = []

    with running_server(config, env=SECRETS) as url:
        body, headers = signed_form(url.callback_url, pairs, SECRETS["SW_SIGNING_KEY"])
        import httpx

        answer = httpx.post(url.callback_url, content=body, headers=headers, timeout=10)
        assert answer.status_code == 204
        rows = _settled(tmp_path)
        shown = _recflow(tmp_path, "events", "show", rows[0]["id"], "-c", "config.yaml")
        outputs += [shown.stdout, shown.stderr]
        text = _recflow(tmp_path, "events", "-c", "config.yaml")
        outputs += [text.stdout, text.stderr]
        server_log = url.log() + url.stdout_path.read_text()

    states = {(s["rule"], s["action"]): s for s in rows[0]["steps"]}
    assert states[("archive", "store")]["state"] == "done"
    for failing in (("archive", "webhook"), ("mail", "notify"), ("crash", "t_crash")):
        assert states[failing]["state"] == "failed"
        assert states[failing]["error"]
    # The errors still say what went wrong, with the secret masked.
    assert "hookuser:***@127.0.0.1" in states[("archive", "webhook")]["error"]
    assert "***" in states[("crash", "t_crash")]["error"]

    payload = tmp_path / "payload.form"
    payload.write_text(urlencode(pairs))
    for args in (["match", str(payload)], ["match", "--json", str(payload)]):
        result = _recflow(tmp_path, *args, "-c", "config.yaml")
        assert result.returncode == 0, result.stderr
        outputs += [result.stdout, result.stderr]

    broken = tmp_path / "broken.yaml"
    broken.write_text(
        _config(emulator, dead).replace("workers: 2", "workers: ${WORKERS_SECRET}")
        + "      - action: no_such_action\n        with: {to: '${SMTP_PASSWORD}'}\n"
    )
    checked = _recflow(tmp_path, "check", "-c", str(broken))
    assert checked.returncode == 1
    assert "workers" in checked.stderr
    outputs += [checked.stdout, checked.stderr]

    written = {"server log": server_log, "commands": "\n".join(outputs)}
    for path in sorted(tmp_path.rglob("*")):
        if path.is_file() and path.name not in ("config.yaml", "broken.yaml"):
            written[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    assert any(name.endswith(".wav") for name in written)
    assert any(name.startswith("var/recflow.db") for name in written)
    leaks = [
        (name, where)
        for name, secret in SECRETS.items()
        for where, text in written.items()
        if secret in text
    ]
    assert leaks == []
