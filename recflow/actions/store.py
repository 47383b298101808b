"""The `store` action (being built: see issue 4)."""

from __future__ import annotations

from typing import Any

from recflow.context import StepContext
from recflow.errors import ActionError
from recflow.hookspecs import hookimpl
from recflow.plugins import ActionSpec

SCHEMA: dict[str, Any] = {"type": "object"}


def run(params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    raise ActionError("store is not built yet", permanent=True)


@hookimpl
def register_actions(register: Any) -> None:
    register(ActionSpec(name="store", run=run, schema=SCHEMA, description="store"))
