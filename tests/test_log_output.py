"""Log output: lines written at once when slow, batched in order when fast."""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recflow.log_output import BatchingStreamHandler, LineFormatter


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


def test_the_default_burst_is_five_lines() -> None:
    stream = io.StringIO()
    handler = BatchingStreamHandler(stream, interval=3600)
    try:
        for number in range(7):
            handler.handle(logging.makeLogRecord({"msg": f"line {number}", "levelno": 20}))
        assert stream.getvalue().splitlines() == [f"line {n}" for n in range(5)]
        handler.flush()
        assert stream.getvalue().splitlines() == [f"line {n}" for n in range(7)]
    finally:
        handler.close()


# Far longer than any write here takes: only a write that waits for the gate lasts this long.
HANG = 10.0


class _GatedStream:
    """A stream whose writes from the handler's writer thread wait until `gate` opens.

    Threads in `free` (the test's own) write at once. Each write is
    recorded with the name of the thread that made it.
    """

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.writing = threading.Event()  # the writer thread is in a write
        self.free = {threading.current_thread()}
        self.writes: list[tuple[str, str]] = []

    def write(self, text: str) -> int:
        if threading.current_thread() not in self.free:
            self.writing.set()
            self.gate.wait(HANG)
        self.writes.append((threading.current_thread().name, text))
        return len(text)

    def flush(self) -> None:
        pass

    def lines(self) -> list[str]:
        return "".join(text for _, text in self.writes).splitlines()


@pytest.fixture
def held() -> Iterator[tuple[logging.Logger, _GatedStream, BatchingStreamHandler]]:
    """A logger whose handler's writer thread is writing a line the stream holds up."""
    stream = _GatedStream()
    # burst=0: the first line is kept, for the writer thread to write.
    handler = BatchingStreamHandler(stream, interval=0.01, burst=0)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger(f"test_log_output.{time.monotonic_ns()}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    logger.info("callback 1")
    assert stream.writing.wait(HANG), "the writer thread never wrote"
    # From now on, INFO lines are to be written at once, unless the writer is writing.
    handler.burst = 100
    try:
        yield logger, stream, handler
    finally:
        stream.gate.set()
        logger.removeHandler(handler)
        handler.close()


def _wait_for_lines(stream: _GatedStream, count: int) -> list[str]:
    deadline = time.monotonic() + HANG
    while len(stream.lines()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return stream.lines()


def test_info_does_not_wait_for_the_writer_thread_and_comes_out_next_in_order(held) -> None:
    logger, stream, _ = held

    logger.info("callback 2")
    logger.info("callback 3")

    # Neither call waited for the writer thread's write, nor wrote anything.
    assert stream.writes == []
    stream.gate.set()
    assert _wait_for_lines(stream, 3) == [f"INFO callback {n}" for n in (1, 2, 3)]
    # The writer thread wrote them at its next interval, not the thread that logged them.
    assert {name for name, _ in stream.writes}.isdisjoint({threading.current_thread().name})


def test_a_warning_waits_for_the_writer_thread_then_is_written_at_once(held) -> None:
    logger, stream, _ = held
    logger.info("callback 2")
    warning = threading.Thread(target=logger.warning, args=("backend unavailable",))
    stream.free.add(warning)
    warning.start()

    stream.gate.set()
    warning.join(HANG)

    # Written by the time the call that logged it returned, after what came before it.
    assert stream.lines() == [
        "INFO callback 1",
        "INFO callback 2",
        "WARNING backend unavailable",
    ]


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _record_at(created: float) -> logging.LogRecord:
    """A record made by logging itself, at the clock time `created`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", lambda: created)
        patch.setattr(time, "time_ns", lambda: round(created * 1e9))
        return logging.LogRecord("recflow.receive", logging.INFO, __file__, 1, "ok", None, None)


SECOND = 1_764_790_000


@pytest.mark.parametrize(
    "times",
    [
        pytest.param([SECOND + 0.5, SECOND + 0.75], id="same-second"),
        pytest.param(
            [SECOND - 0.002, SECOND - 0.001, SECOND, SECOND + 0.001, SECOND + 1.0],
            id="across-seconds",
        ),
        pytest.param([SECOND + 1.25, SECOND + 0.999, SECOND + 1.001], id="back-a-second"),
        pytest.param([SECOND + 0.0004, SECOND + 0.9999, SECOND + 60.0], id="first-last-ms"),
    ],
)
def test_line_formatter_renders_times_as_logging_does(times: list[float]) -> None:
    ours, logging_s = LineFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in times:
        record = _record_at(created)
        assert ours.format(record) == logging_s.format(record)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO recflow.receive: ok", ours.format(record)
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(1e9, 4e9), min_size=1, max_size=20))
def test_line_formatter_renders_any_times_as_logging_does(times: list[float]) -> None:
    ours, logging_s = LineFormatter(FORMAT), logging.Formatter(FORMAT)
    for created in times:
        record = _record_at(created)
        assert ours.format(record) == logging_s.format(record)


def test_line_formatter_keeps_an_explicit_date_format() -> None:
    fmt, datefmt = "%(asctime)s %(message)s", "%H:%M:%S"
    record = _record_at(SECOND + 0.5)
    assert LineFormatter(fmt).formatTime(record, datefmt) == logging.Formatter(fmt).formatTime(
        record, datefmt
    )


def test_uvicorn_server_lines_are_not_labelled_error() -> None:
    # uvicorn logs "Started server process" and the like as `uvicorn.error`.
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1, "Started server process [%d]", (7,), None
    )

    line = LineFormatter("%(levelname)s %(name)s: %(message)s").format(record)

    assert line == "INFO uvicorn: Started server process [7]"
    assert record.name == "uvicorn.error", "the record other handlers see was changed"
