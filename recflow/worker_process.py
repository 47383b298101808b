"""`recflow serve`'s workers, in a process of their own.

Worker threads inside the receiver's process shared its interpreter lock
with the event loop: every SQLite call, every step's Python (an action,
a plugin transcribing audio) took turns with the receiving of callbacks,
which then answered at a third of the rate (`bench/bench_peers.py`), and
a plugin that crashed the interpreter took the receiver down with it.

`WorkerProcess` runs `recflow worker` beside the receiver, with the same
config and thread count, joined to it by a socket pair:

- the config is the one the receiver loaded, byte for byte, handed over
  in an unlinked file: a worker process started again hours later must
  not pick up an edit of config.yaml that the receiver never loaded (a
  broken file would stop every step, a renamed rule would fail them);

- a byte from the receiver wakes the workers at once, as an enqueue in the
  same process would (`wake()`, called once per group of commits);
- a byte from the worker process every `HEARTBEAT_EVERY` seconds says it
  is not stopped (SIGSTOP) or wedged: `problem()` reports a silence of
  `SILENT_AFTER` seconds (a step that hangs in a call while the
  interpreter runs is not seen this way: see `recflow.worker`);
- the end of the socket means the receiver is gone: the worker process then
  kills itself at once, as its threads would have died with the receiver,
  so that `kill -9` of `recflow serve` leaves nothing running (the steps
  it was running run again, at least once);
- if the worker process exits on its own, it is started again after a
  second, and that is logged; `problem()` says so for `/healthz` while
  it has exited in the last minute.

`stop()` asks it to finish its running steps (SIGTERM: up to 30 s, as
`recflow worker` does) before the receiver closes its backend.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO

logger = logging.getLogger(__name__)

# How long `stop` waits for running steps, a little over `recflow worker`'s 30 s.
STOP_WAIT = 35.0
RESTART_DELAY = 1.0
# How long an exit of the worker process is reported by `problem()`.
PROBLEM_WINDOW = 60.0
# The worker process's sign of life, and the silence `problem()` reports.
HEARTBEAT_EVERY = 1.0
SILENT_AFTER = 10.0


class WorkerProcess:
    """A `recflow worker` child of the receiver, kept running until `stop()`."""

    def __init__(self, config_path: str, source: bytes, workers: int) -> None:
        self.config_path = os.path.abspath(config_path)
        self.workers = workers
        self._config = _snapshot(source)
        self._exits: list[tuple[float, int]] = []  # (when, status), last minute's
        # Ours stays blocking for the listener; `wake` sends with MSG_DONTWAIT.
        self._ours, self._theirs = socket.socketpair()
        self._lock = threading.Lock()  # guards `_child`, `_exits` and `_last_sign`
        self._stopping = threading.Event()
        self._shutting_down = False  # set by `stopping()`, from a signal handler
        self._last_sign = time.monotonic()
        self._child = self._start()
        self._watcher = threading.Thread(
            target=self._watch, name="recflow-worker-watch", daemon=True
        )
        self._watcher.start()
        threading.Thread(target=self._listen, name="recflow-worker-signs", daemon=True).start()

    @property
    def pid(self) -> int:
        return self._child.pid

    def wake(self) -> None:
        """Tell idle workers there is work; never blocks (a full buffer is awake enough)."""
        with contextlib.suppress(OSError):
            self._ours.send(b"\0", socket.MSG_DONTWAIT)

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Let running steps finish (at most `timeout` s), then end the process."""
        with self._lock:
            self._stopping.set()
            child = self._child
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            child.send_signal(signal.SIGCONT)  # a stopped one would never see the TERM
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.error("the worker process did not stop in %g s: killed", timeout)
                child.kill()
                child.wait()
        self._watcher.join(RESTART_DELAY + 1)
        with contextlib.suppress(OSError):
            self._ours.shutdown(socket.SHUT_RDWR)  # ends `_listen`'s recv
        self._ours.close()
        self._theirs.close()
        self._config.close()

    def problem(self) -> str | None:
        """Why the workers may not be running: an exit lately, or a silence now."""
        now = time.monotonic()
        with self._lock:
            self._exits = [(at, st) for at, st in self._exits if at >= now - PROBLEM_WINDOW]
            exits, child, silent = list(self._exits), self._child, now - self._last_sign
        if exits:
            times = "once" if len(exits) == 1 else f"{len(exits)} times"
            return (
                f"the worker process exited {times} in the last {PROBLEM_WINDOW:g} s"
                f" (last status {exits[-1][1]}); see the log"
            )
        if silent > SILENT_AFTER and child.poll() is None:
            return (
                f"no sign of life from the worker process (pid {child.pid}) for {silent:.0f} s:"
                " is it stopped (SIGSTOP) or wedged?"
            )
        return None

    def _start(self) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-c", "from recflow.cli import main; main()", "worker"]
        command += ["-c", self.config_path, "--workers", str(self.workers)]
        theirs, config = self._theirs.fileno(), self._config.fileno()
        command += ["--parent-fd", str(theirs), "--config-fd", str(config)]
        child = subprocess.Popen(command, pass_fds=[theirs, config])
        self._last_sign = time.monotonic()
        logger.info("worker process started: pid %d, %d workers", child.pid, self.workers)
        return child

    def stopping(self) -> None:
        """The receiver is shutting down: start no new worker process from now.

        Called from `recflow serve`'s signal handler, ahead of `stop()`:
        a SIGTERM sent to the whole process group (systemd's default)
        also ends the worker process, which must not then be restarted.
        A plain assignment, not `Event.set`: a signal handler must not
        wait for a lock its own thread may hold.
        """
        self._shutting_down = True

    def _listen(self) -> None:
        """Note each sign of life the worker process sends, until `stop()`."""
        while True:
            try:
                data = self._ours.recv(4096)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self._last_sign = time.monotonic()

    def _watch(self) -> None:
        while True:
            status = self._child.wait()
            with self._lock:
                self._exits.append((time.monotonic(), status))
            if self._stopping.wait(RESTART_DELAY):
                return
            with self._lock:
                if self._stopping.is_set() or self._shutting_down:
                    return
                logger.error("the worker process exited (status %s): starting a new one", status)
                self._child = self._start()


def _snapshot(source: bytes) -> IO[bytes]:
    """`source` in a file only this process and its children can reach.

    Unlinked at once (readable through its descriptor alone), so that the
    secrets a config holds are not left on disk, whatever kills us.
    """
    # Open as long as the WorkerProcess is: `stop()` closes it.
    snapshot = tempfile.TemporaryFile(prefix="recflow-config-")  # noqa: SIM115
    snapshot.write(source)
    snapshot.flush()
    return snapshot


def read_snapshot(fd: int) -> bytes:
    """In the worker process: the config bytes the receiver handed over."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    os.close(fd)
    return b"".join(chunks)


def follow_parent(fd: int, wake: threading.Event) -> None:
    """In the worker process: wake on each byte from the receiver, die with it.

    Runs a daemon thread reading `fd`; bytes set `wake`; the end of the
    socket (the receiver exited or was killed) kills this process at once.
    Another sends the receiver a sign of life every `HEARTBEAT_EVERY` s.
    """

    def beat() -> None:
        while True:
            try:
                os.write(fd, b"\1")
            except OSError:
                return
            time.sleep(HEARTBEAT_EVERY)

    def read() -> None:
        while True:
            try:
                data = os.read(fd, 4096)
            except OSError:
                data = b""
            if not data:
                os.kill(os.getpid(), signal.SIGKILL)
                return
            wake.set()

    threading.Thread(target=read, name="recflow-parent-watch", daemon=True).start()
    threading.Thread(target=beat, name="recflow-heartbeat", daemon=True).start()
