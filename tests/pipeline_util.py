"""Helpers for the pipeline, journal, worker and crash tests.

Configs are built from the typed dataclasses, so these tests need no YAML;
the actions come from the `recflow-testactions` plugin in tests/plugins,
installed with pip like any third-party plugin.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recflow.config import (
    Config,
    ProviderConfig,
    RetryPolicy,
    RuleConfig,
    ServerConfig,
    StepConfig,
)
from recflow.event import Event
from recflow.plugins import PluginHost, build_plugin_manager
from recflow.templates import compile_params

ACCOUNT = "AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"
TOKEN = "auth_token_secret_77"
PLUGIN_DIR = Path(__file__).parent / "plugins" / "recflow-testactions"


def ensure_test_plugin() -> None:
    """Fail clearly when tests/plugins/recflow-testactions is not installed.

    scripts/setup.sh --test installs it with pip into tests/.plugins, which
    conftest.py puts on the path; the tests never reach a package index.
    """
    from importlib import metadata

    try:
        metadata.distribution("recflow-testactions")
    except metadata.PackageNotFoundError:
        pytest.fail(f"the test plugin {PLUGIN_DIR} is not installed: run scripts/setup.sh --test")


def plugin_host(*extra: object) -> PluginHost:
    ensure_test_plugin()
    return build_plugin_manager(extra=extra)


def step(
    action: str,
    params: dict[str, Any] | None = None,
    *,
    id: str | None = None,
    attempts: int = 3,
    backoff: float = 0.05,
    index: int = 0,
    timeout: float = StepConfig.timeout,
) -> StepConfig:
    raw = params or {}
    return StepConfig(
        index=index,
        action=action,
        id=id,
        params=compile_params(raw, f"steps[{index}].with"),
        raw_params=raw,
        retry=RetryPolicy(attempts=attempts, backoff=backoff, max_backoff=1.0),
        timeout=timeout,
    )


def rule(name: str, *steps: StepConfig) -> RuleConfig:
    numbered = tuple(StepConfig(**{**s.__dict__, "index": i}) for i, s in enumerate(steps))
    return RuleConfig(name=name, when=None, steps=numbered)


def make_config(
    tmp_path: Path, rules: tuple[RuleConfig, ...], backend: str | None = None
) -> Config:
    provider = ProviderConfig(
        name="main",
        kind="twilio",
        account_sid=ACCOUNT,
        api_token=TOKEN,
        signing_keys=(TOKEN,),
        api_url="http://127.0.0.1:9/2010-04-01",
    )
    return Config(
        path=str(tmp_path / "config.yaml"),
        server=ServerConfig(),
        providers=(provider,),
        backend=backend or f"sqlite:///{tmp_path / 'recflow.db'}",
        workers=2,
        rules=rules,
        secrets=frozenset({TOKEN}),
    )


def make_event(recording: str = "RE1", status: str = "completed") -> Event:
    return Event(
        account_sid=ACCOUNT,
        call_sid="CA1",
        recording_sid=recording,
        recording_url=f"http://127.0.0.1:9/2010-04-01/Accounts/{ACCOUNT}/Recordings/{recording}",
        status=status,
        duration=7,
        params={"AccountSid": ACCOUNT, "RecordingSid": recording},
    )


def submit(runtime: Any, event: Event, rules: tuple[RuleConfig, ...]) -> bool:
    return bool(asyncio.run(runtime.pipeline.submit(event, rules)))


def wait_for(check: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something true; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def steps_of(journal: Any, event_id: str) -> list[dict[str, Any]]:
    event = journal.get_event(event_id)
    return event["steps"] if event else []


def settled(journal: Any, event_id: str) -> list[dict[str, Any]] | None:
    """The event's steps once none is queued or running, else None."""
    steps = steps_of(journal, event_id)
    if steps and all(s["state"] in ("done", "failed") for s in steps):
        return steps
    return None


def write_config(
    tmp_path: Path, steps_yaml: str, backend: str = "sqlite:///./var/recflow.db", workers: int = 2
) -> Path:
    """A config.yaml with the test provider and one rule `log` of `steps_yaml`.

    `steps_yaml` is the YAML list of steps, indented by 6 spaces.
    """
    path = tmp_path / "config.yaml"
    path.write_text(
        f"""\
providers:
  - name: main
    kind: twilio
    account_sid: {ACCOUNT}
    api_token: ${{TEST_TOKEN}}
    api_url: http://127.0.0.1:9/2010-04-01
backend: {backend}
workers: {workers}
rules:
  - name: log
    steps:
{steps_yaml}"""
    )
    return path


def callback_pairs(recording: str, status: str = "completed") -> list[tuple[str, str]]:
    return [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA" + "1" * 32),
        ("RecordingSid", recording),
        (
            "RecordingUrl",
            f"http://127.0.0.1:9/2010-04-01/Accounts/{ACCOUNT}/Recordings/{recording}",
        ),
        ("RecordingStatus", status),
        ("RecordingDuration", "7"),
    ]
