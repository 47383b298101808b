"""Pieces the benchmarks share: ports, child processes, wrk, signing, journal counts.

Every server a benchmark starts listens on 127.0.0.1 on a port the kernel
picked, runs in a process of its own (so that it has its own interpreter
and its own core, as in production), and is stopped by its pid.

`python bench/_util.py emulator PORT_FILE COUNT BYTES` runs the provider
emulator of the tests in its own process, serving COUNT recordings
(`bench-000000`...) of the same real WAV of about BYTES bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"

# The tests' plugin (trivial actions), where `scripts/setup.sh --test` puts
# it: on the path of this process and of the recflow processes it starts.
_PLUGINS = TESTS / ".plugins"
if _PLUGINS.is_dir() and str(_PLUGINS) not in sys.path:
    sys.path.insert(0, str(_PLUGINS))
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(_PLUGINS), os.environ.get("PYTHONPATH")])
    )

# The provider account every benchmark config names (Twilio's id shapes).
ACCOUNT = "AC" + "b" * 32
TOKEN = "bench_auth_token"
CALLBACK_PATH = "/recordings"


# -- ports and processes --------------------------------------------------------


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server that cannot bind port 0 itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Wait until something accepts connections on `port`; exit if `process` died."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{what} did not start on port {port}") from None
            time.sleep(0.05)


def wait_port_file(path: Path, process: subprocess.Popen[bytes], what: str) -> int:
    """The port a child wrote to `path` once it listens."""
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text().strip():
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start")
        time.sleep(0.05)
    return int(path.read_text())


def stop(process: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM by pid, then SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def started(
    command: Sequence[str], *, log: Path, cwd: Path | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `command` with its output in `log`; stop it by pid when the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    try:
        yield process
    finally:
        stop(process)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A redis-server of its own, set up as the tests' (fsync on every write); its URL."""
    sys.path.insert(0, str(TESTS))
    from redis_util import redis_binary, start_redis

    if redis_binary() is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with start_redis() as server:
        yield server.url


# -- signed callbacks ------------------------------------------------------------


def callback_pairs(recording: str, status: str = "completed") -> list[tuple[str, str]]:
    """The parameters of a realistic RecordingStatusCallback for `recording`."""
    return [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA" + "c" * 32),
        ("RecordingSid", recording),
        (
            "RecordingUrl",
            f"http://127.0.0.1:9/2010-04-01/Accounts/{ACCOUNT}/Recordings/{recording}",
        ),
        ("RecordingStatus", status),
        ("RecordingDuration", "12"),
        ("RecordingChannels", "1"),
        ("RecordingSource", "DialVerb"),
    ]


def sign_form(url: str, pairs: Sequence[tuple[str, str]], key: str = TOKEN) -> str:
    """Twilio's form signature, by recflow's own signer (tens of thousands are
    needed before each run); `check_signer` holds it against Twilio's library."""
    from recflow.verify import form_signature

    return form_signature(url, pairs, key)


def check_signer(url: str) -> None:
    """Exit when `sign_form` disagrees with twilio's RequestValidator."""
    from twilio.request_validator import RequestValidator

    pairs = callback_pairs("RE-check")
    if RequestValidator(TOKEN).compute_signature(url, dict(pairs)) != sign_form(url, pairs):
        raise SystemExit("the bench's signer disagrees with twilio's")


def write_signed_bodies(url: str, prefix: str, count: int, files: int, directory: Path) -> None:
    """`files` files of `count // files` lines `signature<TAB>body`, every callback distinct."""
    per_file = count // files
    for number in range(files):
        with open(directory / f"requests-{number}.txt", "w", encoding="ascii") as out:
            for i in range(per_file):
                pairs = callback_pairs(f"RE{prefix}{number:02d}{i:09d}")
                out.write(f"{sign_form(url, pairs)}\t{urlencode(pairs)}\n")


# -- wrk ---------------------------------------------------------------------------

# Each wrk thread reads its own file of signed callbacks and sends them in
# turn; once they run out it starts over (duplicates: the bench says so).
WRK_SCRIPT = """
local requests, counter = {}, 0
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  for line in io.lines(args[1] .. "/requests-" .. id .. ".txt") do
    local signature, body = line:match("([^\\t]*)\\t(.*)")
    table.insert(requests, {signature, body})
  end
end
function request()
  counter = counter + 1
  local r = requests[(counter - 1) % #requests + 1]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded",
    ["X-Twilio-Signature"] = r[1]}, r[2])
end
"""


class WrkResult(NamedTuple):
    requests: int
    rate: float  # requests per second
    p99_ms: float
    errors: int  # non-2xx answers, socket errors and timeouts
    report: str


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def run_wrk(
    url: str, directory: Path, *, seconds: float, threads: int, connections: int
) -> WrkResult:
    """Load `url` with wrk and the signed callbacks in `directory`; its figures."""
    script = directory / "signed.lua"
    script.write_text(WRK_SCRIPT)
    result = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
         "--timeout", "10s", "-s", str(script), url, "--", str(directory)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    report = result.stdout
    if result.returncode != 0 or "Requests/sec:" not in report:
        raise SystemExit(f"wrk failed:\n{report}\n{result.stderr}")
    return parse_wrk(report)


def parse_wrk(report: str) -> WrkResult:
    """Requests, rate, p99 and errors from wrk's `--latency` report."""
    sent = int(re.search(r"(\d+) requests in", report).group(1))  # type: ignore[union-attr]
    found = re.search(r"Requests/sec:\s+([\d.]+)", report)
    if found is None:
        raise RuntimeError(f"wrk printed no rate:\n{report}")
    rate = float(found.group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", report, re.MULTILINE)
    p99_ms = float(p99.group(1)) * _UNITS[p99.group(2)] if p99 else float("nan")
    errors = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", report)
    if non_2xx:
        errors += int(non_2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return WrkResult(sent, rate, p99_ms, errors, report)


# -- the journal, read from outside ------------------------------------------------


class JournalCounts(NamedTuple):
    events: int
    owed: int  # steps queued or running
    failed: int
    done: int


def journal_counts(backend: str) -> JournalCounts:
    """Count events and step states straight from the backend's store.

    Read from outside the service, so that a benchmark checks what was
    committed rather than what the service says. Redis keeps no count of
    done steps: with one step per event, done is events - owed - failed
    (failed counts events with a failed step).
    """
    if backend.startswith("sqlite:///"):
        path = backend[len("sqlite:///") :]
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
            events = conn.execute("select count(*) from journal_events").fetchone()[0]
            states = dict(
                conn.execute("select state, count(*) from journal_steps group by state").fetchall()
            )
        owed = states.get("queued", 0) + states.get("running", 0)
        return JournalCounts(events, owed, states.get("failed", 0), states.get("done", 0))
    import redis

    prefix = "recflow:journal:"
    with redis.Redis.from_url(backend) as client:
        events = int(client.zcard(prefix + "events"))
        owed = int(client.zcard(prefix + "due")) + int(client.zcard(prefix + "running"))
        failed = int(client.zcard(prefix + "failed"))
    return JournalCounts(events, owed, failed, events - owed - failed)


def wait_drained(backend: str, timeout: float) -> JournalCounts:
    """Poll until no step is owed, or `timeout` seconds; the last counts."""
    deadline = time.monotonic() + timeout
    counts = journal_counts(backend)
    while counts.owed and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = journal_counts(backend)
    return counts


# -- the provider emulator, in a process of its own ---------------------------------


def recording_sid(number: int) -> str:
    return f"bench-{number:06d}"


def serve_emulator(port_file: str, count: int, size: int) -> None:
    """Serve `count` recordings of one real WAV of about `size` bytes until killed."""
    import uvicorn

    sys.path.insert(0, str(TESTS))
    from emulator import Emulator

    from recflow.trigger import SAMPLE_RATE, tone

    wav = tone(size / (2 * SAMPLE_RATE))
    emulator = Emulator()
    # Each request is logged with its headers; at bench counts that is a
    # few MB, and it is what the tests' emulator does.
    for number in range(count):
        emulator.add_recording(recording_sid(number), wav=wav, mp3=b"")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    emulator.base_url = f"http://127.0.0.1:{port}"
    server = uvicorn.Server(
        uvicorn.Config(
            emulator.app, loop="uvloop", http="httptools", log_level="warning",
            access_log=False, lifespan="off",
        )
    )  # fmt: skip
    Path(port_file).write_text(str(port))
    server.run(sockets=[sock])


@contextlib.contextmanager
def emulator_process(directory: Path, count: int, size: int) -> Iterator[str]:
    """The emulator in a child process; yields its API URL (SignalWire's paths)."""
    port_file = directory / "emulator-port"
    command = [sys.executable, __file__, "emulator", str(port_file), str(count), str(size)]
    with started(command, log=directory / "emulator.log") as process:
        port = wait_port_file(port_file, process, "the emulator")
        wait_port(port, process, "the emulator")
        yield f"http://127.0.0.1:{port}/api/laml/2010-04-01"


def emulator_account() -> tuple[str, str]:
    """The emulator's account id and API token."""
    sys.path.insert(0, str(TESTS))
    from emulator import ACCOUNT as EMULATED_ACCOUNT
    from emulator import TOKEN as EMULATED_TOKEN

    return EMULATED_ACCOUNT, EMULATED_TOKEN


def machine() -> str:
    """One line about where the figures come from."""
    import platform

    python = platform.python_version()
    return f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, Python {python}"


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "emulator":
        serve_emulator(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        raise SystemExit("usage: _util.py emulator PORT_FILE COUNT BYTES")
