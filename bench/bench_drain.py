"""How fast workers drain a backlog of `store` steps, and how that scales with workers.

    .venv/bin/python bench/bench_drain.py [--steps 500] [--workers 1,2,4,8]
    .venv/bin/python bench/bench_drain.py --steps 10000     # the issue's figure
    .venv/bin/python bench/bench_drain.py --quick           # 200 steps, 1 and 2 workers

The provider emulator of the tests runs in its own process and serves
`--steps` recordings of the same real WAV (a tone from Python's wave
module) of `--size-kb` (1 MiB by default). For each backend (SQLite, and
Redis on a redis-server of its own with `appendfsync always`) and each
worker count, the bench:

1. records `--steps` events through the pipeline (`Pipeline.submit`, as
   the receiver does), each with one `store` step to a local directory;
2. starts a fresh process that opens the runtime and starts N worker
   threads (what `recflow worker --workers N` does), and times from the
   start until the journal owes no step;
3. checks that every step is done and every file is in place with the
   right size.

It prints steps per second, MB/s and the speed-up over one worker. The
time includes the workers' start-up recovery pass, which re-enqueues the
whole backlog once (duplicates the journal then drops). Everything runs
on this machine: the emulator, the workers and the disk share its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

BACKENDS = ("sqlite", "redis")


def write_config(work: Path, backend: str, api_url: str, storage: Path) -> Path:
    account, token = _util.emulator_account()
    path = work / "config.yaml"
    path.write_text(
        f"""\
providers:
  - name: emulated
    kind: signalwire
    space: bench.signalwire.com
    account_sid: {account}
    api_token: {token}
    signing_key: PSK_bench
    api_url: {api_url}
backend: {backend}
rules:
  - name: archive
    when: {{status: completed}}
    steps:
      - action: store
        with:
          to: "file://{storage}/{{{{ event.recording_sid }}}}.wav"
"""
    )
    return path


def enqueue(config_path: Path, api_url: str, steps: int) -> float:
    """Record `steps` events with their store step through the pipeline; seconds taken."""
    from recflow import config as config_module
    from recflow import pipeline, rules
    from recflow.event import Event
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager()
    config = config_module.load(str(config_path), host.actions)
    account, _ = _util.emulator_account()
    runtime = pipeline.open_runtime(config, host)

    async def submit_all() -> None:
        batch = 256  # as many at once as a burst of callbacks would bring
        for start in range(0, steps, batch):
            submissions = []
            for number in range(start, min(start + batch, steps)):
                sid = _util.recording_sid(number)
                event = Event(
                    account_sid=account,
                    call_sid="bench-call",
                    recording_sid=sid,
                    recording_url=f"{api_url}/Accounts/{account}/Recordings/{sid}",
                    status="completed",
                    duration=65,
                )
                submissions.append(runtime.pipeline.submit(event, rules.match(config.rules, event)))
            if not all(await asyncio.gather(*submissions)):
                raise SystemExit("an event was taken for a duplicate: is the backend fresh?")

    started = time.perf_counter()
    try:
        asyncio.run(submit_all())
    finally:
        runtime.close()
    return time.perf_counter() - started


def drain(config_path: str, workers: int, backend: str, timeout: float) -> None:
    """Child: start `workers` threads on the backlog; print the time to drain it."""
    from recflow import config as config_module
    from recflow import pipeline
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager()
    config = config_module.load(config_path, host.actions)
    runtime = pipeline.open_runtime(config, host)
    started = time.perf_counter()
    runtime.start(workers)
    counts = _util.wait_drained(backend, timeout)
    seconds = time.perf_counter() - started
    runtime.close()
    print(json.dumps({"seconds": seconds, **counts._asdict()}))


def measure(
    backend_kind: str, workers: int, root: Path, api_url: str, redis_url: str | None, args: Any
) -> dict[str, Any]:
    work = root / f"{backend_kind}-{workers}"
    storage = work / "recordings"
    storage.mkdir(parents=True)
    if backend_kind == "redis":
        assert redis_url is not None
        _flush_redis(redis_url)
        backend = redis_url
    else:
        backend = f"sqlite:///{work / 'recflow.db'}"
    config = write_config(work, backend, api_url, storage)
    enqueue_seconds = enqueue(config, api_url, args.steps)
    command = [sys.executable, __file__, "--drain", str(config), str(workers), backend,
               str(args.timeout)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=work)
    if done.returncode != 0:
        raise SystemExit(f"the drain with {workers} workers failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["enqueue_seconds"] = enqueue_seconds
    result["check"] = check_files(storage, args.steps, result)
    shutil.rmtree(work)  # a 10,000-step run writes 10 GB: keep one run's at a time
    return result


def check_files(storage: Path, steps: int, result: dict[str, Any]) -> str:
    """Whether every step is done and every recording stored whole."""
    files = [entry for entry in os.scandir(storage) if entry.name.endswith(".wav")]
    sizes = {entry.stat().st_size for entry in files}
    ok = result["done"] == steps and not result["owed"] and not result["failed"]
    ok = ok and len(files) == steps and len(sizes) == 1
    verdict = "ok" if ok else "INCOMPLETE"
    return (
        f"{verdict}: {result['done']} done, {result['failed']} failed, {result['owed']} owed,"
        f" {len(files)} files"
    )


def _flush_redis(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushall()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="queued store steps per run")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts to compare")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="sqlite,redis")
    parser.add_argument("--size-kb", type=int, default=1024, help="size of each recording")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per drain, at most")
    parser.add_argument("--quick", action="store_true", help="200 steps, 1 and 2 workers")
    parser.add_argument("--drain", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain:
        config_path, workers, backend, timeout = args.drain
        drain(config_path, int(workers), backend, float(timeout))
        return
    if args.quick:
        args.steps, args.workers = 200, "1,2"
    counts = [int(n) for n in args.workers.split(",")]
    backends = [b for b in args.backends.split(",") if b]
    if not counts or min(counts) < 1 or set(backends) - set(BACKENDS) or not backends:
        parser.error("--workers takes counts >= 1, --backends sqlite and/or redis")

    size = args.size_kb * 1024
    print(f"machine: {_util.machine()}")
    print(f"backlog: {args.steps} store steps of {size / 1e6:.2f} MB to local files")
    rows: list[tuple[str, int, dict[str, Any]]] = []
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recflow-drain-")))
        api_url = stack.enter_context(_util.emulator_process(root, args.steps, size))
        redis_url = stack.enter_context(_util.redis_server()) if "redis" in backends else None
        for backend in backends:
            for workers in counts:
                result = measure(backend, workers, root, api_url, redis_url, args)
                rows.append((backend, workers, result))
                base = next(r for b, n, r in rows if b == backend and n == counts[0])
                rate = args.steps / result["seconds"]
                speedup = base["seconds"] / result["seconds"]
                print(
                    f"{backend:>6} {workers:2d} workers: {rate:7.1f} steps/s"
                    f"  {rate * size / 1e6:7.1f} MB/s  x{speedup:4.2f} vs {counts[0]}"
                    f"  (enqueue {args.steps / result['enqueue_seconds']:6.0f}/s)"
                    f"  {result['check']}",
                    flush=True,
                )
    if any(not result["check"].startswith("ok") for _, _, result in rows):
        raise SystemExit("some steps were not done or some files are missing: see above")


if __name__ == "__main__":
    main()
