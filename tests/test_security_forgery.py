"""Forged callbacks never reach the pipeline.

Each case is a request an attacker could send: no signature, a wrong one,
one made with another key or for another URL, or a real one replayed with
a changed body or query, directly or through proxies. Every forged case
must answer 403 AND leave the pipeline empty. Each forged case sits beside
a genuine twin that must pass, so the table cannot pass by refusing
everything. Form signatures come from the official `twilio` package;
SignalWire's JSON scheme is computed by hand.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from urllib.parse import urlencode

import pytest
from security_util import (
    CALLBACK,
    PATH,
    SW_KEY,
    SW_OLD_KEY,
    TW_ACCOUNT,
    TW_TOKEN,
    RecordingPipeline,
    Request,
    build_app,
    call,
    make_config,
    signalwire_json_signature,
    twilio_json_url,
    twilio_signature,
    twilio_url_signature,
)

FORM = "application/x-www-form-urlencoded"
HOST = "hooks.example.com"
PUBLIC = f"https://{HOST}{PATH}"
PROXY_CONFIG = {"trusted_proxies": ["10.0.0.0/8"]}
PUBLIC_CONFIG = {"public_url": PUBLIC}
# Raw query strings as a provider calls them: '+', quotes, '@', ':' and
# non-ASCII text, percent-encoded and not, and a repeated key.
QUERIES = {
    "plain": "tenant=acme",
    "plus": "tenant=acme&note=a+b",
    "punctuation": "who='o'@x:1&t=12:30",
    "non-ascii": "name=Zo%C3%AB+%E2%98%8E",
    "repeated": "tag=b&tag=a&tag=b",
}


def _form(
    pairs: tuple[tuple[str, str], ...] = CALLBACK,
    *,
    signed_url: str = f"http://{HOST}{PATH}",
    sent_query: str | None = None,
    key: str = SW_KEY,
    host: str = HOST,
    header: str = "X-SignalWire-Signature",
    sent_pairs: tuple[tuple[str, str], ...] | None = None,
    extra: tuple[tuple[str, str], ...] = (),
    client: str = "198.51.100.7",
) -> Request:
    """A form callback signed for `signed_url`, sent with `sent_query`/`sent_pairs`."""
    query = signed_url.partition("?")[2] if sent_query is None else sent_query
    body = urlencode(list(sent_pairs if sent_pairs is not None else pairs)).encode()
    headers = [("Host", host), ("Content-Type", FORM)]
    if key:
        headers.append((header, twilio_signature(signed_url, pairs, key)))
    return Request(
        query=query.encode(),
        headers=headers + list(extra),
        body=body,
        client=(client, 40000),
    )


def _json(
    document: dict[str, object] | None = None,
    *,
    scheme: str = "signalwire",
    signed_url: str = f"http://{HOST}{PATH}",
    key: str = SW_KEY,
    sent_body: bytes | None = None,
    sent_query: str | None = None,
) -> Request:
    body = json.dumps(document or dict(CALLBACK)).encode()
    if scheme == "signalwire":
        signature = signalwire_json_signature(signed_url, body, key)
    elif scheme == "twilio":
        signed_url = twilio_json_url(signed_url, body)
        signature = twilio_url_signature(signed_url, key)
    else:  # the bare URL, no bodySHA256: says nothing about the body
        signature = twilio_url_signature(signed_url, key)
    query = signed_url.partition("?")[2] if sent_query is None else sent_query
    return Request(
        query=query.encode(),
        headers=[
            ("Host", HOST),
            ("Content-Type", "application/json"),
            ("X-Twilio-Signature" if scheme == "twilio" else "X-SignalWire-Signature", signature),
        ],
        body=sent_body if sent_body is not None else body,
    )


def _get(query_pairs: tuple[tuple[str, str], ...] = CALLBACK, *, key: str = SW_KEY) -> Request:
    query = urlencode(list(query_pairs))
    signature = twilio_signature(f"http://{HOST}{PATH}?{query}", (), key)
    return Request(
        method="GET",
        query=query.encode(),
        headers=[("Host", HOST), ("X-SignalWire-Signature", signature)],
    )


def _with(pairs: tuple[tuple[str, str], ...], **changes: str) -> tuple[tuple[str, str], ...]:
    return tuple((k, changes.get(k, v)) for k, v in pairs)


def _twilio_pairs() -> tuple[tuple[str, str], ...]:
    return _with(CALLBACK, AccountSid=TW_ACCOUNT)


def _unsigned(request: Request) -> Request:
    request.headers = [(k, v) for k, v in request.headers if "signature" not in k.lower()]
    return request


def _header(request: Request, name: str, value: str) -> Request:
    request.headers = [(k, v) for k, v in request.headers if k.lower() != name.lower()]
    request.headers.append((name, value))
    return request


def _as_post(request: Request, body: bytes) -> Request:
    """A GET's signed URL replayed as a POST with a form body of the attacker's."""
    request.method = "POST"
    request.headers.append(("Content-Type", FORM))
    request.body = body
    return request


GENUINE: list[object] = [
    pytest.param({}, lambda: _form(), id="form"),
    pytest.param({}, lambda: _form(key=SW_OLD_KEY), id="form-previous-key-still-listed"),
    pytest.param(
        {},
        lambda: _form(_twilio_pairs(), key=TW_TOKEN, header="X-Twilio-Signature"),
        id="twilio-form-auth-token",
    ),
    *[
        pytest.param({}, lambda q=q: _form(signed_url=f"http://{HOST}{PATH}?{q}"), id=f"query-{n}")
        for n, q in QUERIES.items()
    ],
    pytest.param(
        {}, lambda: _form(signed_url=f"http://{HOST}{PATH}?tenant=x%2By"), id="query-encoded-plus"
    ),
    pytest.param(
        {},
        lambda: _form(CALLBACK + (("Tag", "b"), ("Tag", "a"), ("Note", "Zo\u00eb \u260e"))),
        id="form-repeated-keys-non-ascii",
    ),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}:8443{PATH}", host=f"{HOST}:8443"),
        id="non-default-port",
    ),
    pytest.param({}, lambda: _form(signed_url=f"http://{HOST}:80{PATH}"), id="default-port-added"),
    pytest.param(
        PUBLIC_CONFIG, lambda: _form(signed_url=PUBLIC, host="127.0.0.1:8080"), id="public-url"
    ),
    pytest.param(
        PUBLIC_CONFIG,
        lambda: _form(signed_url=PUBLIC + "?tenant=acme&note=a+b", host="127.0.0.1:8080"),
        id="public-url-with-query",
    ),
    pytest.param(
        PROXY_CONFIG,
        lambda: _form(
            signed_url=PUBLIC,
            host="10.0.0.2:8080",
            client="10.0.0.5",
            extra=(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", HOST)),
        ),
        id="trusted-proxy-forwarded",
    ),
    pytest.param({}, lambda: _json(), id="json-signalwire"),
    pytest.param({}, lambda: _json(scheme="twilio"), id="json-twilio-bodysha256"),
    pytest.param({}, lambda: _get(), id="get-query"),
]


FORGED: list[object] = [
    pytest.param({}, lambda: _unsigned(_form()), id="no-signature"),
    pytest.param({}, lambda: _header(_form(), "X-SignalWire-Signature", ""), id="empty-signature"),
    pytest.param(
        {},
        lambda: _header(_form(), "X-SignalWire-Signature", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
        id="garbage-signature",
    ),
    pytest.param(
        {},
        lambda: _header(
            _form(),
            "X-SignalWire-Signature",
            twilio_signature(f"http://{HOST}{PATH}", CALLBACK, SW_KEY).lower(),
        ),
        id="base64-case-changed",
    ),
    pytest.param({}, lambda: _form(key="PSK_revoked_or_guessed"), id="unknown-key"),
    pytest.param({}, lambda: _form(key=TW_TOKEN), id="other-accounts-key"),
    pytest.param(
        {}, lambda: _form(_twilio_pairs(), key=SW_KEY), id="twilio-account-signed-with-sw-key"
    ),
    pytest.param(
        {}, lambda: _form(_with(CALLBACK, AccountSid="not-configured")), id="unknown-account"
    ),
    pytest.param({}, lambda: _form(signed_url=f"http://other.example.com{PATH}"), id="other-host"),
    pytest.param({}, lambda: _form(signed_url=f"http://{HOST}/elsewhere"), id="other-path"),
    pytest.param({}, lambda: _form(signed_url=f"http://{HOST}{PATH}/"), id="trailing-slash"),
    pytest.param({}, lambda: _form(signed_url=f"https://{HOST}{PATH}"), id="other-scheme"),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}:8443{PATH}", host=HOST),
        id="port-dropped",
    ),
    pytest.param({}, lambda: _form(sent_query="tenant=acme"), id="query-added"),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}{PATH}?tenant=acme", sent_query="tenant=evil"),
        id="query-changed",
    ),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}{PATH}?tenant=acme", sent_query=""),
        id="query-dropped",
    ),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}{PATH}?note=a+b", sent_query="note=a%20b"),
        id="query-plus-reencoded",
    ),
    pytest.param(
        {},
        lambda: _form(
            signed_url=f"http://{HOST}{PATH}?who='o'@x:1", sent_query="who=%27o%27%40x%3A1"
        ),
        id="query-punctuation-escaped",
    ),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}{PATH}?tag=b&tag=a", sent_query="tag=a&tag=b"),
        id="query-repeated-keys-reordered",
    ),
    pytest.param(
        {},
        lambda: _form(signed_url=f"http://{HOST}{PATH}?tag=b&tag=a", sent_query="tag=b"),
        id="query-repeated-key-dropped",
    ),
    pytest.param(
        {},
        lambda: _form(sent_pairs=_with(CALLBACK, RecordingStatus="absent")),
        id="body-status-changed",
    ),
    pytest.param(
        {},
        lambda: _form(sent_pairs=_with(CALLBACK, RecordingUrl="http://169.254.169.254/latest")),
        id="body-url-changed",
    ),
    pytest.param(
        {}, lambda: _form(sent_pairs=CALLBACK + (("Target", "x"),)), id="body-param-added"
    ),
    pytest.param({}, lambda: _form(sent_pairs=CALLBACK[:-1]), id="body-param-removed"),
    pytest.param(
        {},
        lambda: _form(
            CALLBACK + (("Tag", "a"), ("Tag", "b")), sent_pairs=CALLBACK + (("Tag", "a"),)
        ),
        id="body-repeated-key-dropped",
    ),
    pytest.param(
        {},
        lambda: _form(CALLBACK + (("Note", "Zo\u00eb"),), sent_pairs=CALLBACK + (("Note", "Zoe"),)),
        id="body-non-ascii-changed",
    ),
    pytest.param(
        {},
        lambda: _form(
            signed_url=f"http://{HOST}{PATH}?RecordingStatus=absent",
            sent_query="RecordingStatus=absent",
            sent_pairs=tuple((k, v) for k, v in CALLBACK if k != "RecordingStatus"),
        ),
        id="body-param-moved-to-query",
    ),
    pytest.param(
        PUBLIC_CONFIG,
        lambda: _form(signed_url=f"http://{HOST}{PATH}"),
        id="public-url-set-signed-for-host",
    ),
    pytest.param(
        {},
        lambda: _form(
            signed_url=PUBLIC,
            extra=(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", HOST)),
        ),
        id="forwarded-headers-without-trusted-proxies",
    ),
    pytest.param(
        PROXY_CONFIG,
        lambda: _form(
            signed_url=PUBLIC,
            client="203.0.113.9",
            extra=(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", HOST)),
        ),
        id="forwarded-headers-from-untrusted-peer",
    ),
    pytest.param(
        {"trusted_proxies": ["127.0.0.1/32"]},
        lambda: _form(
            signed_url=PUBLIC,
            client="127.0.0.2",
            extra=(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", HOST)),
        ),
        id="forwarded-headers-from-other-loopback",
    ),
    pytest.param(
        PROXY_CONFIG,
        lambda: _form(
            signed_url=f"https://attacker.example{PATH}",
            client="10.0.0.5",
            extra=(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", HOST)),
        ),
        id="trusted-proxy-other-host-signed",
    ),
    pytest.param(
        {},
        lambda: _json(
            sent_body=json.dumps(dict(_with(CALLBACK, RecordingStatus="absent"))).encode()
        ),
        id="json-signalwire-body-changed",
    ),
    pytest.param(
        {},
        lambda: _json(sent_body=json.dumps(dict(CALLBACK), indent=1).encode()),
        id="json-signalwire-whitespace-changed",
    ),
    pytest.param(
        {},
        lambda: _json(
            scheme="twilio",
            sent_body=json.dumps(dict(_with(CALLBACK, RecordingStatus="absent"))).encode(),
        ),
        id="json-twilio-body-changed",
    ),
    pytest.param({}, lambda: _json(scheme="bare"), id="json-bare-url-no-bodysha256"),
    pytest.param({}, lambda: _json(key="PSK_other"), id="json-other-key"),
    pytest.param(
        {}, lambda: _json(signed_url=f"http://other.example.com{PATH}"), id="json-other-url"
    ),
    pytest.param(
        {},
        lambda: _as_post(_get(), b"RecordingStatus=absent"),
        id="get-signature-replayed-as-post-with-body",
    ),
    pytest.param(
        {},
        lambda: _header(_get(), "X-SignalWire-Signature", _get(key="PSK_x").headers[-1][1]),
        id="get-other-key",
    ),
]


@pytest.mark.parametrize(("server", "build"), GENUINE)
def test_genuine_callback_is_accepted(
    server: dict[str, object], build: Callable[[], Request]
) -> None:
    pipeline = RecordingPipeline()
    answer = call(build_app(make_config(**server), pipeline), build())

    assert answer.status == 204, answer.body
    assert len(pipeline.submitted) == 1


@pytest.mark.parametrize(("server", "build"), FORGED)
def test_forged_callback_runs_nothing(
    server: dict[str, object], build: Callable[[], Request]
) -> None:
    pipeline = RecordingPipeline()
    answer = call(build_app(make_config(**server), pipeline), build())

    assert answer.status == 403, answer.body
    assert json.loads(answer.body) == {"error": "forbidden"}
    assert pipeline.submitted == []


def test_refusal_names_no_key_and_logs_the_request_id(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = RecordingPipeline()
    with caplog.at_level(logging.INFO, logger="recflow"):
        answer = call(build_app(make_config(), pipeline), _form(key="PSK_wrong"))

    assert answer.status == 403
    logged = caplog.text
    assert answer.headers["x-request-id"] in logged
    for secret in (SW_KEY, SW_OLD_KEY, TW_TOKEN, "PSK_wrong"):
        assert secret not in logged
        assert secret.encode() not in answer.body


def test_verification_off_warns_on_every_callback(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = RecordingPipeline()
    app = build_app(make_config(verify_signatures=False), pipeline)
    with caplog.at_level(logging.WARNING, logger="recflow"):
        answers = [call(app, _unsigned(_form(_with(CALLBACK, RecordingSid=s)))) for s in "ab"]

    assert [a.status for a in answers] == [204, 204]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len([r for r in warnings if "verify_signatures is false" in r.getMessage()]) == 2


def test_verification_is_on_unless_the_config_says_false() -> None:
    pipeline = RecordingPipeline()
    answer = call(build_app(make_config(), pipeline), _unsigned(_form()))

    assert make_config().server.verify_signatures is True
    assert answer.status == 403
    assert pipeline.submitted == []
