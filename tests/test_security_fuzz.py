"""Random and malformed requests against the receiver, in-process.

Hypothesis builds requests from every part an attacker controls: method,
path, raw query, headers (content type, length, signatures, forwarding),
peer address and body (bytes, forms, JSON of any shape). Whatever it
sends, the receiver answers 2xx, 4xx or 503, never 500 and never an
exception, and submits nothing to the pipeline unless the request carries
a valid signature. Some requests are validly signed on purpose, so the
paths behind verification are fuzzed too.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl, urlencode

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from security_util import (
    CALLBACK,
    PATH,
    SW_ACCOUNT,
    SW_KEY,
    RecordingPipeline,
    Request,
    build_app,
    call,
    make_config,
    signalwire_json_signature,
    twilio_signature,
)

HOST = "hooks.example.com"
FORM = "application/x-www-form-urlencoded"

texts = st.text(max_size=40)
names = st.one_of(st.sampled_from([k for k, _ in CALLBACK] + ["Extra", ""]), texts)
pairs = st.lists(st.tuples(names, texts), max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
callback_like = st.builds(
    lambda base, extra: [*base, *extra],
    st.lists(st.sampled_from(CALLBACK), max_size=len(CALLBACK), unique=True),
    pairs,
)
content_types = st.one_of(
    st.just(FORM),
    st.just("application/json"),
    st.sampled_from(
        [
            FORM,
            "application/json",
            "application/json; charset=latin-1",
            f"{FORM}; charset=utf-8",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
        ]
    ),
    texts,
)
header_names = st.sampled_from(
    [
        "Content-Type",
        "Content-Length",
        "X-SignalWire-Signature",
        "X-Twilio-Signature",
        "X-Forwarded-Proto",
        "X-Forwarded-Host",
        "Host",
        "Transfer-Encoding",
        "X-Anything",
    ]
)
header_values = st.one_of(
    texts, st.sampled_from(["-1", "99999999999999999999", "abc", "0", "chunked", "https"])
)


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["bytes", "form", "json", "callback-form", "callback-json"]))
    if kind == "bytes":
        return bytes(draw(st.binary(max_size=300)))
    if kind == "form":
        return urlencode(draw(pairs)).encode()
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    document = draw(callback_like)
    if kind == "callback-form":
        return urlencode(document).encode()
    return json.dumps(dict(document)).encode()


@st.composite
def requests(draw: Any) -> tuple[Request, bool]:
    """A request and whether it carries a valid signature by construction."""
    method = draw(st.sampled_from(["POST"] * 6 + ["GET", "GET", "PUT", "HEAD", "OPTIONS"]))
    path = draw(
        st.one_of(
            st.just(PATH), st.just(PATH), st.just(PATH), st.sampled_from(["/healthz", "/"]), texts
        )
    )
    query = draw(
        st.one_of(st.just(b""), st.binary(max_size=60), pairs.map(lambda p: urlencode(p).encode()))
    )
    content_type = draw(content_types)
    headers = [("Host", HOST), ("Content-Type", content_type)]
    headers += draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    body = draw(bodies())
    client = draw(st.sampled_from(["198.51.100.7", "10.0.0.5", "127.0.0.1", "::1"]))
    signed = False
    if draw(st.booleans()) and path == PATH and method == "POST":
        signed = _sign(headers, content_type, query, body)
    return (
        Request(
            method=method,
            path=path if path.startswith("/") else "/" + path,
            query=query,
            headers=headers,
            body=body,
            client=(client, 40000),
        ),
        signed,
    )


def _sign(headers: list[tuple[str, str]], content_type: str, query: bytes, body: bytes) -> bool:
    """Add a valid signature for a form or JSON POST; whether one could be made."""
    url = f"http://{HOST}{PATH}" + ("?" + query.decode("latin-1") if query else "")
    if content_type == FORM:
        try:
            form = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            return False
        headers.append(("X-SignalWire-Signature", twilio_signature(url, form, SW_KEY)))
        return True
    if content_type == "application/json":
        headers.append(("X-SignalWire-Signature", signalwire_json_signature(url, body, SW_KEY)))
        return True
    return False


@st.composite
def signed_callbacks(draw: Any) -> Request:
    """Validly signed POSTs of callback-like forms and JSON, to fuzz what follows verification."""
    content_type = draw(st.sampled_from([FORM, "application/json"]))
    document = draw(callback_like)
    if content_type == FORM:
        body = urlencode(document).encode()
    else:
        extra = draw(st.dictionaries(texts, json_values, max_size=3))
        body = json.dumps({**dict(document), **extra}).encode()
    query = draw(st.one_of(st.just(b""), pairs.map(lambda p: urlencode(p).encode())))
    headers = [("Host", HOST), ("Content-Type", content_type)]
    _sign(headers, content_type, query, body)
    return Request(query=query, headers=headers, body=body)


APP_PIPELINE = RecordingPipeline()
APP = build_app(make_config(trusted_proxies=["10.0.0.0/8"]), APP_PIPELINE)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(requests())
def test_random_requests_never_break_the_receiver(case: tuple[Request, bool]) -> None:
    request, signed = case
    before = len(APP_PIPELINE.submitted)

    answer = call(APP, request)

    assert answer.status != 500
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500 or answer.status == 503
    if answer.status >= 400 and request.method != "HEAD":
        assert set(json.loads(answer.body)) == {"error"}
    if not signed:
        assert len(APP_PIPELINE.submitted) == before


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(signed_callbacks())
def test_signed_random_callbacks_are_recorded_or_refused_cleanly(request: Request) -> None:
    before = len(APP_PIPELINE.submitted)

    answer = call(APP, request)

    assert answer.status in (204, 400, 403), answer.body
    assert len(APP_PIPELINE.submitted) == before + (answer.status == 204)
    if answer.status == 403:
        # Signed with the right key: only an account that is not ours is refused.
        assert _account(request) != SW_ACCOUNT


def _account(request: Request) -> object:
    """The AccountSid the receiver reads: the body's first, else the query's."""
    if dict(request.headers)["Content-Type"] == FORM:
        found = parse_qsl(request.body.decode(), keep_blank_values=True)
    else:
        value = json.loads(request.body).get("AccountSid")
        found = [] if value is None else [("AccountSid", value)]
    found += parse_qsl(request.query.decode(), keep_blank_values=True)
    return next((v for k, v in found if k == "AccountSid"), None)
