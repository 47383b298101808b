"""Helpers for the security suite (tests/test_security_*.py).

`call` drives the real receiver app in-process through a hand-built ASGI
scope, so the raw path, the raw query, the headers and the peer address
reach recflow exactly as a test wrote them: an HTTP client library would
normalise the very bytes that signatures cover. `RecordingPipeline`
remembers every submission, which is what "no action ran" is checked on.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from typing import Any

from recflow.config import Config, ProviderConfig, RuleConfig, ServerConfig
from recflow.event import Event
from recflow.plugins import build_plugin_manager
from recflow.receive import create_app
from recflow.rules import compile_when

SW_ACCOUNT = "b3877c40-da60-4998-90ad-b792e98472af"
SW_KEY = "PSK_security_current_91ab"
SW_OLD_KEY = "PSK_security_previous_27cd"
SW_TOKEN = "PT_security_token_64ef"
TW_ACCOUNT = "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
TW_TOKEN = "tw_security_auth_token_13"
PATH = "/recordings"

CALLBACK: tuple[tuple[str, str], ...] = (
    ("AccountSid", SW_ACCOUNT),
    ("CallSid", "b3877c40-da60-4998-90ad-b792e98472ca"),
    ("RecordingSid", "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"),
    (
        "RecordingUrl",
        "https://example.signalwire.com/api/laml/2010-04-01"
        f"/Accounts/{SW_ACCOUNT}/Recordings/7e2d1c4b-90ad-4998-b792-e984a1b2c3d4",
    ),
    ("RecordingStatus", "completed"),
    ("RecordingDuration", "94"),
)

PROVIDERS = (
    ProviderConfig(
        name="main",
        kind="signalwire",
        account_sid=SW_ACCOUNT,
        api_token=SW_TOKEN,
        signing_keys=(SW_OLD_KEY, SW_KEY),
        api_url="https://example.signalwire.com/api/laml/2010-04-01",
        space="example.signalwire.com",
    ),
    ProviderConfig(
        name="tw",
        kind="twilio",
        account_sid=TW_ACCOUNT,
        api_token=TW_TOKEN,
        signing_keys=(TW_TOKEN,),
        api_url="https://api.twilio.com/2010-04-01",
    ),
)


def make_config(**server: Any) -> Config:
    """A receiver config with both providers and one rule matching every event."""
    if "trusted_proxies" in server:
        server["trusted_proxies"] = tuple(
            ipaddress.ip_network(net) for net in server["trusted_proxies"]
        )
    return Config(
        path="/nonexistent/config.yaml",
        server=ServerConfig(path=PATH, **server),
        providers=PROVIDERS,
        backend="sqlite:///unused.db",
        workers=0,
        rules=(
            RuleConfig(name="all", when=compile_when({"status": {"exists": True}}, "w"), steps=()),
        ),
        secrets=frozenset({SW_KEY, SW_OLD_KEY, SW_TOKEN, TW_TOKEN}),
    )


class RecordingPipeline:
    """A stand-in pipeline that records what the receiver submitted."""

    def __init__(self) -> None:
        self.submitted: list[Event] = []

    async def submit(self, event: Event, rules: Sequence[RuleConfig]) -> bool:
        self.submitted.append(event)
        return True

    async def healthy(self) -> bool:
        return True


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclasses.dataclass
class Request:
    """One request as it reaches the server: raw bytes where they matter."""

    method: str = "POST"
    path: str = PATH
    query: bytes = b""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] = ("198.51.100.7", 40000)
    scheme: str = "http"
    server: tuple[str, int] = ("127.0.0.1", 8080)


def build_app(config: Config, pipeline: RecordingPipeline) -> Any:
    return create_app(config, build_plugin_manager(entry_points=False), pipeline)


def call(app: Any, request: Request) -> Answer:
    """Send `request` to the ASGI `app` in-process; its answer."""
    return asyncio.run(acall(app, request))


async def acall(app: Any, request: Request) -> Answer:
    raw_path = request.path.encode("utf-8", "surrogateescape")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": request.method,
        "scheme": request.scheme,
        "path": request.path,
        "raw_path": raw_path,
        "query_string": request.query,
        "root_path": "",
        "headers": [
            (name.lower().encode("latin-1"), value.encode("latin-1", "replace"))
            for name, value in request.headers
        ],
        "client": request.client,
        "server": request.server,
        "state": {},
    }
    sent_body = False
    answer = Answer(0, {}, b"")

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")

    await app(scope, receive, send)
    return answer


def twilio_signature(url: str, pairs: Sequence[tuple[str, str]], key: str) -> str:
    """Twilio's form signature, computed by the official `twilio` package."""
    from starlette.datastructures import MultiDict
    from twilio.request_validator import RequestValidator

    return str(RequestValidator(key).compute_signature(url, MultiDict(list(pairs))))


def signalwire_json_signature(url: str, body: bytes, key: str) -> str:
    """SignalWire's JSON scheme, by hand: hex HMAC-SHA1 over URL + raw body."""
    return hmac.new(key.encode(), url.encode() + body, hashlib.sha1).hexdigest()


def twilio_json_url(url: str, body: bytes) -> str:
    """`url` with Twilio's `bodySHA256` parameter for a JSON body."""
    digest = hashlib.sha256(body).hexdigest()
    return url + ("&" if "?" in url else "?") + "bodySHA256=" + digest


def twilio_url_signature(url: str, key: str) -> str:
    """Base64 HMAC-SHA1 over the URL alone (GET, or JSON with bodySHA256)."""
    digest = hmac.new(key.encode(), url.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()
