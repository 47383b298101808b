"""Rules: `when` conditions compiled once into a small tree, then matched.

A `when` mapping compiles at load into `All`, `Any`, `Not` and `Field`
nodes; each node answers `evaluate(event)` and `explain(event)`, the
latter a short sentence saying why it held or not (``duration 3 is not
>= 5``). Regexes compile at load too, so matching an event is a walk over
prepared closures. Pure: no I/O.

Comparison semantics, as users see them:

- Numbers compare as numbers: a number in the rule against a numeric
  string (`params.RecordingDuration: {gte: 5}`) compares numerically;
  a string that is not a number never equals or orders against one.
- `true`/`false` in a rule match the text ``true``/``false`` (JSON
  booleans arrive as that text in `params`).
- An unknown value (a null `duration`, an absent parameter) satisfies no
  comparison: `eq`, `ne`, `in`, `not_in`, the order operators and
  `matches` are all false for it; only `exists: false` holds. To match
  "anything but X, including unknown", write `not: {field: X}`.
- `exists` is true when the value is known and not empty.
- The order operators (`gt`, `gte`, `lt`, `lte`) take numbers only.
"""

from __future__ import annotations

import math
import operator
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from recflow.errors import ConfigError, join_path
from recflow.event import FIELDS, Event

if TYPE_CHECKING:
    from recflow.config import RuleConfig

OPERATORS = ("eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "matches", "exists")
COMBINATORS = ("all", "any", "not")

_ORDER: dict[str, tuple[Callable[[float, float], bool], str]] = {
    "gt": (operator.gt, ">"),
    "gte": (operator.ge, ">="),
    "lt": (operator.lt, "<"),
    "lte": (operator.le, "<="),
}


class Condition(Protocol):
    """A compiled `when` node."""

    def evaluate(self, event: Event) -> bool: ...

    def explain(self, event: Event) -> str: ...


class All:
    """Holds when every child holds (a `when` mapping, or `all: [...]`)."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def evaluate(self, event: Event) -> bool:
        return all(child.evaluate(event) for child in self.children)

    def explain(self, event: Event) -> str:
        for child in self.children:
            if not child.evaluate(event):
                return child.explain(event)
        return " and ".join(child.explain(event) for child in self.children)


class Any:
    """Holds when at least one child holds (`any: [...]`)."""

    __slots__ = ("children",)

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)

    def evaluate(self, event: Event) -> bool:
        return any(child.evaluate(event) for child in self.children)

    def explain(self, event: Event) -> str:
        for child in self.children:
            if child.evaluate(event):
                return child.explain(event)
        return "none of: " + "; ".join(child.explain(event) for child in self.children)


class Not:
    """Holds when its child does not (`not: {...}`)."""

    __slots__ = ("child",)

    def __init__(self, child: Condition) -> None:
        self.child = child

    def evaluate(self, event: Event) -> bool:
        return not self.child.evaluate(event)

    def explain(self, event: Event) -> str:
        return f"not ({self.child.explain(event)})"


class Field:
    """One operator applied to one event field or parameter."""

    __slots__ = ("name", "op", "operand", "_get", "_test", "_held", "_failed")

    def __init__(self, name: str, op: str, operand: typing.Any, path: str) -> None:
        self.name = name
        self.op = op
        self.operand = operand
        self._get = _getter(name)
        self._test, self._held, self._failed = _test(op, operand, path)

    def evaluate(self, event: Event) -> bool:
        value = self._get(event)
        if value is None:
            return self.op == "exists" and self.operand is False
        return self._test(value)

    def explain(self, event: Event) -> str:
        value = self._get(event)
        if self.op == "exists":
            return f"{self.name} {'exists' if _known(value) else 'does not exist'}"
        if value is None:
            return f"{self.name} is unknown"
        words = self._held if self._test(value) else self._failed
        return f"{self.name} {_show(value)} {words}"


def compile_when(spec: typing.Any, path: str) -> Condition | None:
    """Compile a rule's `when` (None when the rule has none: it matches all).

    `path` is the key path of the `when` itself (``rules[0].when``); every
    `ConfigError` raised names the path of the offending key and what is
    accepted there.
    """
    if spec is None:
        return None
    return _compile_mapping(spec, path)


def match(rules: Iterable[RuleConfig], event: Event) -> list[RuleConfig]:
    """The rules whose `when` holds, in file order; a `stop` rule ends the search."""
    matched = []
    for rule in rules:
        if rule.when is None or rule.when.evaluate(event):
            matched.append(rule)
            if rule.stop:
                break
    return matched


def explain(rules: Iterable[RuleConfig], event: Event) -> list[tuple[RuleConfig, bool, str]]:
    """For every rule: whether it matched and why, as `recflow match` shows it."""
    out: list[tuple[RuleConfig, bool, str]] = []
    stopped_by: str | None = None
    for rule in rules:
        if stopped_by is not None:
            out.append((rule, False, f"not tried: rule {stopped_by!r} matched with stop: true"))
            continue
        if rule.when is None:
            held, reason = True, "no when: matches every event"
        else:
            held, reason = rule.when.evaluate(event), rule.when.explain(event)
        out.append((rule, held, reason))
        if held and rule.stop:
            stopped_by = rule.name
    return out


# -- compiling -----------------------------------------------------------------


def _compile_mapping(spec: typing.Any, path: str) -> Condition:
    if not isinstance(spec, Mapping):
        raise ConfigError(
            f"found {describe(spec)}; expected a mapping of fields to conditions", path=path
        )
    if not spec:
        raise ConfigError(
            "empty condition; expected at least one field (status, duration, params.NAME...)"
            " or all/any/not. Leave `when` out to match every event",
            path=path,
        )
    nodes = [
        _compile_key(str(key), value, join_path(path, str(key))) for key, value in spec.items()
    ]
    return nodes[0] if len(nodes) == 1 else All(nodes)


def _compile_key(key: str, value: typing.Any, path: str) -> Condition:
    if key in ("all", "any"):
        if not isinstance(value, list):
            raise ConfigError(f"found {describe(value)}; expected a list of conditions", path=path)
        if not value:
            raise ConfigError(f"empty {key}: []; expected at least one condition", path=path)
        children = [_compile_mapping(item, join_path(path, i)) for i, item in enumerate(value)]
        return All(children) if key == "all" else Any(children)
    if key == "not":
        return Not(_compile_mapping(value, path))
    _check_field(key, path)
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(
                "empty operator mapping; expected one of " + ", ".join(OPERATORS), path=path
            )
        fields = [
            Field(key, str(op), operand, join_path(path, str(op))) for op, operand in value.items()
        ]
        return fields[0] if len(fields) == 1 else All(fields)
    if isinstance(value, list):
        return Field(key, "in", value, path)
    return Field(key, "eq", value, path)


def _check_field(key: str, path: str) -> None:
    if key in FIELDS:
        return
    if key.startswith("params.") and len(key) > len("params."):
        return
    accepted = ", ".join((*FIELDS, "params.NAME", *COMBINATORS))
    raise ConfigError(f"unknown field {key!r}; accepted: {accepted}", path=path)


def _test(op: str, operand: typing.Any, path: str) -> tuple[Callable[[typing.Any], bool], str, str]:
    """A predicate on a known value, and the words saying it held or failed."""
    if op in ("eq", "ne"):
        equals = _equals(_scalar(operand, path), path)
        if op == "eq":
            return equals, f"is {_show(operand)}", f"is not {_show(operand)}"
        return (lambda value: not equals(value)), f"is not {_show(operand)}", f"is {_show(operand)}"
    if op in ("in", "not_in"):
        if not isinstance(operand, list) or not operand:
            raise ConfigError(
                f"found {describe(operand)}; expected a non-empty list of values", path=path
            )
        tests = [_equals(_scalar(item, join_path(path, i)), path) for i, item in enumerate(operand)]
        shown = "[" + ", ".join(_show(item) for item in operand) + "]"
        if op == "in":
            return (
                (lambda value: any(t(value) for t in tests)),
                f"is in {shown}",
                f"is not in {shown}",
            )
        return (
            (lambda value: not any(t(value) for t in tests)),
            f"is not in {shown}",
            f"is in {shown}",
        )
    if op in _ORDER:
        if not _is_number(operand):
            raise ConfigError(f"found {describe(operand)}; expected a number", path=path)
        compare, symbol = _ORDER[op]
        bound = float(operand)

        def order(value: typing.Any) -> bool:
            number = _number(value)
            return number is not None and compare(number, bound)

        return order, f"{symbol} {_show(operand)}", f"is not {symbol} {_show(operand)}"
    if op == "matches":
        if not isinstance(operand, str):
            raise ConfigError(
                f"found {describe(operand)}; expected a regular expression", path=path
            )
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ConfigError(
                f"bad regular expression {operand!r}: {exc}; expected a Python regex",
                path=path,
            ) from None
        return (
            (lambda value: pattern.search(_text(value)) is not None),
            f"matches {operand!r}",
            f"does not match {operand!r}",
        )
    if op == "exists":
        if not isinstance(operand, bool):
            raise ConfigError(f"found {describe(operand)}; expected true or false", path=path)
        # Called only with a known value; an empty string counts as absent.
        return (lambda value: (value != "") is operand), "exists", "does not exist"
    raise ConfigError(f"unknown operator {op!r}; accepted: {', '.join(OPERATORS)}", path=path)


def _scalar(operand: typing.Any, path: str) -> typing.Any:
    if operand is None:
        raise ConfigError("found null; to match an unknown value write {exists: false}", path=path)
    if isinstance(operand, (str, int, float, bool)):
        return operand
    raise ConfigError(
        f"found {describe(operand)}; expected a string, a number or true/false", path=path
    )


def _equals(operand: typing.Any, path: str) -> Callable[[typing.Any], bool]:
    if isinstance(operand, bool):
        text = "true" if operand else "false"
        return lambda value: _text(value).lower() == text
    if _is_number(operand):
        number = float(operand)
        return lambda value: _number(value) == number
    return lambda value: _text(value) == operand


# -- values ----------------------------------------------------------------------


def _getter(name: str) -> Callable[[Event], typing.Any]:
    if name.startswith("params."):
        param = name[len("params.") :]
        return lambda event: event.params.get(param)
    return operator.attrgetter(name)


def _known(value: typing.Any) -> bool:
    return value is not None and value != ""


def _is_number(value: typing.Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value: typing.Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _text(value: typing.Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _show(value: typing.Any) -> str:
    if isinstance(value, str):
        shown = repr(value)
        return shown if len(shown) <= 60 else shown[:56] + "...'"
    return _text(value)


def describe(value: typing.Any) -> str:
    """What a user wrote, in words, for error messages: ``the string 'x'``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{_text(value)}"
    if isinstance(value, Mapping):
        return "a mapping" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    if isinstance(value, str):
        return f"the string {_show(value)}"
    if _is_number(value):
        return f"the number {value}"
    return type(value).__name__
