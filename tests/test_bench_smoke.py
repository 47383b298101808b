"""The benchmarks under bench/ still run: each with `--quick`, checked for its figures.

Benchmarks are not tests of speed; this only keeps them from rotting as
the code they drive changes. Each must exit 0 (they exit 1 when the work
they check, journal entries or stored files, is missing) and print the
names of its figures.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.slow


def _missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


@pytest.mark.parametrize(
    ("script", "tools", "figures"),
    [
        pytest.param(
            "bench_peers.py",
            ("wrk", "webhook", "redis-server"),
            ["req/s", "p99", "of bare", "bare:", "sqlite:", "sqlite-receive:", "redis:",
             "webhook:", "webhook-after:", "commands run", "medians:",
             "goal: recflow on SQLite with durable enqueue", "goal: sqlite ahead of webhook-after",
             "goal: sqlite-receive ahead of webhook-after"],
            id="peers",
        ),
        pytest.param(
            "bench_drain.py",
            ("redis-server",),
            ["steps/s", "MB/s", "vs 1", "sqlite  1 workers", "sqlite  2 workers",
             "redis  1 workers", "redis  2 workers", "ok: 200 done"],
            id="drain",
        ),
        pytest.param(
            "bench_rules.py",
            (),
            ["load", "match few", "match all", "per rule", "rule(name)"],
            id="rules",
        ),
    ],
)  # fmt: skip
def test_quick_run_prints_its_figures(script: str, tools: tuple[str, ...], figures: list[str]):
    missing = _missing(*tools)
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (Debian packages)")
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    absent = [name for name in figures if name not in done.stdout]
    assert not absent, f"figures missing from the output: {absent}\n{done.stdout}"


@pytest.mark.parametrize(
    ("script", "arguments", "message"),
    [
        pytest.param("bench_peers.py", ["--only", "bare,nginx"], "unknown modes nginx", id="peers"),
        pytest.param("bench_drain.py", ["--workers", "0"], "--workers takes counts", id="drain"),
        pytest.param("bench_rules.py", ["--sizes", "ten"], "--sizes takes rule counts", id="rules"),
    ],
)
def test_bad_arguments_get_a_one_line_error(script: str, arguments: list[str], message: str):
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
