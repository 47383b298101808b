"""How long matching one event takes against 10, 1,000 and 10,000 rules, and loading them.

    .venv/bin/python bench/bench_rules.py [--sizes 10,1000,10000]
    .venv/bin/python bench/bench_rules.py --quick      # 10 and 1,000 rules

For each size it writes a config of that many rules, each a realistic mix
of operators (equality, a numeric bound, `in`, a regex under `any`, a
`not`) and one templated `webhook` step, then:

- loads it with `recflow.config.load` (YAML, JSON Schema, compiling every
  `when` and template), the time `recflow serve` and `recflow check` pay
  at start;
- times `recflow.rules.match` for two events, the best of several
  repeats: `few`, which most rules turn down at their last condition
  (the usual case: each rule is for one tenant), and `all`, which every
  rule matches (every rule's step would run);
- times `Config.rule(name)` for the last rule, the look-up a worker does
  for each step it runs.

Pure CPU, no I/O: the figures are per event, in microseconds.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recflow.event import Event

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _util  # noqa: E402

RULE = """\
  - name: tenant-{n:05d}
    when:
      status: completed
      duration: {{gte: {bound}}}
      any:
        - source: {{matches: "^(Dial|Record)Verb$"}}
        - not: {{channels: 2}}
      params.Tenant: {{in: [tenant-{n}, all]}}
    steps:
      - action: webhook
        with:
          url: "http://127.0.0.1:9/hooks/{n}?sid={{{{ event.recording_sid }}}}"
"""


def write_config(directory: Path, count: int) -> Path:
    path = directory / f"rules-{count}.yaml"
    head = f"""\
providers:
  - name: bench
    kind: twilio
    account_sid: {_util.ACCOUNT}
    api_token: {_util.TOKEN}
backend: sqlite:///./recflow.db
rules:
"""
    rules = "".join(RULE.format(n=n, bound=n % 60) for n in range(count))
    path.write_text(head + rules)
    return path


def event(tenant: str) -> Event:
    """A completed callback for `tenant`, 90 s long, from a dial."""
    from recflow.event import parse_event

    pairs = dict(_util.callback_pairs("RE" + "1" * 32))
    pairs["RecordingDuration"] = "90"
    pairs["Tenant"] = tenant
    return parse_event(pairs)


def best_microseconds(call: Callable[[], object], budget: float) -> float:
    """The best per-call time over a few repeats, within about `budget` seconds."""
    timer = timeit.Timer(call)
    number, first = timer.autorange()
    per_run = first / number
    repeats = max(3, min(20, int(budget / max(per_run * number, 1e-9))))
    return min(timer.repeat(repeat=repeats, number=number)) / number * 1e6


def measure(directory: Path, count: int, budget: float) -> dict[str, float]:
    from recflow import config as config_module
    from recflow import rules
    from recflow.plugins import build_plugin_manager

    host = build_plugin_manager()
    path = write_config(directory, count)
    started = time.perf_counter()
    config = config_module.load(str(path), host.actions)
    load_seconds = time.perf_counter() - started
    few, every = event("tenant-7"), event("all")
    matched_few = len(rules.match(config.rules, few))
    matched_all = len(rules.match(config.rules, every))
    if matched_all != count or matched_few != 1:
        raise SystemExit(f"{count} rules: matched {matched_few} and {matched_all}, not 1 and all")
    last = config.rules[-1].name
    return {
        "load_s": load_seconds,
        "few_us": best_microseconds(lambda: rules.match(config.rules, few), budget),
        "all_us": best_microseconds(lambda: rules.match(config.rules, every), budget),
        "lookup_us": best_microseconds(lambda: config.rule(last), budget),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="rule counts to compare")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of timing per figure")
    parser.add_argument("--quick", action="store_true", help="10 and 1,000 rules")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.budget = "10,1000", 0.2
    try:
        sizes = [int(size) for size in args.sizes.split(",")]
    except ValueError:
        parser.error("--sizes takes rule counts, e.g. 10,1000")
    if not sizes or min(sizes) < 2:
        parser.error("--sizes takes rule counts of 2 or more")

    print(f"machine: {_util.machine()}")
    print(f"{'rules':>7} {'load':>9} {'match few':>11} {'match all':>11} {'per rule':>9}"
          f" {'rule(name)':>11}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="recflow-rules-") as tmp:
        for count in sizes:
            row = measure(Path(tmp), count, args.budget)
            print(
                f"{count:7d} {row['load_s']:8.2f}s {row['few_us']:9.1f}us {row['all_us']:9.1f}us"
                f" {row['few_us'] / count * 1000:7.0f}ns {row['lookup_us']:9.1f}us",
                flush=True,
            )


if __name__ == "__main__":
    main()
