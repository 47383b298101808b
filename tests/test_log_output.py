"""Log output: lines written at once when slow, batched in order when fast."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import pytest

from recflow.log_output import BatchingStreamHandler


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO, BatchingStreamHandler]]:
    stream = io.StringIO()
    # A long interval: the writer thread never writes during a test by itself.
    handler = BatchingStreamHandler(stream, interval=3600, burst=3)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test_log_output.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield logger, stream, handler
    logger.removeHandler(handler)
    handler.close()


def test_slow_records_are_written_at_once(logged) -> None:
    logger, stream, _ = logged
    for number in range(3):
        logger.info("callback %d", number)
        assert stream.getvalue().splitlines()[-1] == f"INFO callback {number}"


def test_a_burst_is_kept_then_written_in_order(logged) -> None:
    logger, stream, handler = logged
    for number in range(10):
        logger.info("callback %d", number)
    assert stream.getvalue().splitlines() == [f"INFO callback {n}" for n in range(3)]
    handler.flush()
    assert stream.getvalue().splitlines() == [f"INFO callback {n}" for n in range(10)]


def test_a_warning_is_written_at_once_after_what_was_kept(logged) -> None:
    logger, stream, _ = logged
    for number in range(5):
        logger.info("callback %d", number)
    logger.warning("backend unavailable")
    assert stream.getvalue().splitlines() == [
        *(f"INFO callback {n}" for n in range(5)),
        "WARNING backend unavailable",
    ]


def test_close_writes_what_was_kept(logged) -> None:
    logger, stream, handler = logged
    for number in range(8):
        logger.info("callback %d", number)
    handler.close()
    assert len(stream.getvalue().splitlines()) == 8


def test_the_writer_thread_writes_kept_lines_by_itself() -> None:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=0.01, burst=1)
    try:
        for number in range(5):
            handler.handle(logging.makeLogRecord({"msg": f"line {number}", "levelno": 20}))
        deadline = time.monotonic() + 10
        while len(stream.getvalue().splitlines()) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stream.getvalue().splitlines() == [f"line {n}" for n in range(5)]
    finally:
        handler.close()
