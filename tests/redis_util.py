"""A throwaway redis-server for the tests that run recflow on Redis.

    from redis_util import redis_url  # a fixture: a flushed database's URL

One server per test session, started from Debian's binary on a free
127.0.0.1 port in a temporary directory, stopped by pid at the end; each
test gets it flushed. It runs as production should: no RDB snapshots,
the append-only file on, and `appendfsync always`, so that a write Redis
acknowledged is on disk (the journal's promise to a provider); at the
handful of writes a test makes, the fsyncs cost nothing noticeable.
Without the binary, every test that asks for Redis is skipped with how to
install it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from port_util import free_port

SKIP_REASON = "redis-server not installed (apt-get install redis-server)"


def redis_binary() -> str | None:
    """The redis-server to run: Debian's, else the first on PATH."""
    if os.access("/usr/bin/redis-server", os.X_OK):
        return "/usr/bin/redis-server"
    return shutil.which("redis-server")


class RedisServer:
    """A running redis-server: its URL, process and directory."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, directory: Path) -> None:
        self.process = process
        self.port = port
        self.directory = directory
        self.url = f"redis://127.0.0.1:{port}/0"

    def client(self) -> object:
        import redis

        return redis.Redis.from_url(self.url)

    def flush(self) -> None:
        import redis

        with redis.Redis.from_url(self.url) as client:
            client.flushall()


@contextlib.contextmanager
def start_redis(
    directory: Path | None = None, port: int | None = None, timeout: float = 10.0
) -> Iterator[RedisServer]:
    """Start redis-server on `port` (default: a free one); stop it by pid on exit.

    A server started again on the same directory and port reads back the
    append-only file: what the first one acknowledged is still there.
    """
    binary = redis_binary()
    if binary is None:
        pytest.skip(SKIP_REASON)
    own_directory = directory is None
    directory = Path(directory or tempfile.mkdtemp(prefix="recflow-redis-"))
    for _ in range(1 if port else 5):  # the free port may be taken before the start
        port = port or free_port()
        process = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--dir", str(directory),
                "--save", "",
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--logfile", str(directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if _wait_ready(process, port, timeout):
            break
        _stop(process)
        port = None
    else:
        raise RuntimeError(f"redis-server did not start; see {directory / 'redis.log'}")
    try:
        yield RedisServer(process, port, directory)
    finally:
        _stop(process)
        if own_directory:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of an empty Redis database."""
    redis_server.flush()
    return redis_server.url


def _wait_ready(process: subprocess.Popen[bytes], port: int, timeout: float) -> bool:
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return True
            time.sleep(0.02)
        return False
    finally:
        client.close()


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh backend URL, once for SQLite and once for Redis."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'recflow.db'}"
    return str(request.getfixturevalue("redis_url"))
