"""`recflow trigger`: a realistic, signed callback against a running server.

What a user runs to try a config without a phone call: it makes real
audio of the asked duration (speech from espeak-ng, or a tone when
espeak-ng is missing), serves it from a throwaway media server that stands
in for the provider's API (bound to the host and port of the provider's
`api_url`, which a config for local trials points at 127.0.0.1), posts a
callback signed the way the provider signs it, and keeps serving until the
recording was fetched (and deleted, when the matching rules delete it) or
a timeout passes.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hmac
import io
import math
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
import wave
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from recflow import rules, verify
from recflow.config import Config, ProviderConfig
from recflow.errors import RecflowError
from recflow.event import parse_event

SAMPLE_RATE = 8000
SPEECH = (
    "This is a test recording made by recflow trigger. "
    "If you can hear this, the audio was stored and delivered."
)


def make_audio(seconds: float, fmt: str = "wav", *, speech: bool = True) -> bytes:
    """Real audio `seconds` long, as 8 kHz mono WAV or as MP3.

    Speech from espeak-ng padded or cut to length with sox when both are
    installed, else a 440 Hz tone from Python's wave module. MP3 needs
    ffmpeg (or sox with MP3 support).
    """
    wav = None
    if speech and shutil.which("espeak-ng") and shutil.which("sox"):
        wav = _speech(seconds)
    if wav is None:
        wav = tone(seconds)
    if fmt == "wav":
        return wav
    if fmt == "mp3":
        return _to_mp3(wav)
    raise ValueError(f"unknown audio format {fmt!r}")


def tone(seconds: float, frequency: float = 440.0) -> bytes:
    """A sine tone as 16-bit 8 kHz mono WAV, built without any tool."""
    frames = int(seconds * SAMPLE_RATE)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    samples = struct.pack(f"<{frames}h", *(int(12000 * math.sin(step * i)) for i in range(frames)))
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(samples)
    return out.getvalue()


def _speech(seconds: float) -> bytes | None:
    with tempfile.TemporaryDirectory(prefix="recflow-audio-") as tmp:
        spoken, fitted = Path(tmp, "spoken.wav"), Path(tmp, "fitted.wav")
        try:
            subprocess.run(
                ["espeak-ng", "-w", str(spoken), SPEECH], check=True, capture_output=True
            )
            subprocess.run(
                ["sox", str(spoken), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                 str(fitted), "pad", "0", str(seconds), "trim", "0", str(seconds)],
                check=True,
                capture_output=True,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        return fitted.read_bytes()


def _to_mp3(wav: bytes) -> bytes:
    with tempfile.TemporaryDirectory(prefix="recflow-audio-") as tmp:
        source, target = Path(tmp, "in.wav"), Path(tmp, "out.mp3")
        source.write_bytes(wav)
        if shutil.which("ffmpeg"):
            command = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source),
                       "-codec:a", "libmp3lame", "-b:a", "32k", str(target)]  # fmt: skip
        else:
            command = ["sox", str(source), str(target)]
        subprocess.run(command, check=True, capture_output=True)
        return target.read_bytes()


class TriggerError(RecflowError):
    """`recflow trigger` cannot run as asked (a config that does not allow it)."""


@dataclasses.dataclass
class Sandbox:
    """What the throwaway media server saw: whole media fetches and deletions."""

    account_sid: str
    api_token: str
    recording_sid: str
    wav: bytes
    mp3: bytes | None = None
    fetched: int = 0
    fetched_bytes: int = 0
    deleted: bool = False
    refused: int = 0
    log: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Callback:
    """A callback ready to post: where, what, and the headers that sign it."""

    url: str
    params: dict[str, str]
    headers: dict[str, str]

    @property
    def body(self) -> str:
        return urlencode(self.params)


def build_callback(
    config: Config,
    provider: ProviderConfig,
    status: str,
    duration: int,
    url: str | None = None,
) -> Callback:
    """A realistic callback of `provider` for a new recording, signed with its first key."""
    if provider.kind == "twilio":
        call_sid, recording_sid = "CA" + uuid.uuid4().hex, "RE" + uuid.uuid4().hex
    else:
        call_sid, recording_sid = str(uuid.uuid4()), str(uuid.uuid4())
    completed = status == "completed"
    params = {
        "AccountSid": provider.account_sid,
        "CallSid": call_sid,
        "RecordingSid": recording_sid,
        "RecordingUrl": (
            f"{provider.api_url}/Accounts/{provider.account_sid}/Recordings/{recording_sid}"
        ),
        "RecordingStatus": status,
        "RecordingDuration": str(duration if completed else 0 if status == "absent" else -1),
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
        "RecordingStartTime": format_datetime(datetime.now(UTC), usegmt=True),
    }
    if status == "absent" and provider.kind == "twilio":
        params["ErrorCode"] = "16101"
    target = url or callback_url(config)
    signed_url = target
    if config.server.public_url and url is None:
        signed_url = config.server.public_url
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if provider.signing_keys:
        signature = verify.form_signature(
            signed_url, list(params.items()), provider.signing_keys[0]
        )
        headers["X-Twilio-Signature"] = signature
        if provider.kind == "signalwire":
            headers["X-SignalWire-Signature"] = signature
    return Callback(url=target, params=params, headers=headers)


def callback_url(config: Config) -> str:
    """Where a local `recflow serve` of this config listens for callbacks."""
    host, _, port = config.server.listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{config.server.path}"


def pick_provider(config: Config, name: str | None) -> ProviderConfig:
    if not config.providers:
        raise TriggerError(f"{config.path}: no providers configured")
    if name is None:
        return config.providers[0]
    for provider in config.providers:
        if provider.name == name:
            return provider
    names = ", ".join(p.name for p in config.providers)
    raise TriggerError(f"no provider named {name!r} in {config.path} (have: {names})")


def media_address(provider: ProviderConfig) -> tuple[str, int]:
    """Where the sandbox must listen: the host and port of the provider's `api_url`."""
    parts = urlsplit(provider.api_url)
    host = parts.hostname or ""
    if parts.scheme != "http" or not _is_local(host):
        raise TriggerError(
            f"provider {provider.name}'s api_url is {parts.scheme}://{parts.netloc}: for a"
            " trial, point it at a local address, e.g."
            " api_url: http://127.0.0.1:9000/api/laml/2010-04-01"
        )
    return host, parts.port or 80


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    import ipaddress

    return all(ipaddress.ip_address(str(info[4][0])).is_loopback for info in infos)


def sandbox_app(sandbox: Sandbox) -> Any:
    """The provider's media and delete endpoints for one recording, with Basic auth."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    expected = (
        "Basic " + base64.b64encode(f"{sandbox.account_sid}:{sandbox.api_token}".encode()).decode()
    )

    async def recording(request: Request) -> Response:
        name = request.path_params["name"]
        sid, _, ext = name.partition(".")
        authorization = request.headers.get("authorization", "")
        if not hmac.compare_digest(authorization.encode(), expected.encode()):
            sandbox.refused += 1
            sandbox.log.append(f"refused {request.method} {name}: wrong or missing credentials")
            return JSONResponse({"message": "Authenticate"}, status_code=401)
        if sid != sandbox.recording_sid or sandbox.deleted:
            return JSONResponse({"message": "not found"}, status_code=404)
        if request.method == "DELETE":
            sandbox.deleted = True
            sandbox.log.append(f"recording {sid} deleted")
            return Response(status_code=204)
        if ext == "mp3":
            if sandbox.mp3 is None:
                sandbox.mp3 = _to_mp3(sandbox.wav)
            data, media_type = sandbox.mp3, "audio/mpeg"
        elif ext in ("", "wav"):
            data, media_type = sandbox.wav, "audio/x-wav"
        else:
            return JSONResponse({"sid": sid, "duration": "0"})
        if request.method == "GET":
            sandbox.fetched += 1
            sandbox.fetched_bytes = len(data)
            sandbox.log.append(f"media {name} fetched ({len(data)} bytes)")
        return Response(data, media_type=media_type)

    path = "/{prefix:path}/Accounts/" + sandbox.account_sid + "/Recordings/{name}"
    return Starlette(routes=[Route(path, recording, methods=["GET", "HEAD", "DELETE"])])


@contextlib.contextmanager
def serve_sandbox(sandbox: Sandbox, host: str, port: int) -> Iterator[None]:
    """Run the sandbox with uvicorn in a thread on host:port until the block ends."""
    import uvicorn

    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise TriggerError(f"cannot serve media on {host}:{port}: {exc.strerror}") from None
    config = uvicorn.Config(
        sandbox_app(sandbox), log_level="critical", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def matched_actions(config: Config, callback: Callback) -> list[str]:
    """The actions of the steps of every rule this callback matches, in order."""
    event = parse_event(callback.params)
    return [step.action for rule in rules.match(config.rules, event) for step in rule.steps]


def run(
    config: Config,
    status: str,
    *,
    duration: int = 5,
    url: str | None = None,
    provider_name: str | None = None,
    timeout: float = 60.0,
    echo: Callable[[str], None] = print,
) -> bool:
    """Send one callback and serve its media; True when everything expected happened."""
    provider = pick_provider(config, provider_name)
    callback = build_callback(config, provider, status, duration, url)
    has_media = status == "completed"
    sandbox = Sandbox(
        account_sid=provider.account_sid,
        api_token=provider.api_token,
        recording_sid=callback.params["RecordingSid"],
        wav=make_audio(duration) if has_media else b"",
    )
    host, port = media_address(provider) if has_media else ("", 0)
    with serve_sandbox(sandbox, host, port) if has_media else contextlib.nullcontext():
        if has_media:
            echo(f"serving {duration} s of audio ({len(sandbox.wav)} bytes) at"
                 f" {callback.params['RecordingUrl']}")  # fmt: skip
        echo(f"POST {callback.url}")
        for name, value in callback.params.items():
            echo(f"  {name}={value}")
        try:
            answer = httpx.post(
                callback.url, content=callback.body, headers=callback.headers, timeout=15
            )
        except httpx.ConnectError as exc:
            raise TriggerError(
                f"cannot reach {callback.url}: {exc} (is recflow serve running?)"
            ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise TriggerError(f"cannot post to {callback.url}: {exc}") from None
        echo(f"answer: {answer.status_code} {answer.text.strip()[:200]}".rstrip())
        if not answer.is_success:
            return False
        actions = matched_actions(config, callback)
        if not has_media or not actions:
            if not actions:
                echo("no rule matches this callback: nothing will fetch the media")
            return True
        return _wait(sandbox, "delete" in actions, timeout, echo)


def _wait(sandbox: Sandbox, delete: bool, timeout: float, echo: Callable[[str], None]) -> bool:
    echo("waiting for the media to be fetched" + (" and deleted" if delete else ""))
    shown = 0
    deadline = time.monotonic() + timeout
    next_tick = time.monotonic() + 5
    while True:
        for line in sandbox.log[shown:]:
            echo("  " + line)
        shown = len(sandbox.log)
        if sandbox.fetched and (sandbox.deleted or not delete):
            echo("done")
            return True
        now = time.monotonic()
        if now >= deadline:
            missing = "fetched" if not sandbox.fetched else "deleted"
            echo(f"gave up after {timeout:g} s: the recording was not {missing}"
                 " (see recflow events)")  # fmt: skip
            return False
        if now >= next_tick:
            echo(f"  still waiting ({int(deadline - now)} s left)")
            next_tick = now + 5
        time.sleep(0.1)
