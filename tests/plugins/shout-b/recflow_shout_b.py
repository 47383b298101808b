"""Adds the action 'shout', as the other shout plugin does too."""

from typing import Any

from recflow import hookimpl
from recflow.plugins import ActionSpec


def shout(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"text": str(params.get("text", "")).upper(), "by": "b"}


@hookimpl
def register_actions(register: Any) -> None:
    register(ActionSpec(name="shout", run=shout, description="upper-case text (b)"))
