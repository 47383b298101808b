"""A stand-in for the provider's REST API, served for real on 127.0.0.1.

It speaks the compatibility API's paths (SignalWire's `/api/laml/...` and
Twilio's `/2010-04-01/...`): recording media (WAV at the bare URL and
`.wav`, MP3 at `.mp3`, metadata at `.json`), recording list and delete,
and `Messages.json` for SMS. Each recording can misbehave the ways real
providers do (404 for a while, 500, wrong credentials, JSON where audio
was expected, a connection cut mid-transfer, redirects), so the actions
are tested against real HTTP rather than mocks.

Use the `emulator` fixture of `tests/conftest.py`, or `running_emulator()`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from recflow.config import ProviderConfig
from recflow.context import StepContext
from recflow.event import Event
from recflow.trigger import make_audio

ACCOUNT = "b3877c40-da60-4998-90ad-b792e98472af"
TOKEN = "PTemulator-token-0123456789"
LAML = "/api/laml/2010-04-01"

_AUDIO_CACHE: dict[tuple[float, str], bytes] = {}


def audio(seconds: float = 1.0, fmt: str = "wav") -> bytes:
    """Real audio (a tone: fast and deterministic), cached per length and format."""
    key = (seconds, fmt)
    if key not in _AUDIO_CACHE:
        _AUDIO_CACHE[key] = make_audio(seconds, fmt, speech=False)
    return _AUDIO_CACHE[key]


@dataclasses.dataclass
class Recording:
    """One recording and how the emulator answers for it.

    - `not_found_first`: answer 404 to the first N media GETs (not ready).
    - `status`: answer this status to every media request (401, 500...).
    - `body`: `"audio"`, or `"json"` / `"xml"` with a 200 error document.
    - `cut_after`: announce the full length, send this many bytes, then
      drop the connection.
    - `redirect_to`: answer media GETs with a 302 to this URL.
    - `size`: a synthetic WAV of exactly this many bytes, generated while
      streaming (for big transfers); `wav` is ignored then.
    - `delete_status`: answer DELETE with this instead of 204.
    """

    sid: str
    account: str = ACCOUNT
    wav: bytes = b""
    mp3: bytes = b""
    auth: bool = True
    not_found_first: int = 0
    status: int | None = None
    body: str = "audio"
    cut_after: int | None = None
    redirect_to: str | None = None
    size: int | None = None
    delete_status: int | None = None
    media_gets: int = 0


@dataclasses.dataclass
class Logged:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


class Emulator:
    """The emulator's state; `base_url` is where it listens."""

    def __init__(self) -> None:
        self.base_url = ""
        self.token = TOKEN
        self.recordings: dict[tuple[str, str], Recording] = {}
        self.requests: list[Logged] = []
        self.deleted: list[str] = []
        self.messages: list[dict[str, str]] = []
        self.hook_status: list[int] = []
        self.app = Starlette(
            routes=[
                Route(LAML + "/Accounts/{account}/Recordings.json", self._list, methods=["GET"]),
                Route(
                    LAML + "/Accounts/{account}/Recordings/{name}",
                    self._recording,
                    methods=["GET", "HEAD", "DELETE"],
                ),
                Route(LAML + "/Accounts/{account}/Messages.json", self._message, methods=["POST"]),
                Route(
                    "/2010-04-01/Accounts/{account}/Messages.json", self._message, methods=["POST"]
                ),
                Route("/hook", self._hook, methods=["POST"]),
                Route("/files/{name}", self._file, methods=["GET", "HEAD"]),
            ]
        )

    @property
    def api_url(self) -> str:
        return self.base_url + LAML

    def reset(self) -> None:
        self.token = TOKEN
        self.recordings.clear()
        self.requests.clear()
        self.deleted.clear()
        self.messages.clear()
        self.hook_status.clear()

    def provider(self, **changes: Any) -> ProviderConfig:
        """A SignalWire provider whose API is this emulator."""
        values: dict[str, Any] = {
            "name": "emulated",
            "kind": "signalwire",
            "account_sid": ACCOUNT,
            "api_token": TOKEN,
            "signing_keys": ("PSK_emulator",),
            "api_url": self.api_url,
            "space": None,
        }
        values.update(changes)
        return ProviderConfig(**values)

    def add_recording(self, sid: str, seconds: float = 1.0, **options: Any) -> Recording:
        """Serve a recording of real audio; `options` are `Recording` fields."""
        if "wav" not in options:
            options["wav"] = audio(seconds, "wav")
        if "mp3" not in options:
            options["mp3"] = audio(seconds, "mp3")
        recording = Recording(sid=sid, **options)
        self.recordings[(recording.account, sid)] = recording
        return recording

    def recording_url(self, sid: str, account: str = ACCOUNT) -> str:
        return f"{self.api_url}/Accounts/{account}/Recordings/{sid}"

    def media_requests(self, sid: str) -> list[Logged]:
        return [r for r in self.requests if f"/Recordings/{sid}" in r.path]

    # -- handlers ---------------------------------------------------------

    async def _log(self, request: Request) -> Logged:
        entry = Logged(
            method=request.method,
            path=request.url.path,
            query=request.url.query,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
        )
        self.requests.append(entry)
        return entry

    def _authorized(self, request: Request, account: str) -> bool:
        expected = base64.b64encode(f"{account}:{self.token}".encode()).decode()
        return request.headers.get("authorization") == f"Basic {expected}"

    async def _recording(self, request: Request) -> Response:
        await self._log(request)
        account, name = request.path_params["account"], request.path_params["name"]
        sid, _, ext = name.partition(".")
        recording = self.recordings.get((account, sid))
        if recording is None:
            return JSONResponse({"code": 20404, "message": "not found"}, status_code=404)
        if recording.auth and not self._authorized(request, account):
            return JSONResponse({"code": 20003, "message": "Authenticate"}, status_code=401)
        if request.method == "DELETE":
            if recording.delete_status is not None:
                return Response(status_code=recording.delete_status)
            del self.recordings[(account, sid)]
            self.deleted.append(sid)
            return Response(status_code=204)
        if ext == "json":
            return JSONResponse({"sid": sid, "account_sid": account, "duration": "1"})
        if request.method == "GET":
            recording.media_gets += 1
            if recording.media_gets <= recording.not_found_first:
                return JSONResponse({"code": 20404, "message": "not found"}, status_code=404)
        if recording.status is not None:
            return Response(b"provider trouble", status_code=recording.status)
        if recording.redirect_to:
            return RedirectResponse(recording.redirect_to, status_code=302)
        if recording.body == "json":
            return JSONResponse({"code": 20404, "message": "The requested resource was not found"})
        if recording.body == "xml":
            xml = b"<?xml version='1.0'?><TwilioResponse><RestException/></TwilioResponse>"
            return Response(xml, media_type="application/xml")
        media_type = "audio/mpeg" if ext == "mp3" else "audio/x-wav"
        if recording.size is not None:
            return _synthetic(recording.size, request.method == "HEAD")
        data = recording.mp3 if ext == "mp3" else recording.wav
        if recording.cut_after is not None and request.method == "GET":
            return StreamingResponse(
                _cut(data, recording.cut_after),
                media_type=media_type,
                headers={"content-length": str(len(data))},
            )
        return Response(data, media_type=media_type)

    async def _list(self, request: Request) -> Response:
        await self._log(request)
        account = request.path_params["account"]
        items = [
            {"sid": r.sid, "uri": f"{LAML}/Accounts/{account}/Recordings/{r.sid}.json"}
            for (acct, _), r in self.recordings.items()
            if acct == account
        ]
        return JSONResponse({"recordings": items})

    async def _message(self, request: Request) -> Response:
        logged = await self._log(request)
        account = request.path_params["account"]
        if not self._authorized(request, account):
            return JSONResponse({"code": 20003, "message": "Authenticate"}, status_code=401)
        form = await request.form()
        message = {k: str(v) for k, v in form.items()}
        message["account"] = account
        message["path"] = logged.path
        self.messages.append(message)
        return JSONResponse({"sid": f"SM{len(self.messages):032x}", **message}, status_code=201)

    async def _hook(self, request: Request) -> Response:
        await self._log(request)
        status = self.hook_status.pop(0) if self.hook_status else 200
        return JSONResponse({"ok": status < 400}, status_code=status)

    async def _file(self, request: Request) -> Response:
        await self._log(request)
        return Response(audio(1.0, "wav"), media_type="audio/x-wav")


def _synthetic(size: int, head_only: bool) -> Response:
    headers = {"content-length": str(size)}
    if head_only:
        return Response(b"", media_type="audio/x-wav", headers=headers)
    return StreamingResponse(_synthetic_body(size), media_type="audio/x-wav", headers=headers)


async def _synthetic_body(size: int) -> AsyncIterator[bytes]:
    data_size = size - 44
    yield (
        b"RIFF"
        + struct.pack("<I", size - 8)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
        + b"data"
        + struct.pack("<I", data_size)
    )
    block = bytes(range(256)) * 1024
    sent = 0
    while sent < data_size:
        piece = block[: min(len(block), data_size - sent)]
        sent += len(piece)
        yield piece


async def _cut(data: bytes, after: int) -> AsyncIterator[bytes]:
    yield data[:after]
    raise ConnectionAbortedError("emulator cut the transfer on purpose")


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn in a thread on a free 127.0.0.1 port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("emulator did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running_emulator() -> Iterator[Emulator]:
    emulator = Emulator()
    with serve_app(emulator.app) as url:
        emulator.base_url = url
        yield emulator


def hook_json(entry: Logged) -> Any:
    return json.loads(entry.body)


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[Emulator]:
    with running_emulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(emulator_server: Emulator) -> Iterator[Emulator]:
    """The session's emulator, emptied for each test."""
    emulator_server.reset()
    yield emulator_server
    emulator_server.reset()


def step_context(
    emulator: Emulator,
    sid: str,
    *,
    previous: tuple[tuple[str, Mapping[str, Any]], ...] = (),
    steps: Mapping[str, Mapping[str, Any]] | None = None,
    secrets: frozenset[str] = frozenset(),
    provider: ProviderConfig | None = None,
) -> StepContext:
    """The context a worker would give an action for a completed recording `sid`."""
    event = Event(
        account_sid=ACCOUNT,
        call_sid="b3877c40-da60-4998-90ad-b792e98472ca",
        recording_sid=sid,
        recording_url=emulator.recording_url(sid),
        status="completed",
        duration=1,
        params={"RecordingSid": sid},
    )
    return StepContext(
        event=event,
        rule="test-rule",
        step_index=len(previous),
        step_id=None,
        attempt=1,
        steps=steps or {},
        previous=previous,
        provider=provider or emulator.provider(),
        logger=logging.getLogger("recflow.test"),
        secrets=secrets,
    )


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[dict[str, Any]]:
    """A real S3 API (moto in server mode) on 127.0.0.1; yields s3fs storage_options."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "endpoint_url": f"http://{host}:{port}",
            "key": "testing",
            "secret": "testing-secret",
            "client_kwargs": {"region_name": "eu-west-1"},
        }
    finally:
        server.stop()
