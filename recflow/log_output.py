"""Log output that stays cheap for the thread that logs, under load.

A `logging.StreamHandler` writes and flushes every record in the thread
that logs it. The write is a system call that lets go of the GIL, and in
the receiver's event loop taking the GIL back can mean waiting for the
committer or a worker thread: at a few thousand callbacks a second, the
one INFO line per callback cost the event loop more than the rest of the
receive path.

`BatchingStreamHandler` writes each record at once, like `StreamHandler`,
as long as records come slowly (at most `burst` in an `interval`), and
always for WARNING and above. Past that rate, it keeps the formatted lines
and a writer thread writes them together every `interval` seconds, in one
call, in the order they were logged. Records are formatted (and masked, by
the filters) in the thread that logs them, as before.

Known shortcoming: under load, lines not yet written when the process is
killed (`kill -9`) are lost: at most the last `interval` seconds of INFO
lines. `flush()` and `close()` write everything kept.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that batches its writes when records come fast."""

    def __init__(
        self, stream: TextIO | None = None, *, interval: float = 0.1, burst: int = 20
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
        if at_once:
            self.flush()

    def flush(self) -> None:
        """Write every line kept so far."""
        with self._io:
            with self._kept:
                lines, self._lines = self._lines, []
            if not lines or self.stream is None:
                return
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
