"""secrets: masking text, data and log records."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recflow.secrets import RedactingFilter, Redactor, escape_controls, install

REDACTOR = Redactor(["PSK_signingkey", "PSK_signing", "p@ss word", "7", ""])

MASK = [
    pytest.param("key=PSK_signingkey.", "key=***.", id="longest-first"),
    pytest.param("PSK_signing and PSK_signingkey", "*** and ***", id="both"),
    pytest.param("pw p%40ss%20word in a URL", "pw *** in a URL", id="percent-encoded"),
    pytest.param(
        "mailto://ops:hunter2@smtp.example.com?to=a@b.c",
        "mailto://ops:***@smtp.example.com?to=a@b.c",
        id="url-password",
    ),
    pytest.param(
        "fetch https://AC12:tok@api.example.com/x and sftp://u:p@h/",
        "fetch https://AC12:***@api.example.com/x and sftp://u:***@h/",
        id="two-urls",
    ),
    pytest.param("https://host:8443/path", "https://host:8443/path", id="port-is-not-a-password"),
    pytest.param("workers 7, duration 97", "workers ***, duration 97", id="short-only-as-word"),
    pytest.param("nothing here", "nothing here", id="clean"),
]


@pytest.mark.parametrize(("text", "expected"), MASK)
def test_mask(text: str, expected: str) -> None:
    assert REDACTOR.mask(text) == expected


def test_mask_obj_walks_data_and_keeps_types() -> None:
    data = {"to": ["PSK_signingkey", 3], "PSK_signing": ("x", None), "ok": True}
    assert REDACTOR.mask_obj(data) == {"to": ["***", 3], "***": ("x", None), "ok": True}
    assert data["to"] == ["PSK_signingkey", 3]


def test_no_secrets_still_masks_url_passwords() -> None:
    assert Redactor([]).mask("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test_secrets.owner")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def test_filter_masks_lazy_arguments_and_tracebacks(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    install(REDACTOR, logger)
    child = logging.getLogger("test_secrets.owner.child")
    child.info("signing with %s for %s", "PSK_signingkey", "acct")
    try:
        raise ValueError("bad key PSK_signingkey")
    except ValueError:
        child.exception("failed")
    out = stream.getvalue()
    assert "PSK_signingkey" not in out
    assert "signing with *** for acct" in out
    assert "ValueError: bad key ***" in out


def test_install_twice_replaces_the_filter(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    install(Redactor(["first-secret"]), logger)
    install(Redactor(["second-secret"]), logger)
    for handler in logger.handlers:
        assert [type(f) for f in handler.filters] == [RedactingFilter]
    logger.info("first-secret second-secret")
    assert stream.getvalue().strip() == "first-secret ***"


def test_a_value_from_a_client_cannot_forge_a_log_line_or_drive_a_terminal(
    captured: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = captured
    install(REDACTOR, logger)
    forged = "x\n2026-12-03 17:00:00,000 INFO recflow.receive: callback ok -> 204"
    logger.info("callback recording=%s status=%s -> 403", forged, "\x1b]0;owned\x07done")

    lines = stream.getvalue().splitlines()

    assert len(lines) == 1
    assert "\x1b" not in lines[0] and "\x07" not in lines[0]
    assert "recording=x\\n2026-12-03" in lines[0]
    assert "status=\\x1b]0;owned\\x07done" in lines[0]


# Forty secrets no text here contains ("~" is in none): with them, a Redactor
# has more than 32 variants to find and runs its pattern over every text.
FILLER = [f"unused~secret~{n:02d}" for n in range(40)]
SECRETS = ["PSK_signingkey", "PSK_signing", "p@ss word", "7", "ab", "s3cr"]


@pytest.fixture(
    params=[
        pytest.param(Redactor(SECRETS), id="few-secrets"),
        pytest.param(Redactor(SECRETS + FILLER), id="over-32-secrets"),
    ]
)
def redactor(request: pytest.FixtureRequest) -> Redactor:
    return request.param


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        *MASK,
        pytest.param("ab abc cab ab.", "*** abc cab ***.", id="short-whole-words-only"),
        pytest.param("s3cr s3cret xs3cr", "*** ***et x***", id="four-chars-anywhere"),
        pytest.param("to p%40ss%20word@host", "to ***@host", id="percent-encoded-alone"),
        pytest.param("7\n7x 77 x7 7", "***\n7x 77 x7 ***", id="short-at-the-edges"),
        pytest.param("", "", id="empty"),
    ],
)
def test_mask_is_the_same_with_few_or_many_secrets(
    redactor: Redactor, text: str, expected: str
) -> None:
    assert redactor.mask(text) == expected


_PIECES = st.sampled_from(
    [*SECRETS, "p%40ss%20word", "PSK_", "sign", "ing", "key", "a", "b", "s3", "cr", "7"]
    + [" ", ".", "_", "-", "@", ":", "/", "%", "\n", "é", "https://u:", "@h/"]
)


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(st.sampled_from([*SECRETS, "é7", "a b", "@"]), min_size=1, max_size=6),
    text=st.lists(_PIECES, max_size=12).map("".join),
)
def test_mask_with_the_prefilter_equals_mask_without_it(secrets: list[str], text: str) -> None:
    assert Redactor(secrets).mask(text) == Redactor(secrets + FILLER).mask(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("callback ok -> 204", "callback ok -> 204", id="printable"),
        pytest.param("café ✓ 日本 \u00a0", "café ✓ 日本 \u00a0", id="non-ascii-and-nbsp"),
        pytest.param("a\tb", "a\tb", id="tab-kept"),
        pytest.param("a\nb\rc", "a\\nb\\rc", id="newline-and-return"),
        pytest.param("\x00\x08\x0b\x1f", "\\x00\\x08\\x0b\\x1f", id="c0"),
        pytest.param("\x1b[31mred", "\\x1b[31mred", id="terminal-escape"),
        pytest.param("del\x7f", "del\\x7f", id="del"),
        pytest.param("\x80\x85\x9f", "\\x80\\x85\\x9f", id="c1"),
        pytest.param("é\x1bé", "é\\x1bé", id="control-among-non-ascii"),
        pytest.param("", "", id="empty"),
    ],
)
def test_escape_controls(text: str, expected: str) -> None:
    assert escape_controls(text) == expected


_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_CHARACTERS = st.one_of(st.characters(), st.sampled_from("\x00\t\n\x1b\x7f\x85\x9f\u2028"))


@settings(max_examples=300, deadline=None)
@given(st.text(_CHARACTERS))
def test_escape_controls_escapes_each_control_and_keeps_the_rest(text: str) -> None:
    escaped = escape_controls(text)

    assert not _CONTROL.search(escaped)
    assert escaped == "".join(
        c.encode("unicode_escape").decode("ascii") if _CONTROL.match(c) else c for c in text
    )
