"""recflow.verify against the shared vectors and Twilio's own validator."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.datastructures import MultiDict
from twilio.request_validator import RequestValidator

from recflow import verify
from recflow.verify import (
    FORM,
    JSON,
    form_signature,
    is_valid,
    json_signature,
    signed_url_candidates,
)

SAMPLES = Path(__file__).parent / "samples"
VECTORS = json.loads((SAMPLES / "signatures.json").read_text())["cases"]
KEY = "PSK_test_9c1d2e"
OTHER_KEY = "PSK_other_77aa"

CALLBACK = [
    ("AccountSid", "b3877c40-da60-4998-90ad-b792e98472af"),
    ("RecordingSid", "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"),
    ("RecordingUrl", "https://example.signalwire.com/api/laml/2010-04-01/Recordings/7e2d"),
    ("RecordingStatus", "completed"),
    ("RecordingDuration", "12"),
]


def _check(case: dict) -> bool:
    media = case["content_type"]
    pairs = parse_qsl(case["body"], keep_blank_values=True) if media == FORM else None
    return is_valid(
        case["url"],
        {case["header"]: case["signature"]},
        media,
        case["body"].encode(),
        pairs,
        [case["key"]],
    )


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in VECTORS])
def test_shared_vectors(case: dict) -> None:
    assert _check(case) is case["valid"]


@pytest.mark.parametrize("case", [pytest.param(c, id=c["name"]) for c in VECTORS if c["valid"]])
def test_shared_vectors_refused_under_another_key(case: dict) -> None:
    assert _check({**case, "key": OTHER_KEY}) is False


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param(
            "https://h.example.com/r?a=1",
            ["https://h.example.com/r?a=1", "https://h.example.com:443/r?a=1"],
            id="https-adds-443",
        ),
        pytest.param(
            "https://h.example.com:443/r",
            ["https://h.example.com:443/r", "https://h.example.com/r"],
            id="https-drops-443",
        ),
        pytest.param(
            "http://h.example.com/r",
            ["http://h.example.com/r", "http://h.example.com:80/r"],
            id="http-adds-80",
        ),
        pytest.param(
            "https://h.example.com:8443/r", ["https://h.example.com:8443/r"], id="other-port-kept"
        ),
        pytest.param(
            "http://[::1]:80/r?x=:443",
            ["http://[::1]:80/r?x=:443", "http://[::1]/r?x=:443"],
            id="ipv6-and-colon-in-query",
        ),
        pytest.param("ftp://h/r", ["ftp://h/r"], id="unknown-scheme"),
    ],
)
def test_signed_url_candidates(url: str, expected: list[str]) -> None:
    assert signed_url_candidates(url) == expected


URLS = [
    pytest.param("https://hooks.example.com/recordings", id="plain"),
    pytest.param("https://hooks.example.com/recordings/", id="trailing-slash"),
    pytest.param("https://hooks.example.com/recordings?note=a+b&n=a%20b", id="plus-and-%20"),
    pytest.param("https://hooks.example.com/recordings?who='o'&at=@h&t=10:30", id="quote-at-colon"),
    pytest.param("https://hooks.example.com/r%C3%A9c?name=Zo%C3%AB", id="percent-utf8"),
    pytest.param("https://hooks.example.com/réc?name=Zoë ☎", id="raw-non-ascii"),
    pytest.param("https://hooks.example.com:8443/recordings?tenant=acme", id="other-port"),
    pytest.param("http://127.0.0.1:8080/recordings", id="loopback-http"),
    pytest.param("https://hooks.example.com/recordings?tag=b&tag=a&tag=b", id="repeated-query"),
]

PARAMS = [
    pytest.param(CALLBACK, id="callback"),
    pytest.param([*CALLBACK, ("Tag", "b"), ("Tag", "a"), ("Tag", "c")], id="repeated-keys"),
    pytest.param([*CALLBACK, ("Note", "Zoë ☎ 日本"), ("Empty", "")], id="non-ascii-and-empty"),
    pytest.param([*CALLBACK, ("Tag", "x"), ("Tag", "x")], id="repeated-identical-values"),
    pytest.param([("a", "1+2=3&4"), ("b", " padded ")], id="specials-and-spaces"),
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("pairs", PARAMS)
def test_twilio_validator_signatures_accepted(url: str, pairs: list[tuple[str, str]]) -> None:
    signature = RequestValidator(KEY).compute_signature(url, MultiDict(pairs))
    body = urlencode(pairs).encode()
    header = {"X-Twilio-Signature": signature}

    assert is_valid(url, header, FORM, body, pairs, [KEY])
    assert is_valid(url, header, FORM, body, pairs, [OTHER_KEY, KEY]), "rotated keys"
    assert not is_valid(url, header, FORM, body, pairs, [OTHER_KEY])
    assert not is_valid(url + "x", header, FORM, body, pairs, [KEY])
    changed = [*pairs[:-1], (pairs[-1][0], pairs[-1][1] + "x")]
    assert not is_valid(url, header, FORM, body, changed, [KEY])
    assert not is_valid(url, header, FORM, body, [*pairs, ("Extra", "")], [KEY])


@pytest.mark.parametrize(
    ("signed", "called"),
    [
        pytest.param("https://h.example.com/r", "http://h.example.com/r", id="scheme"),
        pytest.param("https://h.example.com/r?a=b+c", "https://h.example.com/r?a=b%20c", id="plus"),
        pytest.param(
            "https://h.example.com/r?a=1&b=2", "https://h.example.com/r?b=2&a=1", id="query-order"
        ),
        pytest.param("https://h.example.com/r/", "https://h.example.com/r", id="slash"),
        pytest.param("https://h.example.com:8443/r", "https://h.example.com/r", id="port"),
        pytest.param("https://a.example.com/r", "https://b.example.com/r", id="host"),
    ],
)
def test_another_url_refused(signed: str, called: str) -> None:
    signature = form_signature(signed, CALLBACK, KEY)
    assert is_valid(signed, {"X-Twilio-Signature": signature}, FORM, b"", CALLBACK, [KEY])
    assert not is_valid(called, {"X-Twilio-Signature": signature}, FORM, b"", CALLBACK, [KEY])


BODY = json.dumps(dict(CALLBACK)).encode()
BARE = "https://hooks.example.com/recordings?tenant=acme"
HASHED = BARE + "&bodySHA256=" + hashlib.sha256(BODY).hexdigest()


@pytest.mark.parametrize(
    ("url", "headers", "body", "valid"),
    [
        pytest.param(
            HASHED,
            {"X-Twilio-Signature": RequestValidator(KEY).compute_signature(HASHED, {})},
            BODY,
            True,
            id="bodySHA256",
        ),
        pytest.param(
            HASHED,
            {"X-Twilio-Signature": RequestValidator(KEY).compute_signature(HASHED, {})},
            BODY + b" ",
            False,
            id="bodySHA256-body-changed",
        ),
        pytest.param(
            BARE,
            {"X-Twilio-Signature": RequestValidator(KEY).compute_signature(BARE, {})},
            BODY,
            False,
            id="bare-url-without-body-hash",
        ),
        pytest.param(
            BARE,
            {"X-SignalWire-Signature": json_signature(BARE, BODY, KEY)},
            BODY,
            True,
            id="signalwire-hex",
        ),
        pytest.param(
            BARE,
            {"X-SignalWire-Signature": json_signature(BARE, BODY, KEY).upper()},
            BODY,
            True,
            id="signalwire-hex-uppercase",
        ),
        pytest.param(
            BARE,
            {"X-SignalWire-Signature": json_signature(BARE, BODY, KEY)},
            BODY.replace(b"12", b"13"),
            False,
            id="signalwire-hex-body-changed",
        ),
        pytest.param(
            BARE,
            {
                "X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl",
                "X-SignalWire-Signature": json_signature(BARE, BODY, KEY),
            },
            BODY,
            True,
            id="one-good-header-of-two",
        ),
        pytest.param(
            HASHED,
            {
                "X-Twilio-Signature": RequestValidator(KEY).compute_signature(HASHED, {}),
                "X-SignalWire-Signature": json_signature(HASHED, BODY, KEY),
            },
            BODY,
            True,
            id="both-schemes",
        ),
        pytest.param(BARE, {}, BODY, False, id="no-signature"),
        pytest.param(BARE, {"X-SignalWire-Signature": ""}, BODY, False, id="empty-signature"),
    ],
)
def test_json_schemes(url: str, headers: dict[str, str], body: bytes, valid: bool) -> None:
    assert is_valid(url, headers, JSON, body, None, [KEY]) is valid


def test_no_keys_refuses_everything() -> None:
    signature = form_signature(BARE, CALLBACK, "")
    assert not is_valid(BARE, {"X-Twilio-Signature": signature}, FORM, b"", CALLBACK, [""])


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
_path = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters="#?"))


@settings(max_examples=150, deadline=None)
@given(
    scheme=st.sampled_from(["http", "https"]),
    port=st.sampled_from(["", ":80", ":443", ":8080"]),
    path=_path,
    query=st.one_of(st.just(""), _path.map(lambda q: "?" + q)),
    pairs=st.lists(st.tuples(_names, _text), max_size=6),
    which=st.integers(min_value=0),
)
def test_property_twilio_signed_is_accepted_and_any_change_refused(
    scheme: str,
    port: str,
    path: str,
    query: str,
    pairs: list[tuple[str, str]],
    which: int,
) -> None:
    url = f"{scheme}://hooks.example.com{port}/{path}{query}"
    signature = RequestValidator(KEY).compute_signature(url, MultiDict(pairs))
    header = {"X-Twilio-Signature": signature}

    assert is_valid(url, header, FORM, b"", pairs, [KEY])
    assert not is_valid(url + "x", header, FORM, b"", pairs, [KEY])
    if pairs:
        index = which % len(pairs)
        name, value = pairs[index]
        changed = [*pairs[:index], (name, value + "x"), *pairs[index + 1 :]]
        assert not is_valid(url, header, FORM, b"", changed, [KEY])


_TEXT = st.text(alphabet="ab=&%é", max_size=3)


@given(st.lists(st.tuples(_TEXT, _TEXT), max_size=8))
def test_form_suffixes_are_the_plain_and_deduplicated_texts(pairs: list[tuple[str, str]]) -> None:
    # The receiver's shortcut builds the deduplicated text only when a value
    # repeats; it must give what building both always gives.
    both = {
        verify._sorted_params(pairs, dedupe=False),
        verify._sorted_params(pairs, dedupe=True),
    }
    assert verify._form_suffixes(pairs) == sorted(both)
