"""Log output that stays cheap for the thread that logs, under load.

A `logging.StreamHandler` writes and flushes every record in the thread
that logs it. The write is a system call that lets go of the GIL, and in
the receiver's event loop taking the GIL back can mean waiting for the
committer or a worker thread: at a few thousand callbacks a second, the
one INFO line per callback cost the event loop more than the rest of the
receive path.

`BatchingStreamHandler` writes each record at once, like `StreamHandler`,
as long as records come slowly (at most `burst` in an `interval`), and
always for WARNING and above. Past that rate, or while the writer thread
is writing, it keeps the formatted lines and the writer thread writes them
together every `interval` seconds, in one call, in the order they were
logged. Records are formatted (and masked, by
the filters) in the thread that logs them, as before.

Known shortcoming: under load, lines not yet written when the process is
killed (`kill -9`) are lost: at most the last `interval` seconds of INFO
lines. `flush()` and `close()` write everything kept.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from typing import TextIO


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that batches its writes when records come fast."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 0.1, burst: int = 5
    ) -> None:
        super().__init__(stream)
        self.interval = interval
        self.burst = burst
        self._lines: list[str] = []
        self._kept = threading.Lock()  # guards _lines and the rate window
        self._io = threading.Lock()  # one writer at a time, so lines keep their order
        self._window_start = 0.0
        self._window_count = 0
        self._stop = threading.Event()
        self._writer = threading.Thread(
            target=self._write_loop, name="recflow-log-writer", daemon=True
        )
        self._writer.start()

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter, then emit without `logging.Handler`'s lock.

        `emit` guards what it shares with locks of its own; the handler's
        lock around it would make an INFO line from the event loop wait
        behind a WARNING from another thread that waits for the writer.
        """
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        now = time.monotonic()
        with self._kept:
            self._lines.append(line)
            if now - self._window_start >= self.interval:
                self._window_start, self._window_count = now, 0
            self._window_count += 1
            at_once = self._window_count <= self.burst or record.levelno >= logging.WARNING
        # An INFO line does not wait while the writer thread writes: that
        # would stall the event loop, and the writer takes it next time.
        if at_once and self._io.acquire(blocking=record.levelno >= logging.WARNING):
            try:
                self._write_kept()
            finally:
                self._io.release()

    def flush(self) -> None:
        """Write every line kept so far."""
        with self._io:
            self._write_kept()

    def _write_kept(self) -> None:
        """Write the kept lines; the caller holds `_io`."""
        with self._kept:
            lines, self._lines = self._lines, []
        if lines and self.stream is not None:
            try:
                self.stream.write("".join(lines))
                if hasattr(self.stream, "flush"):
                    self.stream.flush()
            except Exception:
                # No record to hand to handleError: say it once, as it would.
                if logging.raiseExceptions:
                    import sys
                    import traceback

                    traceback.print_exc(file=sys.stderr)

    def close(self) -> None:
        self._stop.set()
        if self._writer.is_alive() and self._writer is not threading.current_thread():
            self._writer.join(self.interval * 10)
        self.flush()
        super().close()

    def _write_loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self._lines:
                self.flush()


class LineFormatter(logging.Formatter):
    """A `logging.Formatter` that renders each second's timestamp once.

    `formatTime` runs `time.strftime` for every record; under load, the
    receiver logs thousands of lines within the same second.

    uvicorn logs everything about its server, "Started server process"
    included, through a logger named `uvicorn.error`; those lines are shown
    as `uvicorn`'s, so that an INFO line does not read as an error.
    """

    def __init__(self, fmt: str | None = None) -> None:
        super().__init__(fmt)
        self._second: tuple[int, str] = (-1, "")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - its name
        if record.name == "uvicorn.error":
            # A copy: other handlers may see the same record.
            record = copy.copy(record)
            record.name = "uvicorn"
        return super().formatMessage(record)

    def formatTime(  # noqa: N802 - logging.Formatter's name
        self, record: logging.LogRecord, datefmt: str | None = None
    ) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            # One tuple, replaced whole: a thread reading it sees either.
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            cached = self._second = (second, stamp)
        return f"{cached[1]},{int(record.msecs):03d}"


def counted(n: int, noun: str) -> str:
    """`1 callback`, `2 callbacks`: counts in log lines read as English."""
    return f"{n} {noun}{'' if n == 1 else 's'}"
