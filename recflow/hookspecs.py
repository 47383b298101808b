"""Every hook a recflow plugin can implement, grouped by when it fires.

A plugin is a module or object with functions decorated `@hookimpl`,
registered through the `recflow` entry-point group::

    [project.entry-points.recflow]
    transcribe = "recflow_transcribe"

Hooks are called with keyword arguments; an implementation may accept any
subset of a hook's arguments. Unless a docstring says otherwise, every
implementation is called and return values are ignored. Observer hooks run
in the worker or receiver thread that fired them: keep them quick, and
never raise (an exception there is logged and swallowed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from recflow.config import RuleConfig, StepConfig
    from recflow.event import Event
    from recflow.plugins import ActionSpec

hookspec = pluggy.HookspecMarker("recflow")
hookimpl = pluggy.HookimplMarker("recflow")


# -- start-up: contributing things ------------------------------------------


@hookspec
def register_actions(register: Callable[[ActionSpec], None]) -> None:
    """Add actions that rules can name in `action:`.

    Called once when the plugin manager is built. Call
    `register(ActionSpec(name=..., run=..., schema=..., description=...))`
    once per action. `schema` is the JSON Schema of the step's `with:`
    mapping; it is merged into the config schema, so `recflow check`
    reports a wrong parameter with its file and line. `run(params, ctx)`
    gets the rendered parameters and a `recflow.context.StepContext`, may
    be a coroutine function, and returns a dict of outputs (JSON-ready)
    that later steps read as `steps.<id>.<name>`. It raises
    `recflow.ActionError` to fail the step (`permanent=True` to skip the
    attempts left). Two plugins registering one name is an error at
    start-up that names both.
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the `recflow` command line.

    Called once when `recflow` starts, with the top-level click group:
    `cli.add_command(my_command)`. Commands are listed by `recflow --help`.
    A command whose name is already taken is refused and the plugin is
    reported broken by `recflow plugins`; so is a hook that raises. The
    plugin's module is imported on every run, `--help` included: keep it
    cheap to import.
    """


@hookspec
def register_routes(register: Callable[[str, Callable[..., Any], list[str]], None]) -> None:
    """Add HTTP routes to the receiver.

    Called once when the web app is built. Call
    `register(path, endpoint, methods)` where `endpoint` is a Starlette
    endpoint (`async def endpoint(request) -> Response`). Routes added here
    are not signature-checked: verify requests yourself. A path that
    clashes with the callback path or `/healthz` is refused at start-up.
    """


# -- a callback arrives -------------------------------------------------------


@hookspec
def event_received(event: Event, rules: list[str]) -> None:
    """A new (not duplicate) callback was committed to the backend.

    `event` is the parsed `recflow.Event`; `rules` the names of the rules
    it matched, in file order (possibly empty). Fires in the receiver,
    after the commit and before the answer is sent.
    """


# -- a worker runs a step ------------------------------------------------------


@hookspec
def step_started(event: Event, rule: RuleConfig, step: StepConfig, attempt: int) -> None:
    """A worker is about to run a step; `attempt` counts from 1."""


@hookspec
def step_succeeded(
    event: Event, rule: RuleConfig, step: StepConfig, outputs: dict[str, Any]
) -> None:
    """A step finished and its `outputs` are recorded in the journal."""


@hookspec
def step_failed(event: Event, rule: RuleConfig, step: StepConfig, error: str) -> None:
    """A step failed for good: its last attempt, or a permanent error.

    `error` is the one-line reason recorded in the journal, secrets
    masked. The rule's later steps will not run unless `recflow retry`
    runs this step again.
    """
