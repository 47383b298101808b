"""recflow.receive over real HTTP: a uvicorn server on 127.0.0.1, raw requests.

The pipeline here is a small in-memory stand-in with the two methods the
receiver calls, so each answer can be traced to the receiver alone; the
real pipeline is driven end to end in test_serve.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import http.client
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_util import signed_form
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from twilio.request_validator import RequestValidator

from recflow import hookimpl
from recflow.config import Config, ProviderConfig, RuleConfig, ServerConfig
from recflow.errors import BackendError, ConfigError, RequestError
from recflow.event import Event
from recflow.plugins import build_plugin_manager
from recflow.receive import MAX_PARAMS, _parse_pairs, create_app
from recflow.rules import compile_when
from recflow.verify import json_signature

KEY = "PSK_receive_test_5e8f0a7d"
OLD_KEY = "PSK_receive_old_11c2"
TOKEN = "PT_api_token_b7c9d1e3f5"
TWILIO_TOKEN = "twilio_auth_token_4a6c8e"
ACCOUNT = "b3877c40-da60-4998-90ad-b792e98472af"
TWILIO_ACCOUNT = "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
PATH = "/recordings"

CALLBACK = [
    ("AccountSid", ACCOUNT),
    ("CallSid", "b3877c40-da60-4998-90ad-b792e98472ca"),
    ("RecordingSid", "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"),
    ("RecordingUrl", f"https://example.signalwire.com/api/laml/2010-04-01/Recordings/{ACCOUNT}"),
    ("RecordingStatus", "completed"),
    ("RecordingDuration", "94"),
]


def _callback(**changes: str | None) -> list[tuple[str, str]]:
    pairs = [(k, changes.get(k, v)) for k, v in CALLBACK if changes.get(k, v) is not None]
    return pairs + [(k, v) for k, v in changes.items() if v is not None and k not in dict(CALLBACK)]


PROVIDERS = (
    ProviderConfig(
        name="main",
        kind="signalwire",
        account_sid=ACCOUNT,
        api_token=TOKEN,
        signing_keys=(OLD_KEY, KEY),
        api_url="https://example.signalwire.com/api/laml/2010-04-01",
        space="example.signalwire.com",
    ),
    ProviderConfig(
        name="twilio",
        kind="twilio",
        account_sid=TWILIO_ACCOUNT,
        api_token=TWILIO_TOKEN,
        signing_keys=(TWILIO_TOKEN,),
        api_url="https://api.twilio.com/2010-04-01",
    ),
)

RULES = (
    RuleConfig(name="archive", when=compile_when({"status": "completed"}, "w"), steps=()),
    RuleConfig(name="silent", when=compile_when({"status": "absent"}, "w"), steps=()),
)


def make_config(**server: Any) -> Config:
    return Config(
        path="/nonexistent/config.yaml",
        server=ServerConfig(path=PATH, **server),
        providers=PROVIDERS,
        backend="sqlite:///unused.db",
        workers=0,
        rules=RULES,
        secrets=frozenset({KEY, OLD_KEY, TOKEN, TWILIO_TOKEN}),
    )


class FakePipeline:
    """Remembers what was submitted; a duplicate is an id seen before."""

    def __init__(self) -> None:
        self.events: list[tuple[Event, list[str]]] = []
        self.broken = False

    async def submit(self, event: Event, rules: Sequence[RuleConfig]) -> bool:
        if self.broken:
            raise BackendError("database is locked")
        if any(seen.id == event.id for seen, _ in self.events):
            return False
        self.events.append((event, [rule.name for rule in rules]))
        return True

    async def healthy(self) -> bool:
        return not self.broken


@dataclasses.dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class Site:
    base: str
    pipeline: FakePipeline

    def send(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        parts = urlsplit(self.base)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        try:
            conn.request(method, target, body=body, headers=headers or {})
            response = conn.getresponse()
            return Answer(
                response.status, response.read(), {k.lower(): v for k, v in response.getheaders()}
            )
        finally:
            conn.close()

    def post_form(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        target: str = PATH,
        signed_url: str | None = None,
        key: str = KEY,
        extra: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> Answer:
        signed_body, headers = signed_form(signed_url or self.base + target, pairs, key)
        return self.send("POST", target, body or signed_body, {**headers, **(extra or {})})


@contextlib.contextmanager
def serving(
    config: Config, pipeline: FakePipeline | None = None, host: Any = None
) -> Iterator[Site]:
    """The receiver app under uvicorn in a thread, on a free port of 127.0.0.1."""
    pipeline = pipeline or FakePipeline()
    app = create_app(config, host or build_plugin_manager(entry_points=False), pipeline)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="asyncio",
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
        )
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield Site(f"http://127.0.0.1:{sock.getsockname()[1]}", pipeline)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    with serving(make_config()) as running:
        yield running


@pytest.fixture
def fresh() -> Iterator[Site]:
    with serving(make_config()) as running:
        yield running


def _json_headers(url: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-SignalWire-Signature": json_signature(url, body, KEY),
    }


JSON_BODY = json.dumps({**dict(CALLBACK), "RecordingDuration": 94, "Flag": True}).encode()


# -- accepted callbacks ------------------------------------------------------------


def test_signed_form_is_recorded(fresh: Site) -> None:
    answer = fresh.post_form(CALLBACK)

    assert answer.status == 204
    assert answer.body == b""
    assert answer.headers["x-request-id"]
    [(event, rules)] = fresh.pipeline.events
    assert (event.account_sid, event.status, event.duration) == (ACCOUNT, "completed", 94)
    assert rules == ["archive"]


def test_duplicate_is_acknowledged_and_submitted_once(fresh: Site) -> None:
    first = fresh.post_form(CALLBACK)
    second = fresh.post_form(CALLBACK)

    assert (first.status, second.status) == (204, 204)
    assert len(fresh.pipeline.events) == 1


def test_custom_query_is_signed_and_kept_body_first(fresh: Site) -> None:
    target = PATH + "?tenant=acme&note=a+b&RecordingStatus=spoofed&who='o'@x:1"
    answer = fresh.post_form(CALLBACK, target=target)

    assert answer.status == 204
    [(event, _)] = fresh.pipeline.events
    assert event.params["tenant"] == "acme"
    assert event.params["note"] == "a b"
    assert event.params["who"] == "'o'@x:1"
    assert event.status == "completed"


def test_get_with_query_parameters(fresh: Site) -> None:
    target = PATH + "?" + urlencode(_callback(RecordingStatus="absent"))
    signature = RequestValidator(KEY).compute_signature(fresh.base + target, {})
    answer = fresh.send("GET", target, headers={"X-SignalWire-Signature": signature})

    assert answer.status == 204
    [(event, rules)] = fresh.pipeline.events
    assert (event.status, rules) == ("absent", ["silent"])


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("application/x-www-form-urlencoded; charset=utf-8", id="charset-utf-8"),
        pytest.param("application/x-www-form-urlencoded;charset=UTF-8", id="charset-upper"),
        pytest.param("Application/X-WWW-Form-Urlencoded", id="mixed-case"),
    ],
)
def test_form_content_type_variants(fresh: Site, content_type: str) -> None:
    answer = fresh.post_form(CALLBACK, extra={"Content-Type": content_type})
    assert answer.status == 204


@pytest.mark.parametrize(
    "scheme",
    [
        pytest.param("signalwire-hex", id="signalwire-hex"),
        pytest.param("bodySHA256", id="twilio-bodySHA256"),
        pytest.param("both", id="both-schemes"),
    ],
)
def test_signed_json(fresh: Site, scheme: str) -> None:
    target = PATH
    if scheme != "signalwire-hex":
        target += "?bodySHA256=" + hashlib.sha256(JSON_BODY).hexdigest()
    url = fresh.base + target
    headers = {"Content-Type": "application/json"}
    if scheme != "bodySHA256":
        headers["X-SignalWire-Signature"] = json_signature(url, JSON_BODY, KEY)
    if scheme != "signalwire-hex":
        headers["X-Twilio-Signature"] = RequestValidator(KEY).compute_signature(url, {})
    answer = fresh.send("POST", target, JSON_BODY, headers)

    assert answer.status == 204
    [(event, _)] = fresh.pipeline.events
    assert event.duration == 94
    assert event.params["Flag"] == "true"


def test_twilio_account_with_its_auth_token(fresh: Site) -> None:
    pairs = _callback(AccountSid=TWILIO_ACCOUNT)
    answer = fresh.post_form(pairs, key=TWILIO_TOKEN)
    assert answer.status == 204


def test_rotated_key_still_accepted(fresh: Site) -> None:
    assert fresh.post_form(CALLBACK, key=OLD_KEY).status == 204


# -- refused callbacks: status, the one JSON shape, the order of the checks ----------

BIG = b"A" * 5_000_000
FIELDS = "&".join(f"f{i}=x" for i in range(5000)).encode()


def _refusals() -> list[Any]:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = urlencode(CALLBACK).encode()

    def signed(pairs: list[tuple[str, str]], **kw: Any) -> Callable[[Site], Answer]:
        return lambda s: s.post_form(pairs, **kw)

    def raw(
        method: str, body: bytes | None, headers: dict[str, str], target: str = PATH
    ) -> Callable[[Site], Answer]:
        return lambda s: s.send(method, target, body, headers)

    def json_signed(body: bytes) -> Callable[[Site], Answer]:
        return lambda s: s.send("POST", PATH, body, _json_headers(s.base + PATH, body))

    return [
        pytest.param(signed(_callback(RecordingUrl=None)), 400, "missing", id="missing-url"),
        pytest.param(signed(_callback(RecordingStatus="")), 400, "missing", id="empty-status"),
        pytest.param(
            json_signed(json.dumps({**dict(CALLBACK), "RecordingSid": 7}).encode()),
            400,
            "malformed required field",
            id="json-number-sid",
        ),
        pytest.param(
            json_signed(json.dumps({**dict(CALLBACK), "RecordingUrl": ["a"]}).encode()),
            400,
            "malformed required field",
            id="json-list-url",
        ),
        pytest.param(json_signed(b"[1, 2]"), 400, "malformed body", id="json-array"),
        pytest.param(json_signed(b'{"AccountSid": '), 400, "malformed body", id="broken-json"),
        pytest.param(json_signed(b'{"a": NaN}'), 400, "malformed body", id="json-nan"),
        pytest.param(
            raw("POST", b'{"AccountSid": "\xff"}', {"Content-Type": "application/json"}),
            400,
            "malformed body",
            id="json-invalid-utf8",
        ),
        pytest.param(
            raw("POST", b"AccountSid=%FF%FE&RecordingSid=x", form),
            400,
            "malformed body",
            id="form-invalid-utf8-escape",
        ),
        pytest.param(
            raw("POST", b"AccountSid=\xff", form), 400, "malformed body", id="form-raw-bad-byte"
        ),
        pytest.param(raw("POST", FIELDS, form), 400, "too many parameters", id="5000-fields"),
        pytest.param(
            raw("GET", None, {}, PATH + "?" + "&".join(["a=1"] * (MAX_PARAMS + 5))),
            400,
            "too many parameters",
            id="query-too-many",
        ),
        pytest.param(
            raw("GET", None, {}, PATH + "?AccountSid=%FF%FE"),
            400,
            "malformed query string",
            id="query-invalid-utf8-escape",
        ),
        pytest.param(raw("POST", BIG, form), 413, "body too large", id="5MB"),
        pytest.param(
            raw("POST", BIG, {"Content-Type": "text/plain"}),
            413,
            "body too large",
            id="size-before-type",
        ),
        pytest.param(
            raw("POST", body, {"Content-Type": "text/plain"}),
            415,
            "unsupported content type",
            id="text-plain",
        ),
        pytest.param(
            raw("POST", body, {"Content-Type": "multipart/form-data; boundary=x"}),
            415,
            "unsupported content type",
            id="multipart",
        ),
        pytest.param(raw("POST", body, {}), 415, "unsupported content type", id="no-type"),
        pytest.param(
            raw("POST", body, {"Content-Type": form["Content-Type"] + "; charset=latin-1"}),
            415,
            "unsupported content type",
            id="charset-latin1",
        ),
        pytest.param(
            raw("POST", b"{oops", {"Content-Type": "text/plain"}),
            415,
            "unsupported content type",
            id="type-before-parse",
        ),
        pytest.param(
            raw("POST", gzip.compress(body), {**form, "Content-Encoding": "gzip"}),
            415,
            "unsupported content encoding",
            id="gzip-body",
        ),
        pytest.param(
            raw("POST", b"{oops", {"Content-Type": "application/json"}),
            400,
            "malformed body",
            id="parse-before-signature",
        ),
        pytest.param(raw("POST", body, form), 403, "forbidden", id="no-signature"),
        pytest.param(
            raw("POST", urlencode(_callback(RecordingUrl=None)).encode(), form),
            403,
            "forbidden",
            id="signature-before-fields",
        ),
        pytest.param(
            signed(CALLBACK, signed_url="https://elsewhere.example.com/recordings"),
            403,
            "forbidden",
            id="signed-for-another-url",
        ),
        pytest.param(
            signed(CALLBACK, body=urlencode(_callback(RecordingDuration="95")).encode()),
            403,
            "forbidden",
            id="replayed-with-changed-body",
        ),
        pytest.param(signed(CALLBACK, key="PSK_wrong"), 403, "forbidden", id="wrong-key"),
        pytest.param(
            signed(_callback(AccountSid="00000000-0000-0000-0000-000000000000")),
            403,
            "forbidden",
            id="unknown-account",
        ),
        pytest.param(
            signed(_callback(AccountSid=TWILIO_ACCOUNT), key=KEY),
            403,
            "forbidden",
            id="another-accounts-key",
        ),
        pytest.param(
            lambda s: s.send(
                "POST",
                PATH,
                JSON_BODY,
                {
                    "Content-Type": "application/json",
                    "X-Twilio-Signature": RequestValidator(KEY).compute_signature(
                        s.base + PATH, {}
                    ),
                },
            ),
            403,
            "forbidden",
            id="json-signed-over-bare-url",
        ),
        pytest.param(raw("PUT", body, form), 405, "method not allowed", id="put"),
        pytest.param(raw("GET", None, {}, "/elsewhere"), 404, "not found", id="unknown-path"),
    ]


@pytest.mark.parametrize(
    "codings",
    [
        pytest.param(["identity", "gzip"], id="gzip-after-identity"),
        pytest.param(["identity, gzip"], id="gzip-in-a-list"),
        pytest.param(["", "GZip"], id="gzip-after-empty"),
    ],
)
def test_a_compressed_body_is_refused_whatever_content_encoding_comes_first(
    site: Site, codings: list[str]
) -> None:
    # Signed over the form as sent: only the encoding can refuse it.
    form, headers = signed_form(site.base + PATH, list(CALLBACK), KEY)
    body = gzip.compress(form)
    parts = urlsplit(site.base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        conn.putrequest("POST", PATH)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            conn.putheader(name, value)
        for coding in codings:
            conn.putheader("Content-Encoding", coding)
        conn.endheaders(body)
        response = conn.getresponse()
        answer = json.loads(response.read())
    finally:
        conn.close()

    assert response.status == 415
    assert answer == {"error": "unsupported content encoding"}


@pytest.mark.parametrize(("request_", "status", "reason"), _refusals())
def test_refused(site: Site, request_: Callable[[Site], Answer], status: int, reason: str) -> None:
    before = len(site.pipeline.events)
    answer = request_(site)

    assert answer.status == status
    assert reason in answer.json()["error"]
    assert set(answer.json()) == {"error"}
    assert len(site.pipeline.events) == before


def test_5mb_refused_from_content_length_without_sending_the_body(site: Site) -> None:
    parts = urlsplit(site.base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.putrequest("POST", PATH)
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Content-Length", str(len(BIG)))
    conn.endheaders(b"AccountSid=" + b"A" * 1000)
    response = conn.getresponse()

    assert response.status == 413
    assert json.loads(response.read()) == {"error": "body too large"}
    conn.close()


def test_chunked_body_refused_once_past_the_limit(site: Site) -> None:
    parts = urlsplit(site.base)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.putrequest("POST", PATH)
    conn.putheader("Content-Type", "application/x-www-form-urlencoded")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"A" * 32768
    with contextlib.suppress(OSError):  # the server may stop listening first
        for _ in range(4):  # 128 KiB of a body that never ends
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    response = conn.getresponse()

    assert response.status == 413
    conn.close()


def test_backend_down_answers_503(fresh: Site) -> None:
    fresh.pipeline.broken = True
    answer = fresh.post_form(CALLBACK)

    assert answer.status == 503
    assert answer.json() == {"error": "backend unavailable"}


@pytest.mark.parametrize(
    ("broken", "status"),
    [pytest.param(False, 200, id="healthy"), pytest.param(True, 503, id="backend-down")],
)
def test_healthz(fresh: Site, broken: bool, status: int) -> None:
    fresh.pipeline.broken = broken
    answer = fresh.send("GET", "/healthz")

    assert answer.status == status
    assert answer.json() == (
        {"status": "ok"} if status == 200 else {"error": "backend unavailable"}
    )


# -- the URL that was signed -------------------------------------------------------

PUBLIC = "https://hooks.example.com/recordings"
FORWARDED = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "hooks.example.com, proxy"}


@pytest.mark.parametrize(
    ("server", "signed_for", "extra", "status"),
    [
        pytest.param({"public_url": PUBLIC}, "public", {}, 204, id="public-url"),
        pytest.param({"public_url": PUBLIC}, "local", {}, 403, id="public-url-not-local"),
        pytest.param(
            {"trusted_proxies": (ipaddress.ip_network("127.0.0.0/8"),)},
            "public",
            FORWARDED,
            204,
            id="trusted-proxy",
        ),
        pytest.param(
            {"trusted_proxies": (ipaddress.ip_network("10.0.0.0/8"),)},
            "public",
            FORWARDED,
            403,
            id="untrusted-peer-forwarded-url",
        ),
        pytest.param({}, "public", FORWARDED, 403, id="no-proxies-forwarded-url"),
        pytest.param({}, "local", FORWARDED, 204, id="no-proxies-own-url"),
    ],
)
def test_signed_url_behind_proxies(
    server: dict[str, Any], signed_for: str, extra: dict[str, str], status: int
) -> None:
    with serving(make_config(**server)) as running:
        target = PATH + "?tenant=acme&x=a+b"
        origin = running.base if signed_for == "local" else "https://hooks.example.com"
        url = origin + target
        answer = running.post_form(CALLBACK, target=target, signed_url=url, extra=extra)

    assert answer.status == status


def test_verification_off_accepts_unsigned_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with serving(make_config(verify_signatures=False)) as running:
        answer = running.send(
            "POST",
            PATH,
            urlencode(CALLBACK).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        unknown = running.post_form(_callback(AccountSid="someone-else"))

    assert answer.status == 204
    assert unknown.status == 403
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("verify_signatures is false" in r.getMessage() for r in warnings)


# -- logs -------------------------------------------------------------------------


def test_log_has_one_line_per_callback_and_no_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(make_config()) as running:
        accepted = running.post_form(CALLBACK)
        forged = running.post_form(CALLBACK, key="PSK_wrong")
        unknown = running.post_form(_callback(AccountSid=TWILIO_ACCOUNT))
        broken = running.send("POST", PATH, b"{", {"Content-Type": "application/json"})

    text = caplog.text
    for secret in (KEY, OLD_KEY, TOKEN, TWILIO_TOKEN):
        assert secret not in text
    for answer in (accepted, forged, unknown, broken):
        request_id = answer.headers["x-request-id"]
        lines = [r.getMessage() for r in caplog.records if request_id in r.getMessage()]
        assert len(lines) == 1, lines
    [accepted_line] = [r.getMessage() for r in caplog.records if "-> 204" in r.getMessage()]
    assert "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4" in accepted_line
    assert "rules=archive" in accepted_line


# -- plugin routes -----------------------------------------------------------------


class _StatusPlugin:
    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse("hello")

        register("/plugin/hello", hello, ["GET"])


class _ClashPlugin:
    @hookimpl
    def register_routes(self, register: Callable[..., None]) -> None:
        register("/healthz", _StatusPlugin, ["GET"])


def test_plugin_route_is_served() -> None:
    host = build_plugin_manager(entry_points=False, extra=(_StatusPlugin(),))
    with serving(make_config(), host=host) as running:
        answer = running.send("GET", "/plugin/hello")

    assert (answer.status, answer.body) == (200, b"hello")


def test_plugin_route_clash_is_refused() -> None:
    host = build_plugin_manager(entry_points=False, extra=(_ClashPlugin(),))

    with pytest.raises(ConfigError, match="'/healthz' clashes"):
        create_app(make_config(), host, FakePipeline())


def _as_parse_qsl(text: str) -> list[tuple[str, str]] | tuple[int, str]:
    """What `parse_qsl` reads in `text`, or the refusal its error maps to."""
    try:
        return parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=MAX_PARAMS)
    except UnicodeDecodeError:  # a ValueError too: checked first
        return (400, "malformed body")
    except ValueError:
        return (400, "too many parameters")


def _as_receiver(raw: bytes) -> list[tuple[str, str]] | tuple[int, str]:
    try:
        return _parse_pairs(raw, "body")
    except RequestError as exc:
        return (exc.status, exc.reason)


_FORM_PIECES = st.sampled_from(
    ["%", "+", "=", "&", "&&", "%2", "%zz", "%41", "%2B", "%26", "%3D", "%C3%A9", "%e9", "%ff"]
    + ["%F0%9F", "%F0%9F%98%80", "é", "✓", "😀", " ", ";", "a", "Recording", "Sid", "\x00"]
)
_FORMS = st.lists(st.one_of(_FORM_PIECES, st.text(max_size=4)), max_size=24).map("".join)
# Around the limit: as many fields as allowed, one fewer, one more.
_MANY_FIELDS = st.builds(
    lambda count, tail: "a=&" * count + tail,
    st.integers(MAX_PARAMS - 2, MAX_PARAMS + 1),
    _FORMS,
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_FORMS, _MANY_FIELDS))
def test_form_pairs_are_read_as_parse_qsl_reads_them(text: str) -> None:
    assert _as_receiver(text.encode()) == _as_parse_qsl(text)


@pytest.mark.parametrize(
    ("raw", "status", "reason", "detail"),
    [
        pytest.param(b"a=\xff", 400, "malformed body", "query is not valid UTF-8", id="bytes"),
        pytest.param(b"a=%ff", 400, "malformed body", "query is not valid UTF-8", id="escape"),
        pytest.param(b"a=%F0%9F", 400, "malformed body", "not valid UTF-8", id="cut-escape"),
        pytest.param(b"a=&" * MAX_PARAMS, 400, "too many parameters", "more than", id="many"),
    ],
)
def test_form_pairs_refused(raw: bytes, status: int, reason: str, detail: str) -> None:
    with pytest.raises(RequestError) as refused:
        _parse_pairs(raw, "query")

    assert (refused.value.status, refused.value.reason) == (status, reason)
    assert detail in refused.value.detail


@pytest.mark.parametrize(
    ("raw", "pairs"),
    [
        pytest.param(b"", [], id="empty"),
        pytest.param(b"&a&&b=&=c", [("a", ""), ("b", ""), ("", "c")], id="blanks-kept"),
        pytest.param(b"a+b=c+d%2Be", [("a b", "c d+e")], id="plus-and-escapes"),
        pytest.param(b"a=%zz%4", [("a", "%zz%4")], id="broken-escape-kept"),
        pytest.param(b"a=b=c", [("a", "b=c")], id="first-equals-splits"),
        pytest.param("é=✓".encode(), [("é", "✓")], id="non-ascii"),
        pytest.param(b"a=&" * (MAX_PARAMS - 1), [("a", "")] * (MAX_PARAMS - 1), id="at-limit"),
    ],
)
def test_form_pairs(raw: bytes, pairs: list[tuple[str, str]]) -> None:
    assert _parse_pairs(raw, "body") == pairs
