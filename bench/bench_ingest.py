"""How fast recflow acknowledges callbacks, and how soon their steps run.

    python bench/bench_ingest.py [--requests 2000] [--concurrency 32] [--backend URL]

Three servers, each the real receiver app (verification, parsing, rules)
under uvicorn in its own process, loaded over HTTP by `wrk` (Debian's
package) with distinct callbacks signed beforehand:

1. `null`: answers after matching, without enqueueing anything;
2. `durable`: commits each callback to the backend before answering
   (grouped commits, one fsync per group);
3. `work`: durable, with two worker threads running one trivial step.

It prints callbacks acknowledged per second for 1 and 2 and their ratio,
then the time from each acknowledgement to its step done (median, p99),
measured at a low rate so that it shows the pipeline's delay, not a
backlog.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import (  # noqa: E402
    ACCOUNT,
    TOKEN,
    callback_pairs,
    check_signer,
    run_wrk,
    sign_form,
    write_signed_bodies,
)
from _util import CALLBACK_PATH as PATH  # noqa: E402

# -- the server side ----------------------------------------------------------


class _NullPipeline:
    async def submit(self, event: Any, rules: Sequence[Any]) -> bool:
        return True

    async def healthy(self) -> bool:
        return True


class _BenchPlugin:
    """A trivial step: note when it ran, for the ack-to-done latency."""

    def __init__(self) -> None:
        from recflow import hookimpl
        from recflow.plugins import ActionSpec

        def done(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
            with open(params["file"], "a", encoding="utf-8") as out:
                out.write(f"{ctx.event.recording_sid} {time.time()!r}\n")
            return {}

        @hookimpl
        def register_actions(register: Any) -> None:
            register(ActionSpec(name="bench_done", run=done))

        self.register_actions = register_actions


def serve(mode: str, config_path: str, port_file: str) -> None:
    """Run one server until killed; write its port to `port_file` when ready."""
    import uvicorn

    from recflow import config as config_module
    from recflow import pipeline, receive
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager(extra=(_BenchPlugin(),))
    config = config_module.load(config_path, host.actions)
    runtime = None
    if mode == "null":
        app = receive.create_app(config, host, _NullPipeline())
    else:
        # As `recflow serve` does: commits from a child process.
        runtime = pipeline.open_runtime(config, host, commit_process=True)
        runtime.start(2 if mode == "work" else 0)
        app = receive.create_app(config, host, runtime.pipeline)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    )
    server.run(sockets=[sock])
    if runtime is not None:
        runtime.close()


# -- the client side ----------------------------------------------------------


def _write_config(directory: Path, backend: str | None) -> Path:
    path = directory / "config.yaml"
    path.write_text(
        f"""\
server: {{path: {PATH}}}
providers:
  - name: bench
    kind: twilio
    account_sid: {ACCOUNT}
    api_token: {TOKEN}
    api_url: http://127.0.0.1:9/2010-04-01
backend: {backend or "sqlite:///./recflow.db"}
rules:
  - name: bench
    steps:
      - action: bench_done
        with: {{file: "{directory / "done.txt"}"}}
"""
    )
    return path


@contextlib.contextmanager
def _server(mode: str, config: Path) -> Iterator[str]:
    port_file = config.parent / f"port-{mode}"
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", mode, str(config), str(port_file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the {mode} server did not start")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port_file.read_text()}"
        _wait_healthy(base)
        yield base + PATH
    finally:
        process.terminate()
        process.wait(30)


def _wait_healthy(base: str) -> None:
    import httpx

    for _ in range(200):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(base + "/healthz", trust_env=False).status_code == 200:
                return
        time.sleep(0.05)
    raise SystemExit(f"{base} never became healthy")


def _signed(url: str, recording: str) -> tuple[bytes, dict[str, str]]:
    pairs = callback_pairs(recording)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": sign_form(url, pairs),
    }
    return urlencode(pairs).encode(), headers


def _rate(mode: str, directory: Path, backend: str | None, args: argparse.Namespace) -> float:
    """Callbacks acknowledged per second, measured with wrk, all distinct."""
    work = directory / mode
    work.mkdir()
    config = _write_config(work, backend)
    with _server(mode, config) as url:
        check_signer(url)
        write_signed_bodies(url, mode, args.requests, args.threads, work)
        result = run_wrk(
            url, work, seconds=args.seconds, threads=args.threads, connections=args.concurrency
        )
    if result.errors:
        raise SystemExit(f"the {mode} server refused callbacks:\n{result.report}")
    if result.requests > args.requests:
        print(
            f"  ({mode}: {result.requests} sent, more than the {args.requests} prepared:"
            " raise --requests)"
        )
    return result.rate


def _latency(directory: Path, backend: str | None, count: int) -> list[float]:
    """Seconds from sending each callback to its step done, one at a time.

    Measured from the send, not from the 204's arrival: a trivial step often
    finishes before the client has read its answer, so "ack to done" would
    be negative.
    """
    import httpx

    (directory / "work").mkdir()
    config = _write_config(directory / "work", backend)
    done_file = directory / "work" / "done.txt"
    recordings = [f"RElat{i:05d}" for i in range(count)]
    acked: dict[str, float] = {}
    with _server("work", config) as url, httpx.Client(trust_env=False) as client:
        for recording in recordings:
            body, headers = _signed(url, recording)
            acked[recording] = time.time()
            answer = client.post(url, content=body, headers=headers)
            if answer.status_code != 204:
                raise SystemExit(f"unexpected answer {answer.status_code}: {answer.text}")
            time.sleep(0.01)
        deadline = time.monotonic() + 60
        while len(_done(done_file)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    done = _done(done_file)
    return sorted(done[r] - acked[r] for r in recordings if r in done)


def _done(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    pairs = (line.split() for line in path.read_text().splitlines() if line.strip())
    return {recording: float(at) for recording, at in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk's run, per server")
    parser.add_argument("--requests", type=int, default=60000, help="distinct callbacks prepared")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--concurrency", type=int, default=32, help="connections")
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--backend", default=None, help="default: a SQLite file in a temp dir")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return

    with tempfile.TemporaryDirectory(prefix="recflow-bench-") as tmp:
        directory = Path(tmp)
        backend = args.backend or "sqlite:///./recflow.db (temp dir)"
        print(f"backend {backend}; wrk {args.seconds} s, {args.concurrency} connections")
        print(f"cpus {os.cpu_count()}")
        bare = _rate("null", directory, args.backend, args)
        print(f"answer without enqueue   {bare:8.0f} callbacks/s")
        durable = _rate("durable", directory, args.backend, args)
        print(f"durable enqueue          {durable:8.0f} callbacks/s")
        print(f"ratio bare / durable     {bare / durable:8.2f}")
        latencies = _latency(directory, args.backend, args.latency_samples)
        if not latencies:
            raise SystemExit("no step finished: see the server's log")
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"sent -> step done        median {statistics.median(latencies) * 1000:.1f} ms,"
            f" p99 {p99 * 1000:.1f} ms ({len(latencies)} samples)"
        )


if __name__ == "__main__":
    main()
