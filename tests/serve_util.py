"""Run the real `recflow serve` as a subprocess for end-to-end tests.

    with running_server(config_path, env={"KEY": "..."}) as url:
        httpx.post(url.callback_url, ...)
        url.process.kill()            # a crash test's kill -9

`url` is the base URL (``http://127.0.0.1:PORT``) as a `str`, with the
callback URL, the process and its log files as attributes. The server
listens on a free port picked by the kernel (port 0) unless `listen`
says otherwise, so a restarted server can take over the same address.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlencode

import httpx

_LISTENING = re.compile(r"recflow listening on (http://\S+?:\d+)(\S*)")


class ServerURL(str):
    """The base URL of a running server, with what a test needs to reach it."""

    process: subprocess.Popen[bytes]
    callback_url: str
    stdout_path: Path
    stderr_path: Path

    def log(self) -> str:
        """Everything the server logged so far (its stderr)."""
        return self.stderr_path.read_text(errors="replace")


@contextlib.contextmanager
def running_server(
    config_path: str | os.PathLike[str],
    *,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    listen: str = "127.0.0.1:0",
    timeout: float = 30.0,
) -> Iterator[ServerURL]:
    """Start `recflow serve -c CONFIG --listen LISTEN [args]`; stop it on exit.

    Waits until `/healthz` answers 200; raises RuntimeError with the
    server's log when it exits or does not become healthy in `timeout`
    seconds. On exit: SIGTERM, then SIGKILL if it has not stopped after
    15 s. `env` is added to this process's environment.
    """
    # Absolute, symlinks kept: serve is started on the path as given.
    config_path = Path(os.path.abspath(config_path))
    logs = Path(tempfile.mkdtemp(prefix="recflow-serve-"))
    # Tests read the logs after the server stopped: remove them at exit.
    atexit.register(shutil.rmtree, logs, ignore_errors=True)
    stdout_path, stderr_path = logs / "stdout.txt", logs / "stderr.txt"
    command = [
        sys.executable,
        "-c",
        "from recflow.cli import main; main()",
        "serve",
        "-c",
        str(config_path),
        "--listen",
        listen,
        *args,
    ]
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            cwd=config_path.parent,
            env={**os.environ, **(env or {})},
        )
    try:
        url = _wait_until_healthy(process, stdout_path, stderr_path, timeout)
        yield url
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 15.0) -> int:
    """SIGTERM the server by pid, SIGKILL it after `grace` s; its exit code."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _wait_until_healthy(
    process: subprocess.Popen[bytes], stdout_path: Path, stderr_path: Path, timeout: float
) -> ServerURL:
    deadline = time.monotonic() + timeout
    url: ServerURL | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if url is None:
            found = _LISTENING.search(stdout_path.read_text(errors="replace"))
            if found:
                url = ServerURL(found.group(1))
                url.callback_url = found.group(1) + found.group(2)
                url.process = process
                url.stdout_path, url.stderr_path = stdout_path, stderr_path
        if url is not None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/healthz", timeout=2, trust_env=False).status_code == 200:
                    return url
        time.sleep(0.05)
    stop(process)
    raise RuntimeError(
        f"recflow serve did not become healthy (exit code {process.returncode}):\n"
        + stdout_path.read_text(errors="replace")
        + stderr_path.read_text(errors="replace")[-4000:]
    )


def signed_form(
    url: str, pairs: Sequence[tuple[str, str]], key: str, header: str = "X-SignalWire-Signature"
) -> tuple[bytes, dict[str, str]]:
    """A form body and the headers a provider would send with it to `url`.

    Signed with Twilio's own `RequestValidator`, so tests do not trust
    recflow's signer to check recflow's verifier.
    """
    from starlette.datastructures import MultiDict
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(key).compute_signature(url, MultiDict(list(pairs)))
    headers = {"Content-Type": "application/x-www-form-urlencoded", header: signature}
    return urlencode(list(pairs)).encode(), headers
