"""The main job end to end, as a user runs it: `recflow serve`, a signed
callback in, the audio archived byte for byte, a real mail with the audio
attached, the provider's copy deleted, and the journal complete.

Real parts throughout: the server process, the provider emulator serving
real audio with Basic auth, aiosmtpd receiving apprise's mail, a callback
signed with the official `twilio` validator.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator import ACCOUNT, TOKEN, Emulator
from mail_util import Mailbox, attachments
from serve_util import running_server, signed_form

KEY = "PSK_main_job_5e1f"
SID = "5a6b7c8d-90ad-4998-b792-e98472af0001"
ENV = {"TEST_API_TOKEN": TOKEN, "TEST_SIGNING_KEY": KEY}

CONFIG = """
server:
  path: /recordings
providers:
  - name: main
    kind: signalwire
    space: example.signalwire.com
    account_sid: {account}
    api_token: ${{TEST_API_TOKEN}}
    signing_key: ${{TEST_SIGNING_KEY}}
    api_url: {api_url}
backend: sqlite:///./var/recflow.db
workers: 2
rules:
  - name: archive-and-mail
    when: {{status: completed, duration: {{gte: 2}}}}
    steps:
      - id: archive
        action: store
        with:
          to: "file://./var/recordings/{{{{ event.account_sid }}}}/\\
            {{{{ event.recording_sid }}}}.wav"
        retry: {{attempts: 3, backoff: 0.2}}
      - action: notify
        with:
          to: ["{mail_url}"]
          title: "New recording, {{{{ event.duration }}}} s"
          body: "Stored at {{{{ steps.archive.url }}}}"
          attach: true
      - action: delete
"""


def events(config: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", "from recflow.cli import main; main()", "events", "--json",
         "-c", str(config)],
        capture_output=True, text=True, check=True, env={**os.environ, **ENV},
    )  # fmt: skip
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def settled(config: Path, steps: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = events(config)
        finished = [s for s in rows[0]["steps"] if s["state"] in ("done", "failed")] if rows else []
        if len(finished) == steps:
            return rows[0]
        time.sleep(0.2)
    raise AssertionError(f"steps did not finish: {events(config)}")


@pytest.mark.slow
def test_a_completed_recording_is_archived_mailed_and_deleted(
    tmp_path: Path, emulator: Emulator, mailbox: tuple[Mailbox, str]
) -> None:
    handler, mail_url = mailbox
    recording = emulator.add_recording(SID, seconds=3.0, not_found_first=1)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(account=ACCOUNT, api_url=emulator.api_url, mail_url=mail_url))

    with running_server(config, env=ENV) as url:
        pairs = [
            ("AccountSid", ACCOUNT),
            ("CallSid", "5a6b7c8d-90ad-4998-b792-e98472afca11"),
            ("RecordingSid", SID),
            ("RecordingUrl", emulator.recording_url(SID)),
            ("RecordingStatus", "completed"),
            ("RecordingDuration", "3"),
            ("RecordingChannels", "1"),
            ("RecordingSource", "RecordVerb"),
        ]
        body, headers = signed_form(url.callback_url, pairs, KEY)
        answer = httpx.post(url.callback_url, content=body, headers=headers, trust_env=False)
        assert answer.status_code == 204
        assert answer.content == b""
        event = settled(config, steps=3)

    assert [(s["action"], s["state"]) for s in event["steps"]] == [
        ("store", "done"),
        ("notify", "done"),
        ("delete", "done"),
    ]
    # The 404 the provider answers right after the callback was retried.
    assert event["steps"][0]["attempts"] == 2

    stored = tmp_path / "var" / "recordings" / ACCOUNT / f"{SID}.wav"
    assert stored.read_bytes() == recording.wav
    outputs = event["steps"][0]["outputs"]
    assert outputs["bytes"] == len(recording.wav)
    assert outputs["sha256"] == hashlib.sha256(recording.wav).hexdigest()

    (message,) = handler.messages
    assert message["Subject"] == "New recording, 3 s"
    assert attachments(message) == {f"{SID}.wav": recording.wav}

    assert emulator.deleted == [SID]
    fetched = [r for r in emulator.media_requests(SID) if r.method == "GET"]
    assert all(r.headers.get("authorization", "").startswith("Basic ") for r in fetched)
