"""The receiver's commits, made by a process of its own.

`recflow serve` answers a callback only once it is committed. Committing
from a thread of the receiver's own process made that thread and the
event loop share one GIL: each SQLite or Redis call lets go of it and
then waits for the event loop to give it back, which tripled the time a
group of callbacks took to commit and left the event loop idle, waiting,
at a few thousand callbacks a second (`bench/bench_peers.py`).

`CommitProcess` starts `python -m recflow.commit_process` beside the
receiver, joined to it by a socket pair. The receiver sends the events it
accepted, in frames of many (one per turn of its event loop); the child
commits whatever has arrived in one transaction (`Journal.record_and_enqueue`,
the same call the committer thread makes), then answers each event: new,
known, or the error that kept it from the disk. The receiver's event loop
reads the answers itself, as it reads its connections.

Frames are a 4-byte big-endian length and a pickle. Pickle is safe here:
both ends are this code, on a socket pair no one else holds.

If the child dies, every event it had not answered fails (`BackendError`,
a 503 the provider retries), and the next submission starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import operator
import pickle
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from recflow.errors import BackendError
from recflow.journal import Journal, NewEvent, open_journal
from recflow.log_output import counted
from recflow.queue import Backend

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
# A NewEvent as the tuple of its fields, in order (shallow, unlike `astuple`).
_fields_of = operator.attrgetter(*(field.name for field in dataclasses.fields(NewEvent)))
# Socket buffers deep enough that the event loop's send never waits while
# the child commits a group.
_BUFFER = 4 * 1024 * 1024
# How long a closing receiver waits for the child to commit what it sent,
# and how long a child may take to start.
CLOSE_WAIT = 10.0
_START_WAIT = 60.0
# Bytes of frames the child may fall behind by before callbacks get 503.
MAX_BEHIND = 64 * 1024 * 1024
# How long the child waits for a group to fill under load, in all and
# between two frames, in seconds (see `_gather`).
LINGER = 0.002
LINGER_GAP = 0.0005
# The SQLite write-ahead log's size, in pages, past which a commit checkpoints
# it (`_open_journal`). Side by side: ~15% more callbacks a second than at
# SQLite's default of 1,000, for ~5 ms more at the p99 (bench/README.md).
CHECKPOINT_PAGES = 4000
# The child's first frame when it has opened the backend; else why not.
_READY = "ready"

# One answer: new (True), known (False), or why the commit failed (a str).
Answer = bool | str
OnAnswers = Callable[[list[tuple[int, Answer]]], None]


class CommitProcess:
    """The receiver's end: send numbered events, get their answers back.

    `send` is called from the event loop that submits; the child's answers
    are read in that loop too (`loop.add_reader`), and handed to
    `on_answers` as `(number, answer)` pairs, so no thread of the receiver
    ever waits for the GIL on their account. `on_lost` gets the numbers a
    dead child never answered, with the reason.
    """

    def __init__(
        self,
        backend: str,
        base_dir: str,
        on_answers: OnAnswers,
        on_lost: Callable[[list[int], str], None],
    ) -> None:
        self.backend = backend
        self.base_dir = base_dir
        self._on_answers = on_answers
        self._on_lost = on_lost
        self._child: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buffer = bytearray()  # answers received, not yet a whole frame
        self._out = bytearray()  # frames not yet taken by the socket
        self._writing = False  # the loop watches the socket to send `_out`
        self._sent: set[int] = set()
        self._closed = False
        self._starts = 0
        self._start()

    def send(
        self, items: Sequence[tuple[int, NewEvent]], loop: asyncio.AbstractEventLoop | None
    ) -> None:
        """Send events to commit, from `loop`'s thread, which will read the answers.

        Never blocks: what the socket cannot take now waits in a buffer and
        goes out when it can (`loop.add_writer`). Raises `BackendError` when
        no child can take them (none starts), or when the child has fallen
        `MAX_BEHIND` bytes behind (stalled: the receiver answers 503 rather
        than hold ever more callbacks in memory).
        """
        if self._closed:
            raise BackendError("the pipeline is closed")
        if len(self._out) > MAX_BEHIND:
            raise BackendError(
                f"the commit process is not keeping up ({len(self._out)} bytes not yet sent)"
            )
        if self._child is not None and self._child.poll() is not None:
            # Died while idle, before the loop read the end of its socket.
            self._gone("the commit process exited")
        if self._sock is None:
            self._start()
        if loop is not None and self._loop is not loop:
            self._attach(loop)
        # Plain tuples: they pickle in a fraction of the time a dataclass takes.
        self._out += _frame([(number, _fields_of(event)) for number, event in items])
        self._sent.update(number for number, _ in items)
        self._write_out()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop reading the answers, once a send named it."""
        return self._loop

    def close(self) -> None:
        """Let the child commit what it was sent and answer it, then stop it.

        Bounded: after `CLOSE_WAIT` seconds in all, a child that has not
        finished (stalled on a lock, say) is killed, and what it had not
        answered is reported lost.
        """
        if self._closed:
            return
        self._closed = True
        sock, child = self._sock, self._child
        if sock is None or child is None:
            return
        self._detach()
        deadline = time.monotonic() + CLOSE_WAIT
        reason = "the commit process stopped as the receiver closed"
        try:
            sock.settimeout(CLOSE_WAIT)
            if self._out:
                sock.sendall(self._out)
                self._out.clear()
            # The child reads to the end, commits, answers, and exits.
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(_BUFFER):
                self._take(data)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
        except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
            reason = f"the commit process did not finish in {CLOSE_WAIT:g} s: {exc}"
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
        self._gone(reason)

    # -- the child ---------------------------------------------------------------

    def _start(self) -> None:
        """Start a child; it says whether it opened the backend before anything else."""
        ours, theirs = socket.socketpair()
        for sock in (ours, theirs):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        # The backend URL may hold a password: it goes over the socket, not
        # on the command line, which any local user can read with `ps`.
        command = [sys.executable, "-m", "recflow.commit_process", str(theirs.fileno())]
        try:
            child = subprocess.Popen(command, pass_fds=[theirs.fileno()])
        except OSError as exc:
            ours.close()
            raise BackendError(f"cannot start the commit process: {exc}") from exc
        finally:
            theirs.close()
        try:
            ours.settimeout(_START_WAIT)
            ours.sendall(_frame((self.backend, self.base_dir)))
            hello = _read_frame(ours)
            ours.settimeout(None)
        except (OSError, EOFError, pickle.UnpicklingError) as exc:
            hello = f"no word from it in {_START_WAIT:g} s ({exc})"
        if hello != _READY:
            ours.close()
            child.kill()
            child.wait()
            raise BackendError(f"the commit process did not start: {hello or 'it exited'}")
        self._child, self._sock = child, ours
        self._buffer.clear()
        self._out.clear()
        self._starts += 1
        if self._starts > 1:
            logger.warning("commit process restarted: pid %d", child.pid)
        else:
            logger.info("commit process started: pid %d", child.pid)

    def _write_out(self) -> None:
        """Send what the socket takes now; the loop sends the rest when it can."""
        sock = self._sock
        if sock is None:
            return
        if self._out:
            try:
                sent = sock.send(self._out, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._gone(f"the commit process is gone: {exc}")
                return
            del self._out[:sent]
        waiting = bool(self._out)
        if waiting != self._writing and self._loop is not None:
            if waiting:
                self._loop.add_writer(sock.fileno(), self._write_out)
            else:
                self._loop.remove_writer(sock.fileno())
            self._writing = waiting

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None and not self._loop.is_closed():
            raise BackendError("the commit process serves one event loop at a time")
        assert self._sock is not None
        loop.add_reader(self._sock.fileno(), self._readable)
        self._loop = loop

    def _detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._sock is not None and not loop.is_closed():
            loop.remove_reader(self._sock.fileno())
            if self._writing:
                loop.remove_writer(self._sock.fileno())
        self._writing = False

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(_BUFFER, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._gone(f"the commit process stopped: {exc}")
            return
        if not data:
            self._gone("the commit process stopped")
            return
        try:
            self._take(data)
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            self._gone(f"the commit process sent garbage: {exc}")

    def _take(self, data: bytes) -> None:
        """Hand over the answers of every whole frame received so far."""
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH.size:
            (size,) = _LENGTH.unpack_from(buffer)
            end = _LENGTH.size + size
            if len(buffer) < end:
                break
            answers = pickle.loads(buffer[_LENGTH.size : end])  # noqa: S301 - see the module doc
            del buffer[:end]
            self._sent.difference_update(number for number, _ in answers)
            self._on_answers(answers)

    def _gone(self, reason: str) -> None:
        """The child has stopped or must: fail what it never answered."""
        self._detach()
        sock, child = self._sock, self._child
        self._sock = self._child = None
        if sock is not None:
            # Answers it wrote before it died still count.
            with contextlib.suppress(OSError, EOFError, pickle.UnpicklingError, ValueError):
                while data := sock.recv(_BUFFER, socket.MSG_DONTWAIT):
                    self._take(data)
            sock.close()
        status = None
        if child is not None:
            if child.poll() is None and not self._closed:
                child.kill()  # alive but unusable (garbage, a dead socket): replaced
            try:
                status = child.wait(2)
            except subprocess.TimeoutExpired:
                child.kill()
                status = child.wait()
        self._out.clear()
        lost, self._sent = sorted(self._sent), set()
        if lost:
            answered = "not answered: the receiver is stopping" if self._closed else "answered 503"
            logger.error(
                "%s (exit status %s); %s not committed, %s",
                reason,
                status,
                counted(len(lost), "callback"),
                answered,
            )
        elif status not in (0, None) and not self._closed:
            logger.warning("%s (exit status %s); no callback was waiting on it", reason, status)
        if lost:
            self._on_lost(lost, reason)


def _frame(payload: Any) -> bytes:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    """`size` bytes, or None at the end of the stream before the first."""
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, _BUFFER))
        if not chunk:
            if chunks:
                raise EOFError("the stream ended inside a frame")
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _read_frame(sock: socket.socket) -> Any:
    head = _read_exact(sock, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    body = _read_exact(sock, size)
    if body is None:
        raise EOFError("the stream ended inside a frame")
    return pickle.loads(body)  # noqa: S301 - our own child, over a private socket pair


# -- the child ---------------------------------------------------------------------


def _pending_frames(sock: socket.socket) -> list[Any]:
    """Frames that have already arrived, read without waiting for more."""
    frames = []
    sock.setblocking(False)
    try:
        while True:
            try:
                head = sock.recv(_LENGTH.size, socket.MSG_PEEK)
            except BlockingIOError:
                break
            if len(head) < _LENGTH.size:
                break
            sock.setblocking(True)
            frame = _read_frame(sock)
            sock.setblocking(False)
            if frame is None:
                break
            frames.append(frame)
    finally:
        sock.setblocking(True)
    return frames


def _events(frame: list[tuple[int, tuple[Any, ...]]]) -> list[tuple[int, NewEvent]]:
    return [(number, NewEvent(*fields)) for number, fields in frame]


def _gather(
    sock: socket.socket, items: list[tuple[int, NewEvent]], previous: int
) -> list[tuple[int, NewEvent]]:
    """`items` and whatever else arrives in time to share their commit.

    Frames that came while the last group committed always join. Under
    load (the last group had company), the child also waits up to `LINGER`
    seconds, `LINGER_GAP` at most between two frames, for the group to
    reach the last one's size: a commit costs mostly its fsync, whatever
    its size, so a fuller group costs less per callback.
    """
    deadline = time.monotonic() + LINGER if previous > 1 else 0.0
    while True:
        for frame in _pending_frames(sock):
            items.extend(_events(frame))
        wait = deadline - time.monotonic()
        if len(items) >= previous or wait <= 0:
            return items
        readable, _, _ = select.select([sock], [], [], min(wait, LINGER_GAP))
        if not readable:
            return items


def _open_journal(backend: Backend) -> Journal:
    """The journal the child commits to.

    On SQLite, the commit that takes the write-ahead log past a threshold
    also checkpoints it: copies its pages into the database and syncs the
    file, several times an ordinary commit's time, while every callback in
    the group and behind it waits. A higher threshold than SQLite's 1,000
    pages makes those commits rarer and each cheaper per page (a page
    written many times is copied once). The log grows to about 16 MB and is
    reused from its start after each checkpoint.
    """
    if backend.kind != "sqlite":
        return open_journal(backend)
    from recflow.journal_sqlite import SqliteJournal

    return SqliteJournal(backend.location, checkpoint_pages=CHECKPOINT_PAGES)


def serve(sock: socket.socket) -> None:
    """Commit what arrives on `sock` until the receiver closes its end.

    The first frame names the backend: (URL, base directory).
    """
    from recflow.queue import StepQueue, parse_backend

    opening = _read_frame(sock)
    if opening is None:
        return
    backend_url, base_dir = opening
    try:
        backend = parse_backend(backend_url, base_dir)
        journal = _open_journal(backend)
        queue = StepQueue(backend)
    except BackendError as exc:
        sock.sendall(_frame(str(exc)))
        return
    sock.sendall(_frame(_READY))
    # What is loaded now lives as long as the process: out of the cyclic
    # collector's full passes (as `recflow serve` does for itself).
    gc.freeze()
    previous = 1
    while (first := _read_frame(sock)) is not None:
        items = _gather(sock, _events(first), previous)
        previous = len(items)
        try:
            fresh = journal.record_and_enqueue([event for _, event in items], time.time(), queue)
            answers: list[tuple[int, Answer]] = [
                (number, new) for (number, _), new in zip(items, fresh, strict=True)
            ]
        except Exception as exc:
            answers = [(number, str(exc) or type(exc).__name__) for number, _ in items]
        sock.sendall(_frame(answers))
    journal.close()


def main(argv: Sequence[str] | None = None) -> None:
    """The child's entry point: `python -m recflow.commit_process FD`.

    It logs nothing itself (the receiver has the secrets to mask, and logs
    what the child answers). Ctrl-C and SIGTERM reach the whole process
    group; the child ignores them and stops once the receiver, shutting
    down, closes its end, or dies.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    fd = int(args[0])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.disable(logging.CRITICAL)
    serve(socket.socket(fileno=fd))


if __name__ == "__main__":
    main()
