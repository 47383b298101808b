"""The plugin manager: built-in actions and installed plugins, one way in.

`build_plugin_manager()` registers the default plugins (the built-in
actions) and then loads the `recflow` entry-point group explicitly.
Nothing is loaded as a side effect of importing recflow. A plugin that
fails to import, implements a hook that does not exist, or registers an
action wrongly is recorded in `PluginHost.broken` with its error; the
others still load. Two plugins claiming one action name raise a
`ConfigError` naming both (or, with `strict=False`, mark the second one
broken), since running either silently would surprise whoever wrote the
rule.

Workers run an action through `call_action()`, which accepts plain and
coroutine functions and checks that the outputs can go in the journal.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import importlib
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from recflow import hookspecs
from recflow.errors import ActionError, ConfigError

if TYPE_CHECKING:
    import click

    from recflow.context import StepContext

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "recflow"

# The built-in actions register through the same hooks as a third party's.
DEFAULT_PLUGINS = (
    "recflow.actions.store",
    "recflow.actions.notify",
    "recflow.actions.webhook",
    "recflow.actions.delete",
)

# Action names appear in YAML and in `steps.<id>` error messages: keep them plain.
_ACTION_NAME = re.compile(r"^[a-z][a-z0-9_.-]*$")

ActionResult = Mapping[str, Any] | None
ActionCallable = Callable[..., ActionResult | Awaitable[ActionResult]]
ActionCheck = Callable[[Mapping[str, Any]], list[str]]


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """An action rules can name: what it is called, accepts and runs.

    `check`, optional, finds mistakes a schema cannot see (a storage
    protocol that does not exist, a notification URL no service reads):
    `recflow check` calls it with each step's parameters rendered against
    a sample event and prints the one-line problems it returns. It must
    not send or write anything.

    `outputs`, optional, names every output `run` may return: `recflow
    check` then reports `{{ steps.ID.NAME }}` with any other NAME, which
    would otherwise fail only when the step runs. None: not declared.
    """

    name: str
    run: ActionCallable
    schema: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"type": "object"})
    description: str = ""
    plugin: str = ""
    check: ActionCheck | None = None
    outputs: tuple[str, ...] | None = None


@dataclasses.dataclass
class PluginHost:
    """The plugin manager with what it loaded and what failed to load.

    `broken` maps a plugin's name (its entry-point name) to a one-line
    error; `recflow plugins` and `recflow check` show it.
    """

    pm: pluggy.PluginManager
    actions: dict[str, ActionSpec]
    broken: dict[str, str]
    # plugin name -> (distribution, version), for installed plugins, broken or not
    dists: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def missing_action(self, name: str) -> str:
        """Why action `name` is unknown, for the config loader's error.

        A plugin that failed to load cannot say which actions it would
        have added, so a broken plugin named like the action is blamed
        outright and any other broken plugin is mentioned as a suspect.
        """
        known = ", ".join(sorted(self.actions)) or "none"
        if name in self.broken:
            return (
                f"action {name!r} comes from plugin {name} which failed to load:"
                f" {self.broken[name]}"
            )
        message = f"unknown action {name!r} (known: {known})"
        if self.broken:
            suspects = "; ".join(f"{p}: {e}" for p, e in sorted(self.broken.items()))
            message += f"; plugins that failed to load: {suspects}"
        return message


def build_plugin_manager(
    *,
    entry_points: bool = True,
    extra: tuple[object, ...] = (),
    defaults: bool = True,
    strict: bool = True,
) -> PluginHost:
    """Register the default plugins, then the installed ones, then `extra`.

    `extra` is for tests and embedding: plugin objects registered last, as
    if installed; an error in one of them raises instead of marking it
    broken. `defaults=False` leaves out the built-in actions (the command
    line does, to find plugin commands quickly). `strict=False` records an
    action claimed twice in `broken` instead of raising, so that
    `recflow plugins` can still list everything.
    """
    pm = pluggy.PluginManager("recflow")
    pm.add_hookspecs(hookspecs)
    broken: dict[str, str] = {}
    dists: dict[str, tuple[str, str]] = {}

    if defaults:
        for module_name in DEFAULT_PLUGINS:
            pm.register(importlib.import_module(module_name), name=module_name)

    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            if ep.dist is not None:
                dists[ep.name] = (ep.dist.name, ep.dist.version)
            try:
                _register_checked(pm, ep.load(), ep.name)
            except Exception as exc:  # a third party's import can raise anything
                broken[ep.name] = _one_line(exc)
                logger.error(
                    "plugin %s failed to load and is skipped: %s", ep.name, broken[ep.name]
                )

    for plugin in extra:
        _register_checked(pm, plugin, None)

    actions = _collect_actions(pm, broken, strict=strict)
    return PluginHost(pm=pm, actions=actions, broken=broken, dists=dists)


def _register_checked(pm: pluggy.PluginManager, plugin: object, name: str | None) -> None:
    """Register `plugin`, refusing hooks that recflow does not define.

    pluggy itself only notices an unknown hook name when asked; a typo in
    a hook name would otherwise make a plugin silently do nothing.
    """
    try:
        registered = pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise ConfigError(_one_line(exc)) from None
    label = registered or name or repr(plugin)
    for caller in pm.get_hookcallers(plugin) or ():
        if caller.spec is None:
            pm.unregister(plugin)
            raise ConfigError(
                f"plugin {label} implements hook {caller.name!r}, which recflow does not"
                " define (see recflow.hookspecs)"
            )


class ActionConflict(ConfigError):
    """Two plugins register one action name."""


def _collect_actions(
    pm: pluggy.PluginManager, broken: dict[str, str], *, strict: bool = True
) -> dict[str, ActionSpec]:
    actions: dict[str, ActionSpec] = {}
    installed = _entry_point_names()

    # In registration order, so the built-ins come first and own their names.
    for impl in pm.hook.register_actions.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        mine: dict[str, ActionSpec] = {}

        def register(
            spec: ActionSpec, _plugin: str = plugin_name, _mine: dict[str, ActionSpec] = mine
        ) -> None:
            spec = _checked_spec(spec, _plugin)
            owner = actions.get(spec.name) or _mine.get(spec.name)
            if owner is not None:
                raise ActionConflict(
                    f"action {spec.name!r} is registered twice: by plugin {owner.plugin}"
                    f" and by plugin {_plugin}; uninstall one of them"
                )
            _mine[spec.name] = dataclasses.replace(spec, plugin=_plugin)

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except Exception as exc:  # a third party's hook can raise anything
            third_party = plugin_name in installed
            if not third_party or (strict and isinstance(exc, ActionConflict)):
                raise
            reason = str(exc) if isinstance(exc, ConfigError) else _one_line(exc)
            broken[plugin_name] = f"register_actions failed: {reason}"
            logger.error("plugin %s is skipped: %s", plugin_name, broken[plugin_name])
            pm.unregister(impl.plugin)
            continue
        actions.update(mine)

    return actions


def _checked_spec(spec: Any, plugin: str) -> ActionSpec:
    """`spec`, or a ConfigError naming the plugin, the hook and the argument."""
    where = f"plugin {plugin}: register_actions"
    if not isinstance(spec, ActionSpec):
        raise ConfigError(
            f"{where} passed {type(spec).__name__} to register(), expected"
            " recflow.plugins.ActionSpec"
        )
    if not isinstance(spec.name, str) or not _ACTION_NAME.match(spec.name):
        raise ConfigError(
            f"{where}: ActionSpec.name {spec.name!r} is not a valid action name"
            " (lower case letters, digits, '_', '-', '.', starting with a letter)"
        )
    if not callable(spec.run):
        raise ConfigError(f"{where}: ActionSpec.run of action {spec.name!r} is not callable")
    if spec.check is not None and not callable(spec.check):
        raise ConfigError(f"{where}: ActionSpec.check of action {spec.name!r} is not callable")
    if not isinstance(spec.schema, Mapping):
        raise ConfigError(
            f"{where}: ActionSpec.schema of action {spec.name!r} is"
            f" {type(spec.schema).__name__}, expected a JSON Schema mapping"
        )
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(dict(spec.schema))
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"{where}: ActionSpec.schema of action {spec.name!r} is not a valid"
            f" JSON Schema: {exc.message}"
        ) from None
    return spec


def _entry_point_names() -> set[str]:
    """Names of the installed plugins: neither built in nor passed as `extra`."""
    names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return names - set(DEFAULT_PLUGINS)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe(host: PluginHost) -> list[dict[str, Any]]:
    """What `recflow plugins` shows: every plugin, built in, installed or broken.

    Each entry has `name`, `builtin`, `distribution`, `version`, `hooks`
    (the hooks it implements), `actions` (`name`, `description`) and
    `error` (None unless the plugin is broken).
    """
    from recflow import __version__

    entries: list[dict[str, Any]] = []
    for name, plugin in host.pm.list_name_plugin():
        if plugin is None:
            continue
        builtin = name in DEFAULT_PLUGINS
        dist, version = host.dists.get(name, ("recflow", __version__) if builtin else ("", ""))
        entries.append(
            {
                "name": name,
                "builtin": builtin,
                "distribution": dist or None,
                "version": version or None,
                "hooks": sorted(c.name for c in host.pm.get_hookcallers(plugin) or ()),
                "actions": [
                    {"name": spec.name, "description": spec.description}
                    for spec in sorted(host.actions.values(), key=lambda s: s.name)
                    if spec.plugin == name
                ],
                "error": host.broken.get(name),
            }
        )
    for name, error in sorted(host.broken.items()):
        if host.pm.get_plugin(name) is not None:
            continue
        dist, version = host.dists.get(name, ("", ""))
        entries.append(
            {
                "name": name,
                "builtin": False,
                "distribution": dist or None,
                "version": version or None,
                "hooks": [],
                "actions": [],
                "error": error,
            }
        )
    return entries


def add_commands(host: PluginHost, group: click.Group) -> None:
    """Let each plugin add its commands to `group`, one plugin at a time.

    A plugin whose `register_commands` raises, or that replaces a command
    already there (recflow's own or an earlier plugin's), is left out and
    recorded in `host.broken`: the command line must keep working with a
    broken plugin installed.
    """
    for impl in host.pm.hook.register_commands.get_hookimpls():
        plugin_name = host.pm.get_name(impl.plugin) or repr(impl.plugin)
        before = dict(group.commands)
        try:
            impl.function(**{arg: group for arg in impl.argnames})
        except Exception as exc:  # a third party's hook can raise anything
            error = f"register_commands failed: {_one_line(exc)}"
        else:
            taken = sorted(n for n in before if group.commands.get(n) is not before[n])
            if not taken:
                continue
            error = f"register_commands failed: command {taken[0]!r} is already taken"
        group.commands.clear()
        group.commands.update(before)
        host.broken[plugin_name] = error


def plugin_version(pm: pluggy.PluginManager, name: str) -> str | None:
    """The distribution version of an installed plugin, if it has one."""
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == name:
            return str(dist.version)
    return None


def call_action(spec: ActionSpec, params: Mapping[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Run an action and return its outputs, checked for the journal.

    A coroutine function's result is awaited in a fresh event loop (a
    worker thread has none; if the caller's thread already runs a loop,
    in a thread of its own). `None` means no outputs. Anything that is
    not a mapping of string keys to JSON values, or a key the action does
    not declare in `ActionSpec.outputs`, fails the step permanently:
    running the same code again would not fix it.
    """
    result: Any = spec.run(dict(params), ctx)
    if inspect.isawaitable(result):
        result = _await(result)
    return checked_outputs(spec, result)


def checked_outputs(spec: ActionSpec, result: Any) -> dict[str, Any]:
    """`result` as a dict of outputs, or an ActionError naming plugin and action."""
    who = f"action {spec.name!r} of plugin {spec.plugin or 'unknown'}"
    if result is None:
        return {}
    if not isinstance(result, Mapping):
        raise ActionError(
            f"{who} returned {type(result).__name__}, expected a mapping of outputs",
            permanent=True,
        )
    outputs: dict[str, Any] = {}
    for key, value in result.items():
        if not isinstance(key, str):
            raise ActionError(f"{who} returned output key {key!r}, not a string", permanent=True)
        if spec.outputs is not None and key not in spec.outputs:
            raise ActionError(
                f"{who} returned output {key!r}, which it does not declare"
                f" (outputs: {', '.join(spec.outputs)})",
                permanent=True,
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ActionError(
                f"{who} returned output {key!r} that is not JSON-serialisable: {exc}",
                permanent=True,
            ) from None
        outputs[key] = value
    return outputs


def _await(awaitable: Awaitable[Any]) -> Any:
    async def wrap() -> Any:
        return await awaitable

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(wrap())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, wrap()).result()
