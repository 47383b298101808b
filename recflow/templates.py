"""Step parameters as Jinja2 templates: compiled at load, rendered per event.

Templates run in Jinja2's sandbox with undefined names an error and no
autoescaping (parameters are URLs, paths and plain text, not HTML). The
context is ``event`` (the `Event`), ``rule`` (``rule.name``) and
``steps`` (``steps.<id>.<output>`` of earlier steps). Values that arrive
in a callback are only ever values in that context: they are never
compiled, so a caller cannot inject template code.

Known shortcoming: a value substituted from the environment becomes part
of the string it sits in before compiling, so an environment value that
itself contains ``{{`` is compiled as template text.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from recflow.errors import ConfigError, TemplateError, join_path
from recflow.event import FIELDS, Event

if TYPE_CHECKING:
    from recflow.config import Config
    from recflow.plugins import ActionCheck, ActionSpec

_MARKERS = ("{{", "{%", "{#")


class StepsSoFar(dict[str, Any]):
    """`steps` in a template: the outputs of the rule's earlier steps, by id.

    A type of its own so that `steps.nosuch` is reported as a step id
    that no earlier step has, not as a missing key of some mapping.
    """


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined with messages that name recflow's objects plainly."""

    @property
    def _undefined_message(self) -> str:
        obj, name = self._undefined_obj, self._undefined_name
        if isinstance(obj, (Event, _SampleEvent)) and name is not None:
            accepted = ", ".join((*FIELDS, "params"))
            return f"event has no field {name!r}; fields: {accepted}"
        if isinstance(obj, MappingProxyType) and name is not None:
            return f"event.params has no parameter {name!r} in this callback"
        if isinstance(obj, StepOutputs) and name is not None:
            outputs = ", ".join(obj.known or ())
            return f"step {obj.step_id!r} has no output {name!r}; its outputs: {outputs}"
        if isinstance(obj, StepsSoFar) and name is not None:
            ids = ", ".join(sorted(obj)) or "none (give a step an id: to use its outputs)"
            return f"no earlier step has the id {name!r}; earlier steps' ids: {ids}"
        if isinstance(obj, dict) and name is not None and obj is not None:
            known = ", ".join(sorted(map(str, obj))) or "none"
            return f"no {name!r} here; known: {known}"
        return str(super()._undefined_message)


_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
FILENAME_MAX = 120


def filename(value: Any) -> str:
    """`value` made safe as one file or object name: the `filename` filter.

    Callback values are chosen by whoever can place a call. Anything but
    ASCII letters, digits, ``.``, ``_`` and ``-`` becomes ``_`` (so no
    ``/``, ``\\``, ``%``, NUL or spaces), leading dots go (no ``..``, no
    hidden files), and the result is at most `FILENAME_MAX` characters and
    never empty. `{{ event.params.Tenant | filename }}` in a `store` path
    cannot leave the directory it sits in.
    """
    text = _UNSAFE_NAME.sub("_", str(value)).lstrip(".")
    return text[:FILENAME_MAX] or "_"


_ENV = SandboxedEnvironment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)
_ENV.filters["filename"] = filename


@dataclasses.dataclass(frozen=True)
class Template:
    """One compiled template string and where it was written.

    `code` is the Python source Jinja generated for it at load, when every
    mistake Jinja can see before rendering (syntax, an unknown filter) is
    raised. Turning that source into a Python function is left to the first
    render: it was half the cost of a load of thousands of rules, most of
    whose templates a given process may never render.
    """

    source: str
    path: str
    line: int | None
    code: str = dataclasses.field(repr=False, compare=False)

    @functools.cached_property
    def template(self) -> jinja2.Template:
        """The template, made from `code` on first use."""
        code = compile(self.code, "<template>", "exec")
        return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)

    def render(self, context: Mapping[str, Any]) -> str:
        try:
            return self.template.render(context)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"{self.path}: {_one_line(exc)}") from None
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
            raise TemplateError(f"{self.path}: {type(exc).__name__}: {_one_line(exc)}") from None


@dataclasses.dataclass(frozen=True)
class Compiled:
    """Step parameters with every template string compiled.

    `tree` mirrors the `with:` mapping: dicts, lists and plain values as
    written, with `Template` objects where a string held template syntax.
    """

    tree: Any

    def templates(self) -> Iterator[Template]:
        """Every template in the parameters, in the order written."""
        yield from _walk(self.tree)


def compile_params(value: Any, path: str, lines: Mapping[str, int] | None = None) -> Compiled:
    """Compile every template string in `value` (dicts, lists, strings).

    `path` is the key path of `value` (``rules[0].steps[1].with``);
    `lines` maps key paths to lines, so a syntax error is raised as a
    `ConfigError` with its line. Strings without ``{{``, ``{%`` or ``{#``
    stay plain strings.
    """
    return Compiled(_compile(value, path, lines or {}))


def render_params(compiled: Compiled | Any, context: Mapping[str, Any]) -> Any:
    """Render compiled parameters for one event; raises `TemplateError`.

    `context` holds ``event``, ``rule`` and ``steps``. The result is plain
    data: dicts, lists, strings and the non-string values as written.
    """
    tree = compiled.tree if isinstance(compiled, Compiled) else compiled
    return _render(tree, context)


def sample_event() -> Event:
    """A realistic completed SignalWire recording, for checks and examples."""
    account = "b3877c40-da60-4998-90ad-b792e98472af"
    recording = "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"
    url = (
        "https://example.signalwire.com/api/laml/2010-04-01"
        f"/Accounts/{account}/Recordings/{recording}"
    )
    params = {
        "AccountSid": account,
        "CallSid": "b3877c40-da60-4998-90ad-b792e98472ca",
        "RecordingSid": recording,
        "RecordingUrl": url,
        "RecordingStatus": "completed",
        "RecordingDuration": "94",
        "RecordingChannels": "1",
        "RecordingSource": "RecordVerb",
        "RecordingStartTime": "Mon, 03 Jun 2024 14:05:11 +0000",
    }
    return Event(
        account_sid=account,
        call_sid=params["CallSid"],
        recording_sid=recording,
        recording_url=url,
        status="completed",
        duration=94,
        channels=1,
        source="RecordVerb",
        start_time=datetime(2024, 6, 3, 14, 5, 11, tzinfo=UTC),
        params=params,
    )


class StepOutputs(Mapping[str, str]):
    """Stand-in outputs of a step that has not run, each read as a placeholder.

    ``steps.archive.url`` renders as ``<steps.archive.url>``; `recflow
    match` shows these, and `check_config` renders against them. With
    `known` (the action's declared `ActionSpec.outputs`), other names are
    undefined, so that a misspelt output fails the check, not the step.
    """

    def __init__(self, step_id: str, known: Collection[str] | None = None) -> None:
        self.step_id = step_id
        self.known = None if known is None else tuple(sorted(known))

    def __getitem__(self, name: str) -> str:
        if self.known is not None and name not in self.known:
            raise KeyError(name)
        return f"<steps.{self.step_id}.{name}>"

    def __iter__(self) -> Iterator[str]:
        return iter(self.known or ())

    def __len__(self) -> int:
        return len(self.known or ())


def placeholder_steps(step_ids: list[str | None]) -> StepsSoFar:
    """Placeholder outputs, any name accepted, for the steps with an id among `step_ids`."""
    return StepsSoFar((sid, StepOutputs(sid)) for sid in step_ids if sid)


def check_config(config: Config, actions: Mapping[str, ActionSpec] | None = None) -> list[str]:
    """Render every step's templates against `sample_event()`; located errors.

    Each earlier step with an id offers placeholder outputs (those its
    action declares, or any name if it declares none), and any
    `params.NAME` reads as a placeholder, so what is reported are real
    mistakes: a misspelt field, a step id that
    is not an earlier step's, a failing filter. When `actions` is given,
    each step whose templates render is also passed, rendered, to its
    action's `check` (see `ActionSpec`).
    """
    event = _SampleEvent(sample_event())
    errors: list[str] = []
    for rule_index, rule in enumerate(config.rules):
        so_far = StepsSoFar()  # grows after each step's render
        for step in rule.steps:
            context = {"event": event, "rule": {"name": rule.name}, "steps": so_far}
            params = step.params if isinstance(step.params, Compiled) else Compiled(step.params)
            failed = False
            for template in params.templates():
                try:
                    template.render(context)
                except TemplateError as exc:
                    failed = True
                    where = config.path + (f":{template.line}" if template.line else "")
                    errors.append(f"{where}: {exc}")
            spec = (actions or {}).get(step.action)
            if spec is not None and spec.check is not None and not failed:
                path = f"rules[{rule_index}].steps[{step.index}].with"
                where = config.path + (f":{step.line}" if step.line else "")
                errors.extend(
                    f"{where}: {path}: {problem}"
                    for problem in _action_problems(
                        spec, spec.check, render_params(params, context)
                    )
                )
            if step.id:
                so_far[step.id] = StepOutputs(step.id, spec.outputs if spec else None)
    return errors


def _action_problems(spec: ActionSpec, check: ActionCheck, params: Any) -> list[str]:
    """What the action's own `check` says of rendered `params`, as one-line problems."""
    try:
        problems = check(params if isinstance(params, Mapping) else {})
    except Exception as exc:  # a plugin's check can raise anything
        return [
            f"the check of action {spec.name!r} ({spec.plugin or '?'}) failed: {_one_line(exc)}"
        ]
    return [" ".join(str(problem).split()) for problem in problems]


class _SampleEvent:
    """The sample event, with a placeholder for any parameter a template reads."""

    def __init__(self, event: Event) -> None:
        self._event = event
        self.params = _AnyParams(event.params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._event, name)


class _AnyParams(Mapping[str, str]):
    def __init__(self, params: Mapping[str, str]) -> None:
        self._params = params

    def __getitem__(self, name: str) -> str:
        return self._params.get(name, f"<params.{name}>")

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)


def _compile(value: Any, path: str, lines: Mapping[str, int]) -> Any:
    if isinstance(value, str):
        if not any(marker in value for marker in _MARKERS):
            return value
        line = _line(path, lines)
        try:
            code = _generate(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(
                f"template syntax: {exc.message}; in {value!r}", line=line, path=path
            ) from None
        return Template(source=value, path=path, line=line, code=code)
    if isinstance(value, Mapping):
        return {k: _compile(v, join_path(path, str(k)), lines) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_compile(v, join_path(path, i), lines) for i, v in enumerate(value)]
    return value


@functools.lru_cache(maxsize=1024)
def _generate(source: str) -> str:
    """Jinja's Python source for a template; rules often repeat one (a path, a title)."""
    return _ENV.compile(source, raw=True)


def _render(tree: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(tree, Template):
        return tree.render(context)
    if isinstance(tree, dict):
        return {k: _render(v, context) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_render(v, context) for v in tree]
    return tree


def _walk(tree: Any) -> Iterator[Template]:
    if isinstance(tree, Template):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _walk(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _walk(value)


def _line(path: str, lines: Mapping[str, int]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())
