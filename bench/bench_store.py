"""How fast `store` streams a big recording, and how much memory it holds meanwhile.

    .venv/bin/python bench/bench_store.py [--size-mb 1024] [--only file,s3]

Serves a synthetic WAV of `--size-mb` from the provider emulator (in this
process), then runs each transfer in a child process of its own, so its
peak RSS (ru_maxrss) is the transfer's alone:

- `httpx`: a plain authenticated httpx download to /dev/null, the baseline;
- `file`: the `store` action to a local file;
- `s3`: the `store` action to S3, served by moto in a subprocess.

Prints one line per transfer: MB/s, seconds, and peak RSS in MiB. Memory
stays flat when the peak RSS does not grow with `--size-mb`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
from _util import free_port  # noqa: E402

SID = "bench-0000-4000-8000-000000000000"


def child(mode: str, api_url: str, target: str, options: dict[str, Any]) -> None:
    """One transfer, then a JSON line with its time and this process's peak RSS."""
    import logging

    import httpx

    from recflow.actions import store
    from recflow.config import ProviderConfig
    from recflow.context import StepContext
    from recflow.event import Event

    account, token = "b3877c40-da60-4998-90ad-b792e98472af", "PTemulator-token-0123456789"
    url = f"{api_url}/Accounts/{account}/Recordings/{SID}"
    started = time.perf_counter()
    if mode == "httpx":
        size = 0
        with httpx.stream("GET", url + ".wav", auth=(account, token), timeout=60) as response:
            response.raise_for_status()
            with open(os.devnull, "wb") as sink:
                for chunk in response.iter_bytes(1024 * 1024):
                    sink.write(chunk)
                    size += len(chunk)
    else:
        provider = ProviderConfig(
            name="bench",
            kind="signalwire",
            account_sid=account,
            api_token=token,
            signing_keys=("x",),
            api_url=api_url,
        )
        event = Event(
            account_sid=account,
            call_sid="c",
            recording_sid=SID,
            recording_url=url,
            status="completed",
        )
        ctx = StepContext(
            event=event,
            rule="bench",
            step_index=0,
            step_id=None,
            attempt=1,
            steps={},
            previous=(),
            provider=provider,
            logger=logging.getLogger("bench"),
        )
        outputs = store.run({"to": target, "storage_options": options}, ctx)
        size = outputs["bytes"]
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"bytes": size, "seconds": seconds, "peak_mib": peak_kib / 1024}))


def run_child(mode: str, api_url: str, target: str, options: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", mode, "--api-url", api_url,
               "--target", target, "--options", json.dumps(options)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{mode} transfer failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def start_moto() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    options = {
        "endpoint_url": f"http://127.0.0.1:{port}",
        "key": "bench",
        "secret": "bench-secret",
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise SystemExit("moto server did not start") from None
            time.sleep(0.1)
    import fsspec

    fsspec.filesystem("s3", **options).mkdir("bench")
    return process, options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--only", default="httpx,file,s3")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--api-url", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.api_url, args.target, json.loads(args.options))
        return

    from emulator import running_emulator

    size = args.size_mb * 1024 * 1024
    modes = args.only.split(",")
    moto = None
    with running_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        emulator.add_recording(SID, wav=b"", mp3=b"", size=size)
        print(f"recording: {args.size_mb} MiB synthetic WAV from {emulator.base_url}")
        try:
            for mode in modes:
                options: dict[str, Any] = {}
                target = f"file://{tmp}/{SID}.wav"
                if mode == "s3":
                    if moto is None:
                        moto, moto_options = start_moto()
                    options = moto_options
                    target = f"s3://bench/{SID}-{time.time_ns()}.wav"
                result = run_child(mode, emulator.api_url, target, options)
                if result["bytes"] != size:
                    raise SystemExit(f"{mode}: got {result['bytes']} bytes, expected {size}")
                rate = result["bytes"] / result["seconds"] / 1e6
                print(f"{mode:>6}: {rate:8.1f} MB/s  {result['seconds']:7.2f} s"
                      f"  peak RSS {result['peak_mib']:7.1f} MiB")  # fmt: skip
                Path(tmp, f"{SID}.wav").unlink(missing_ok=True)
        finally:
            if moto is not None:
                moto.terminate()
                moto.wait(10)


if __name__ == "__main__":
    main()
