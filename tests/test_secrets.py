"""secrets: masking text, data and log records."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest

from recflow.secrets import RedactingFilter, Redactor, install

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
