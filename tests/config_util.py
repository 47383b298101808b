"""Helpers for the config, rules and CLI tests: config files on disk, test actions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recflow.plugins import ActionSpec

SAMPLES = Path(__file__).parent / "samples"

PROVIDER = """\
providers:
  - name: main
    kind: signalwire
    space: example.signalwire.com
    account_sid: b3877c40-da60-4998-90ad-b792e98472af
    api_token: PTapitoken123
    signing_key: PSK_signingkey
"""

MARK = "# <-"


def _run(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {}


# Actions with small schemas of our own, so these tests do not move when the
# built-in actions' schemas grow.
ACTIONS: dict[str, ActionSpec] = {
    "store": ActionSpec(
        name="store",
        run=_run,
        schema={
            "type": "object",
            "additionalProperties": False,
            "required": ["to"],
            "properties": {"to": {"type": "string"}, "format": {"enum": ["wav", "mp3"]}},
        },
    ),
    "notify": ActionSpec(
        name="notify",
        run=_run,
        schema={
            "type": "object",
            "properties": {
                "to": {"type": "array", "items": {"type": "string"}},
                "attach": {"type": "boolean"},
            },
        },
    ),
    "delete": ActionSpec(name="delete", run=_run, schema={"type": "object"}),
}


def write_config(directory: Path, text: str, name: str = "config.yaml") -> str:
    """Write `text` as a config file and return its path."""
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def marked_line(text: str) -> int:
    """The 1-based number of the line of `text` that carries the `# <-` mark."""
    for number, line in enumerate(text.splitlines(), 1):
        if MARK in line:
            return number
    raise ValueError("no marked line")
