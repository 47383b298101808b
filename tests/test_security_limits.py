"""Limits of a real `recflow serve`, probed with raw sockets.

Body size, parameter count, value and header length, and time: a client
that sends its head or its body a byte at a time, or nothing at all, is
cut off after `server.read_timeout` while other clients are served. The
server runs as a subprocess with a one-second read timeout; the tests
assert what the client sees (status, closed connection), never how long
it took, beyond a generous bound that only a hang would pass.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from serve_util import ServerURL, running_server

ACCOUNT = "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
TOKEN = "limits_auth_token_58f1"
MAX_BODY = 4096
# Far more than the one-second read timeout: only a server that never
# cuts the client off takes this long.
HANG = 30.0

CONFIG = f"""\
server:
  path: /recordings
  max_body_bytes: {MAX_BODY}
  read_timeout: 1
providers:
  - name: main
    kind: twilio
    account_sid: {ACCOUNT}
    api_token: ${{LIMITS_TOKEN}}
    api_url: http://127.0.0.1:9/2010-04-01
backend: sqlite:///./var/recflow.db
workers: 1
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerURL]:
    directory = tmp_path_factory.mktemp("limits")
    path = directory / "config.yaml"
    path.write_text(CONFIG)
    path.chmod(0o600)
    with running_server(path, env={"LIMITS_TOKEN": TOKEN}) as url:
        yield url


def _connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=HANG)
    return sock


def _read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def _exchange(url: str, head: bytes, body: bytes = b"") -> int:
    """Send a request that asks for Connection: close; the status answered."""
    with _connect(url) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        return _status(_read_answer(sock))


def _head(method: str, target: str, *headers: str) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


FORM = "Content-Type: application/x-www-form-urlencoded"


@pytest.mark.parametrize(
    ("head", "body", "status"),
    [
        pytest.param(
            _head("POST", "/recordings", FORM, "Content-Length: 999999999"),
            b"",
            413,
            id="content-length-over-limit-refused-before-any-body",
        ),
        pytest.param(
            _head("POST", "/recordings", FORM, "Transfer-Encoding: chunked"),
            b"".join(f"{1000:x}\r\n".encode() + b"a" * 1000 + b"\r\n" for _ in range(6))
            + b"0\r\n\r\n",
            413,
            id="chunked-body-over-limit",
        ),
        pytest.param(
            _head("POST", "/recordings", FORM, f"Content-Length: {MAX_BODY + 1}"),
            b"RecordingUrl=" + b"x" * (MAX_BODY + 1 - 13),
            413,
            id="one-value-longer-than-the-body-limit",
        ),
        pytest.param(
            _head("POST", "/recordings", FORM, "Content-Length: 3003"),
            b"a=&" * 1001,
            400,
            id="too-many-body-parameters",
        ),
        pytest.param(
            _head("GET", "/recordings?" + "a=&" * 1001),
            b"",
            400,
            id="too-many-query-parameters",
        ),
        pytest.param(
            _head("GET", "/recordings?RecordingUrl=" + "x" * 100_000),
            b"",
            431,
            id="query-value-of-100k",
        ),
        pytest.param(
            _head("GET", "/healthz", "X-Padding: " + "p" * 100_000),
            b"",
            431,
            id="header-of-100k",
        ),
        pytest.param(
            _head("GET", "/healthz", *[f"X-H{i}: {'v' * 40}" for i in range(2000)]),
            b"",
            431,
            id="two-thousand-headers",
        ),
        pytest.param(
            _head("GET", "/healthz", "X-Padding: " + "p" * 8000),
            b"",
            200,
            id="header-of-8k-still-served",
        ),
    ],
)
def test_oversized_input_is_refused(
    server: ServerURL, head: bytes, body: bytes, status: int
) -> None:
    assert _exchange(server, head, body) == status


def _dribble(sock: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send `data` a byte at a time until the server closes or `stop` is set."""
    for byte in data:
        if stop.wait(0.1):
            return
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return


SLOW_BODY_HEAD = _head("POST", "/recordings", FORM, "Content-Length: 500").replace(
    b"Connection: close\r\n", b""
)


@pytest.mark.parametrize(
    ("head", "trickle"),
    [
        pytest.param(b"", b"", id="connection-that-sends-nothing"),
        pytest.param(
            b"", b"POST /recordings HTTP/1.1\r\nHost: 1" + b"1" * 1000, id="head-byte-by-byte"
        ),
        pytest.param(SLOW_BODY_HEAD, b"AccountSid=" + b"a" * 480, id="body-byte-by-byte"),
    ],
)
def test_slow_client_is_cut_off_and_others_are_served(
    server: ServerURL, head: bytes, trickle: bytes
) -> None:
    """The slow client gets 408 and a closed socket; meanwhile health checks pass."""
    stop = threading.Event()
    with _connect(server) as slow:
        slow.sendall(head)
        sender = threading.Thread(target=_dribble, args=(slow, trickle, stop), daemon=True)
        sender.start()
        served = [httpx.get(server + "/healthz", timeout=5).status_code for _ in range(3)]
        try:
            answer = _read_answer(slow)
        finally:
            stop.set()
            sender.join(5)

    assert served == [200, 200, 200]
    assert _status(answer) == 408
    assert b'"request timeout"' in answer


def test_many_idle_connections_do_not_starve_the_server(server: ServerURL) -> None:
    idle = [_connect(server) for _ in range(64)]
    try:
        assert httpx.get(server + "/healthz", timeout=5).status_code == 200
        answers = [_status(_read_answer(sock)) for sock in idle]
    finally:
        for sock in idle:
            sock.close()

    assert answers == [408] * len(idle)


def test_cut_off_connections_are_logged(server: ServerURL) -> None:
    with _connect(server) as sock:
        _read_answer(sock)
    deadline = time.monotonic() + HANG
    while "closed: 408 Request Timeout" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert "closed: 408 Request Timeout" in server.log()


def test_config_accepts_read_timeout_bounds(tmp_path: Path) -> None:
    from recflow import config as config_module
    from recflow.errors import ConfigError

    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace("read_timeout: 1", "read_timeout: 0"))
    with pytest.raises(ConfigError, match="read_timeout"):
        config_module.load(str(path), {})


def _send_in_pieces(
    sock: socket.socket, pieces: list[bytes], gap: float, stop: threading.Event
) -> None:
    """Send each piece `gap` seconds after the last, until the server closes or `stop` is set."""
    for number, piece in enumerate(pieces):
        if number and stop.wait(gap):
            return
        try:
            sock.sendall(piece)
        except OSError:
            return


def _slow_request(url: str, pieces: list[bytes], gap: float) -> bytes:
    """What the server answers a request sent in `pieces`, `gap` seconds apart."""
    stop = threading.Event()
    with _connect(url) as sock:
        sender = threading.Thread(
            target=_send_in_pieces, args=(sock, pieces, gap, stop), daemon=True
        )
        sender.start()
        try:
            return _read_answer(sock)
        finally:
            stop.set()
            sender.join(5)


def test_head_and_body_share_one_deadline(server: ServerURL) -> None:
    """A head whole in 0.4 s and a body 0.8 s after it: each in time, the request late."""
    body = b"AccountSid=" + b"a" * 29
    head = _head("POST", "/recordings", FORM, f"Content-Length: {len(body)}")
    pieces = [head[:20], head[20:], body[:20], body[20:]]

    answer = _slow_request(server, pieces, gap=0.4)

    assert _status(answer) == 408
    assert b'"request timeout"' in answer


def _log_lines(server: ServerURL, pattern: re.Pattern[str], count: int) -> list[str]:
    """The log lines `pattern` finds once there are `count` (or after `HANG` s)."""
    deadline = time.monotonic() + HANG
    while True:
        found = pattern.findall(server.log())
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


TIMED_OUT_LINE = re.compile(
    r"INFO recflow\.receive: callback ([0-9a-f]{16}) account=- recording=- status=- "
    r"-> 408: body not complete in time \(\d+ bytes\)$",
    re.MULTILINE,
)


def _quiet_log(server: ServerURL, pattern: re.Pattern[str], quiet: float = 2.0) -> list[str]:
    """What `pattern` finds once no new line has come for `quiet` s.

    An earlier test's request may be logged after its client read the
    408 (the log is written in batches under load): counted as "before".
    """
    found = pattern.findall(server.log())
    still_since = time.monotonic()
    while time.monotonic() - still_since < quiet:
        time.sleep(0.1)
        now = pattern.findall(server.log())
        if now != found:
            found, still_since = now, time.monotonic()
    return found


def test_a_body_cut_short_is_logged_as_408_under_its_request_id(server: ServerURL) -> None:
    before = _quiet_log(server, TIMED_OUT_LINE)
    with _connect(server) as sock:
        sock.sendall(SLOW_BODY_HEAD + b"AccountSid=")
        answer = _read_answer(sock)

    logged = _log_lines(server, TIMED_OUT_LINE, len(before) + 1)

    assert _status(answer) == 408
    assert len(logged) == len(before) + 1
    request_id = logged[-1]
    assert request_id not in before
    # One line for that request: not also a 400 for a client that went away.
    assert len(re.findall(rf"callback {request_id} ", server.log())) == 1


def test_a_413_whose_body_never_comes_gets_one_answer_then_a_closed_connection(
    server: ServerURL,
) -> None:
    """Refused at once from Content-Length; the deadline then closes, answering nothing more."""
    keep_alive = _head("POST", "/recordings", FORM, "Content-Length: 999999").replace(
        b"Connection: close\r\n", b""
    )
    with _connect(server) as sock:
        sock.sendall(keep_alive)
        answer = _read_answer(sock)  # returns once the server has closed

    assert _status(answer) == 413
    assert answer.count(b"HTTP/1.1 ") == 1
    assert answer.endswith(b'{"error":"body too large"}')


def test_a_header_that_never_ends_is_refused_once_past_the_cap(server: ServerURL) -> None:
    """The parser would keep an unfinished header whole: 431 once its bytes pass 32 KiB."""
    start = b"POST /recordings HTTP/1.1\r\nHost: x\r\nX-Padding: "
    chunk = b"a" * (256 * 1024)
    sent = 0
    with _connect(server) as sock:
        sock.sendall(start)
        with contextlib.suppress(OSError):  # refused and closed while we still send
            for _ in range(64):  # 16 MiB if nothing stopped it
                sock.sendall(chunk)
                sent += len(chunk)
        answer = _read_answer(sock)

    assert _status(answer) == 431
    # Cut off early: without the cap the server reads all 16 MiB, then says 408.
    assert sent < 64 * len(chunk)
