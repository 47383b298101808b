"""Callbacks per second and p99 answer latency: recflow beside its peers.

    .venv/bin/python bench/bench_peers.py [--seconds 5] [--connections 32] [--only bare,sqlite]
    .venv/bin/python bench/bench_peers.py --quick

Side by side in one run, each server in its own process on a free
127.0.0.1 port, each loaded by `wrk` (Debian's package) with the same
32 connections and signed, distinct form callbacks (a repeated callback
would be a duplicate that recflow answers without enqueueing anything):

- `bare`: a Starlette app that parses the form and answers 204; the
  ceiling, under the same uvicorn settings as `recflow serve` (uvloop,
  httptools with recflow's header limits, no access log);
- `sqlite`: `recflow serve` on SQLite with two worker threads running a
  trivial step (the one-machine setup);
- `sqlite-receive`: the same with `--no-worker`, a worker started after
  the run to drain; what durable enqueue alone costs;
- `redis`: `recflow serve --no-worker` on a redis-server of its own
  (`appendfsync always`) and a `recflow worker` process beside it;
- `webhook`, `webhook-after`: Debian's `webhook` (Go) with a hook whose
  trigger rule matches `RecordingStatus` and runs a shell script that
  appends one line per run, answering before the command runs (its
  default) or after (`include-command-output-in-response`).

It prints requests per second, p99 latency and the share of the bare
ceiling, then checks the work: for recflow, once drained, every
acknowledged callback is an event in the journal with its step done; for
webhook, the lines its command wrote. `webhook` checks no signature (it
has no rule for Twilio's scheme); recflow checks every one.

The recflow steps come from the `recflow-testactions` plugin of the tests
(`scripts/setup.sh --test` installs it in tests/.plugins).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import stat
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

MODES = ("bare", "sqlite", "sqlite-receive", "redis", "webhook", "webhook-after")
RECFLOW = (sys.executable, "-c", "from recflow.cli import main; main()")
_LISTENING = re.compile(r"recflow listening on http://127\.0\.0\.1:(\d+)")


# -- the bare ceiling -------------------------------------------------------------


def serve_bare(port_file: str) -> None:
    """Parse the form, answer 204: the least any receiver must do."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    from recflow import http_limits

    async def callback(request: Request) -> Response:
        form = await request.form()
        if "RecordingSid" not in form:
            return Response(status_code=400)
        return Response(status_code=204)

    app = Starlette(routes=[Route(_util.CALLBACK_PATH, callback, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            loop="uvloop",
            http=http_limits.protocol_class(10.0),
            timeout_keep_alive=5,
            lifespan="off",
            access_log=False,
            log_level="warning",
            proxy_headers=False,
            server_header=False,
        )
    )
    Path(port_file).write_text(str(sock.getsockname()[1]))
    server.run(sockets=[sock])


@contextlib.contextmanager
def bare_server(work: Path) -> Iterator[str]:
    port_file = work / "port"
    command = [sys.executable, __file__, "--serve-bare", str(port_file)]
    with _util.started(command, log=work / "server.log") as process:
        port = _util.wait_port_file(port_file, process, "the bare app")
        _util.wait_port(port, process, "the bare app")
        yield f"http://127.0.0.1:{port}{_util.CALLBACK_PATH}"


# -- recflow ----------------------------------------------------------------------


def write_config(work: Path, backend: str) -> Path:
    path = work / "config.yaml"
    path.write_text(
        f"""\
server: {{path: {_util.CALLBACK_PATH}}}
providers:
  - name: bench
    kind: twilio
    account_sid: {_util.ACCOUNT}
    api_token: {_util.TOKEN}
    api_url: http://127.0.0.1:9/2010-04-01
backend: {backend}
workers: 2
rules:
  - name: bench
    when: {{status: completed}}
    steps:
      - action: t_echo
        with: {{recording: "{{{{ event.recording_sid }}}}"}}
"""
    )
    return path


@contextlib.contextmanager
def recflow_server(work: Path, config: Path, *args: str) -> Iterator[str]:
    """`recflow serve` on a free port; yields its callback URL once healthy."""
    import httpx

    log = work / "server.log"
    command = [*RECFLOW, "serve", "-c", str(config), "--listen", "127.0.0.1:0", *args]
    with _util.started(command, log=log, cwd=work) as process:
        deadline = time.monotonic() + 60
        while not (found := _LISTENING.search(log.read_text(errors="replace"))):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"recflow serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        base = f"http://127.0.0.1:{found.group(1)}"
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/healthz", trust_env=False).status_code == 200:
                    break
            time.sleep(0.05)
        else:
            raise SystemExit(f"recflow serve never became healthy:\n{log.read_text()[-3000:]}")
        yield base + _util.CALLBACK_PATH


@contextlib.contextmanager
def recflow_worker(work: Path, config: Path, workers: int = 2) -> Iterator[None]:
    command = [*RECFLOW, "worker", "-c", str(config), "--workers", str(workers)]
    with _util.started(command, log=work / "worker.log", cwd=work):
        yield


# -- webhook (Go) -----------------------------------------------------------------


@contextlib.contextmanager
def webhook_server(work: Path, answer_after: bool) -> Iterator[str]:
    """Debian's webhook with one hook that appends a line per command run."""
    ran = work / "ran.txt"
    script = work / "append.sh"
    script.write_text(f'#!/bin/sh\necho "$1" >> {ran}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    hook = {
        "id": "recording",
        "execute-command": str(script),
        "command-working-directory": str(work),
        "pass-arguments-to-command": [{"source": "payload", "name": "RecordingSid"}],
        "include-command-output-in-response": answer_after,
        "trigger-rule": {
            "match": {
                "type": "value",
                "value": "completed",
                "parameter": {"source": "payload", "name": "RecordingStatus"},
            }
        },
    }
    hooks = work / "hooks.json"
    hooks.write_text(json.dumps([hook]))
    for _ in range(5):  # the free port may be taken before webhook binds it
        port = _util.free_port()
        # -logfile logs each request, as recflow serve does; it also records
        # the commands that could not start.
        command = ["webhook", "-hooks", str(hooks), "-ip", "127.0.0.1", "-port", str(port),
                   "-logfile", str(work / "webhook.log")]  # fmt: skip
        with _util.started(command, log=work / "server.log") as process:
            try:
                _util.wait_port(port, process, "webhook", timeout=10)
            except SystemExit:
                continue
            yield f"http://127.0.0.1:{port}/hooks/recording"
            return
    raise SystemExit("webhook did not start")


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as stream:
        return sum(1 for _ in stream)


def wait_lines(path: Path, expected: int, timeout: float) -> int:
    """Lines in `path` once it reaches `expected` or stops growing for 2 s."""
    deadline = time.monotonic() + timeout
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = count_lines(path)
        if now >= expected:
            return now
        if now != last:
            last, still_since = now, time.monotonic()
        elif time.monotonic() - still_since > 2:
            return now
        time.sleep(0.1)
    return count_lines(path)


# -- one measurement ----------------------------------------------------------------


def measure(
    mode: str, root: Path, args: argparse.Namespace, redis_url: str | None, round_: int = 0
) -> dict:
    """Load one server with wrk; its figures and what the check of its work found."""
    work = root / f"{mode}-{round_}"
    work.mkdir()
    load = {"seconds": args.seconds, "threads": args.threads, "connections": args.connections}
    with contextlib.ExitStack() as stack:
        backend = ""
        config = None
        if mode == "bare":
            url = stack.enter_context(bare_server(work))
        elif mode.startswith("webhook"):
            url = stack.enter_context(webhook_server(work, mode == "webhook-after"))
        else:
            if mode == "redis":
                assert redis_url is not None
                backend = redis_url
                _flush_redis(redis_url)
            else:
                backend = f"sqlite:///{work / 'recflow.db'}"
            config = write_config(work, backend)
            extra = () if mode == "sqlite" else ("--no-worker",)
            url = stack.enter_context(recflow_server(work, config, *extra))
            if mode == "redis":
                stack.enter_context(recflow_worker(work, config))
        prefix = f"{MODES.index(mode)}{round_}"
        _util.write_signed_bodies(url, prefix, args.prepared, args.threads, work)
        result = _util.run_wrk(url, work, **load)
        figures = {"mode": mode, "rate": result.rate, "p99_ms": result.p99_ms,
                   "requests": result.requests, "errors": result.errors}  # fmt: skip
        if config is not None:
            if mode == "sqlite-receive":
                stack.enter_context(recflow_worker(work, config))
            counts = _util.wait_drained(backend, timeout=args.drain_timeout)
            figures["check"] = check_recflow(result.requests, args.prepared, counts)
        elif mode.startswith("webhook"):
            ran = wait_lines(work / "ran.txt", result.requests, timeout=args.drain_timeout)
            log = (work / "webhook.log").read_text(errors="replace")
            failed = log.count("error occurred")
            figures["check"] = (
                f"commands run {ran} of {result.requests} answered"
                f" ({failed} failed to start, logged only)"
            )
        if result.errors:
            figures["check"] = f"{figures.get('check', '')}; {result.errors} errors".lstrip("; ")
    return figures


def check_recflow(acked: int, prepared: int, counts: _util.JournalCounts) -> str:
    """Whether every acknowledged callback became an event whose step is done.

    wrk counts the answers it read before its time ran out; callbacks in
    flight then may be recorded too, so events may exceed that count.
    """
    distinct = min(acked, prepared)
    ok = counts.events >= distinct and counts.done == counts.events and not counts.failed
    verdict = "ok" if ok else "MISSING WORK"
    note = f" ({acked - prepared} repeats: raise --prepared)" if acked > prepared else ""
    return (
        f"{verdict}: {counts.events} events for {acked} answers{note},"
        f" {counts.done} steps done, {counts.owed} owed, {counts.failed} failed"
    )


def _flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5, help="wrk's run per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--prepared", type=int, default=80000, help="distinct signed callbacks")
    parser.add_argument("--rounds", type=int, default=3, help="runs of every server, interleaved")
    parser.add_argument("--only", default=",".join(MODES), help=f"of {','.join(MODES)}")
    parser.add_argument("--drain-timeout", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="1 s per server, 1 round")
    parser.add_argument("--workdir", help="keep configs and logs here (default: a temp dir)")
    parser.add_argument("--serve-bare", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare)
        return
    if args.quick:
        args.seconds, args.prepared, args.rounds = 1, 20000, 1
    modes = [mode for mode in args.only.split(",") if mode]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {', '.join(unknown)}; known: {', '.join(MODES)}")

    _util.check_signer(f"http://127.0.0.1:1{_util.CALLBACK_PATH}")
    print(f"machine: {_util.machine()}")
    print(
        f"load: wrk {args.threads} thread, {args.connections} connections,"
        f" {args.seconds} s each, {args.rounds} rounds"
    )
    rounds: list[dict[str, dict]] = []
    with contextlib.ExitStack() as stack:
        tmp = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="peers-"))
        redis_url = stack.enter_context(_util.redis_server()) if "redis" in modes else None
        # Every server once per round, in turn: a slow spell of the machine
        # then weighs on all of them, not on one.
        for number in range(args.rounds):
            print(f"round {number + 1}:")
            rows: dict[str, dict] = {}
            for mode in modes:
                rows[mode] = measure(mode, Path(tmp), args, redis_url, number)
                _print_row(rows[mode], rows.get("bare"))
            rounds.append(rows)
    report(rounds, modes)
    if any("MISSING WORK" in row.get("check", "") for rows in rounds for row in rows.values()):
        raise SystemExit("recflow acknowledged callbacks whose work is missing: see above")


def _print_row(row: dict, bare: dict | None) -> None:
    share = f"{row['rate'] / bare['rate'] * 100:5.0f}%" if bare else "    -"
    print(
        f"{row['mode']:>15}: {row['rate']:8.0f} req/s  p99 {row['p99_ms']:8.1f} ms"
        f"  {share} of bare  {row.get('check', '')}",
        flush=True,
    )


def report(rounds: list[dict[str, dict]], modes: list[str]) -> None:
    """Medians over the rounds, shares of bare per round, and the issue's two goals.

    A share is taken within one round (a server beside the bare app run
    just before it), then the median of those is reported.
    """
    print("medians:")
    shares: dict[str, float] = {}
    for mode in modes:
        rate = statistics.median(rows[mode]["rate"] for rows in rounds)
        p99 = statistics.median(rows[mode]["p99_ms"] for rows in rounds)
        line = f"{mode:>15}: {rate:8.0f} req/s  p99 {p99:8.1f} ms"
        if "bare" in modes:
            shares[mode] = statistics.median(
                rows[mode]["rate"] / rows["bare"]["rate"] for rows in rounds
            )
            line += f"  {shares[mode] * 100:5.0f}% of bare"
        print(line)
    durable = shares.get("sqlite-receive")
    if durable is not None:
        verdict = "met" if durable >= 0.6 else "NOT met"
        print(
            f"goal: recflow on SQLite with durable enqueue (serve --no-worker) >= 60% of bare:"
            f" {durable * 100:.0f}%, {verdict}"
        )
    if "webhook-after" in modes:
        after = statistics.median(rows["webhook-after"]["rate"] for rows in rounds)
        for mode in ("sqlite-receive", "sqlite", "redis"):
            if mode in modes:
                ratio = statistics.median(rows[mode]["rate"] for rows in rounds) / after
                verdict = "met" if ratio > 1 else "NOT met"
                print(f"goal: {mode} ahead of webhook-after: {ratio:.2f}x, {verdict}")


if __name__ == "__main__":
    main()
