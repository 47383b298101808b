"""The plugin manager: built-in actions and installed plugins, one way in.

`build_plugin_manager()` registers the default plugins (the built-in
actions) and then loads the `recflow` entry-point group explicitly.
Nothing is loaded as a side effect of importing recflow. A plugin that
fails to import is recorded in `PluginHost.broken` with its error; the
others still load.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from importlib import metadata
from typing import Any

import pluggy

from recflow import hookspecs
from recflow.errors import ConfigError

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "recflow"

# The built-in actions register through the same hooks as a third party's.
DEFAULT_PLUGINS = (
    "recflow.actions.store",
    "recflow.actions.notify",
    "recflow.actions.webhook",
    "recflow.actions.delete",
)

ActionResult = Mapping[str, Any] | None
ActionCallable = Callable[..., ActionResult | Awaitable[ActionResult]]


@dataclasses.dataclass(frozen=True)
class ActionSpec:
    """An action rules can name: what it is called, accepts and runs."""

    name: str
    run: ActionCallable
    schema: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "object"}
    )
    description: str = ""
    plugin: str = ""


@dataclasses.dataclass
class PluginHost:
    """The plugin manager with what it loaded and what failed to load."""

    pm: pluggy.PluginManager
    actions: dict[str, ActionSpec]
    broken: dict[str, str]

    @property
    def hook(self) -> Any:
        return self.pm.hook


def build_plugin_manager(
    *, entry_points: bool = True, extra: tuple[object, ...] = ()
) -> PluginHost:
    """Register the default plugins, then the installed ones, then `extra`.

    `extra` is for tests and embedding: plugin objects registered last, as
    if installed.
    """
    pm = pluggy.PluginManager("recflow")
    pm.add_hookspecs(hookspecs)
    broken: dict[str, str] = {}

    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)

    if entry_points:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:  # a third party's import can raise anything
                broken[ep.name] = f"{type(exc).__name__}: {exc}"
                logger.error("plugin %s failed to load and is skipped: %s", ep.name, exc)

    for plugin in extra:
        pm.register(plugin)

    return PluginHost(pm=pm, actions=_collect_actions(pm), broken=broken)


def _collect_actions(pm: pluggy.PluginManager) -> dict[str, ActionSpec]:
    actions: dict[str, ActionSpec] = {}

    for impl in pm.hook.register_actions.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(spec: ActionSpec, _plugin: str = plugin_name) -> None:
            if not isinstance(spec, ActionSpec):
                raise ConfigError(
                    f"plugin {_plugin}: register_actions passed {type(spec).__name__},"
                    " expected recflow.plugins.ActionSpec"
                )
            if spec.name in actions:
                raise ConfigError(
                    f"action {spec.name!r} is registered twice: by plugin"
                    f" {actions[spec.name].plugin} and by plugin {_plugin}"
                )
            actions[spec.name] = dataclasses.replace(spec, plugin=_plugin)

        impl.function(**{arg: register for arg in impl.argnames})

    return actions


def plugin_version(pm: pluggy.PluginManager, name: str) -> str | None:
    """The distribution version of an installed plugin, if it has one."""
    for plugin, dist in pm.list_plugin_distinfo():
        if pm.get_name(plugin) == name:
            return str(dist.version)
    return None
