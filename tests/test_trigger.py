"""`recflow trigger`: the callback it builds, the sandbox it serves, and a full run."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import wave
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from emulator import serve_app
from port_util import free_port
from serve_util import running_server

from recflow import trigger, verify
from recflow.config import Config, ProviderConfig, ServerConfig
from recflow.errors import ActionError
from recflow.media import open_media

ACCOUNT = "b3877c40-da60-4998-90ad-b792e98472af"
TOKEN = "PT-trigger-token"
KEY = "PSK_trigger_key"


def make_config(kind: str = "signalwire", port: int = 9, **server: object) -> Config:
    provider = ProviderConfig(
        name="main",
        kind=kind,
        account_sid=ACCOUNT,
        api_token=TOKEN,
        signing_keys=(KEY, "PSK_older"),
        api_url=f"http://127.0.0.1:{port}/api/laml/2010-04-01",
    )
    return Config(
        path="config.yaml",
        server=ServerConfig(listen="0.0.0.0:8085", **server),  # type: ignore[arg-type]
        providers=(provider,),
        backend="sqlite:///x.db",
        workers=1,
        rules=(),
        secrets=frozenset(),
    )


@pytest.mark.parametrize("seconds", [1, 3])
def test_make_audio_is_real_wav_of_that_length(seconds: int) -> None:
    with wave.open(BytesIO(trigger.make_audio(seconds))) as reader:
        assert reader.getnchannels() == 1
        assert reader.getnframes() / reader.getframerate() == pytest.approx(seconds, abs=0.01)


def test_make_audio_mp3(tmp_path: Path) -> None:
    data = trigger.make_audio(2, "mp3")
    path = tmp_path / "a.mp3"
    path.write_bytes(data)

    # An ID3 tag or an MPEG audio frame sync for Layer III, as ffmpeg or sox write it.
    assert data[:3] == b"ID3" or (data[0] == 0xFF and data[1] & 0xE6 == 0xE2)
    seconds = subprocess.run(
        ["sox", "--i", "-D", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert 1.5 < float(seconds) < 2.5


@pytest.mark.parametrize(
    ("kind", "headers"),
    [
        pytest.param("signalwire", {"X-Twilio-Signature", "X-SignalWire-Signature"}, id="sw"),
        pytest.param("twilio", {"X-Twilio-Signature"}, id="twilio"),
    ],
)
def test_callback_is_signed_and_realistic(kind: str, headers: set[str]) -> None:
    config = make_config(kind)
    callback = trigger.build_callback(config, config.providers[0], "completed", 7)
    assert callback.url == "http://127.0.0.1:8085/recordings"
    params = callback.params
    assert params["AccountSid"] == ACCOUNT
    assert params["RecordingDuration"] == "7"
    assert params["RecordingUrl"] == (
        f"http://127.0.0.1:9/api/laml/2010-04-01/Accounts/{ACCOUNT}/Recordings/"
        + params["RecordingSid"]
    )
    if kind == "twilio":
        assert params["RecordingSid"].startswith("RE") and len(params["RecordingSid"]) == 34
    else:
        assert len(params["RecordingSid"]) == 36 and params["RecordingSid"].count("-") == 4
    assert headers <= set(callback.headers)
    pairs = parse_qsl(callback.body, keep_blank_values=True)
    form = "application/x-www-form-urlencoded"
    raw = callback.body.encode()
    assert verify.is_valid(callback.url, callback.headers, form, raw, pairs, [KEY])
    assert not verify.is_valid(callback.url, callback.headers, form, raw, pairs, ["PSK_older"])


def test_callback_signed_over_public_url() -> None:
    config = make_config(public_url="https://hooks.example.com/recordings")
    callback = trigger.build_callback(config, config.providers[0], "absent", 0)
    pairs = parse_qsl(callback.body)
    form = "application/x-www-form-urlencoded"
    raw = callback.body.encode()
    assert callback.url == "http://127.0.0.1:8085/recordings"
    assert verify.is_valid(config.server.public_url, callback.headers, form, raw, pairs, [KEY])


def test_refuses_a_remote_api_url() -> None:
    provider = dataclasses.replace(
        make_config().providers[0], api_url="https://example.signalwire.com/api/laml/2010-04-01"
    )
    with pytest.raises(trigger.TriggerError, match="point it at a local address"):
        trigger.media_address(provider)


def test_sandbox_serves_media_only_with_credentials() -> None:
    wav = trigger.make_audio(1)
    sandbox = trigger.Sandbox(account_sid=ACCOUNT, api_token=TOKEN, recording_sid="r1", wav=wav)
    with serve_app(trigger.sandbox_app(sandbox)) as base:
        provider = dataclasses.replace(
            make_config().providers[0], api_url=base + "/api/laml/2010-04-01"
        )
        url = f"{provider.api_url}/Accounts/{ACCOUNT}/Recordings/r1"
        with open_media(url, provider, "wav") as media:
            assert b"".join(media.iter_bytes()) == wav
        with pytest.raises(ActionError, match="401"):
            open_media(url, dataclasses.replace(provider, api_token="no"), "wav").__enter__()
    assert sandbox.fetched == 1
    assert sandbox.refused == 1


CONFIG = """
server:
  listen: 127.0.0.1:8080
  path: /recordings
providers:
  - name: main
    kind: signalwire
    space: example.signalwire.com
    account_sid: {account}
    api_token: {token}
    signing_key: {key}
    api_url: http://127.0.0.1:{media_port}/api/laml/2010-04-01
backend: sqlite:///./var/recflow.db
workers: 2
rules:
  - name: keep
    when: {{status: completed}}
    steps:
      - id: archive
        action: store
        with:
          to: "file://./var/rec/{{{{ event.recording_sid }}}}.wav"
      - action: delete
"""


@pytest.mark.slow
def test_trigger_against_a_running_server(tmp_path: Path) -> None:
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        CONFIG.format(account=ACCOUNT, token=TOKEN, key=KEY, media_port=free_port())
    )
    with running_server(config_file) as url:
        done = subprocess.run(
            [sys.executable, "-c", "from recflow.cli import main; main()", "trigger",
             "completed", "--duration", "2", "--url", url.callback_url,
             "-c", str(config_file), "--timeout", "60"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "answer: 204" in done.stdout
    assert "fetched" in done.stdout
    assert "deleted" in done.stdout
    (stored,) = (tmp_path / "var" / "rec").glob("*.wav")
    with wave.open(str(stored)) as reader:
        assert reader.getnframes() / reader.getframerate() == pytest.approx(2, abs=0.01)


def _trigger_absent(tmp_path: Path, url: str, *more: str) -> subprocess.CompletedProcess[str]:
    """`recflow trigger absent --url URL [MORE...]` in a process of its own."""
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        CONFIG.format(account=ACCOUNT, token=TOKEN, key=KEY, media_port=free_port())
    )
    return subprocess.run(
        [sys.executable, "-c", "from recflow.cli import main; main()", "trigger", "absent",
         "--url", url, "-c", str(config_file), *more],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_trigger_reports_an_unreachable_server(tmp_path: Path) -> None:
    done = _trigger_absent(tmp_path, f"http://127.0.0.1:{free_port()}/recordings")

    assert done.returncode == 1
    assert "is recflow serve running?" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("timeout", "says"),
    [
        pytest.param("nan", "nan is not a number of seconds", id="nan"),
        pytest.param("inf", "is not in the range", id="inf"),
    ],
)
def test_trigger_refuses_a_timeout_that_is_no_number_of_seconds(
    tmp_path: Path, timeout: str, says: str
) -> None:
    done = _trigger_absent(tmp_path, "http://127.0.0.1:9/recordings", "--timeout", timeout)

    assert done.returncode == 2
    assert "Invalid value for '--timeout'" in done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("http://127.0.0.1:8093:1/r", "is not a URL", id="two-ports"),
        pytest.param("http://[::1", "is not a URL", id="unclosed-ipv6"),
        pytest.param("ftp://127.0.0.1/r", "give an http:// or https:// URL", id="ftp"),
        pytest.param("127.0.0.1:8080/r", "give an http:// or https:// URL", id="no-scheme"),
        pytest.param(" http://127.0.0.1:8080/r", "has a space in it", id="leading-space"),
        pytest.param("http://exa mple.com/r", "has a space in it", id="space-in-host"),
        pytest.param("http://127.0.0.1:0/r", "port 0", id="port-0"),
    ],
)
def test_trigger_refuses_a_url_it_cannot_post_to_in_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    done = _trigger_absent(tmp_path, url)

    assert done.returncode == 2
    assert f"Invalid value for '--url': {url!r}" in done.stderr
    assert says in done.stderr
    assert "Traceback" not in done.stderr
