"""Rules: `when` conditions compiled once into a small tree, then matched.

A `when` mapping compiles at load into `All`, `Any`, `Not` and `Field`
nodes; each node answers `evaluate(event)` and `explain(event)`, the
latter a short sentence saying why it held or not (``duration 3 is not
>= 5``). Each node also carries `test`, one closure with its operator,
operand and field look-up bound (regexes compiled), and conjunctions try
their cheapest conditions first. `match` indexes a tuple of rules once by
the texts their `when` requires a field to equal (`status: completed`,
`params.Tenant: acme`), so an event is tested only against rules that can
still match it. Pure: no I/O.

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
import weakref
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


Test = Callable[[Event], bool]
_T = typing.TypeVar("_T")


class All:
    """Holds when every child holds (a `when` mapping, or `all: [...]`)."""

    __slots__ = ("children", "test", "cost")

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)
        # Nested conjunctions are one conjunction; the cheapest run first.
        parts = sorted(_conjuncts(self.children), key=_cost)
        self.test = _all_of([_test_of(part) for part in parts])
        self.cost = sum(_cost(part) for part in parts)

    def evaluate(self, event: Event) -> bool:
        return self.test(event)

    def explain(self, event: Event) -> str:
        for child in self.children:
            if not child.evaluate(event):
                return child.explain(event)
        return " and ".join(child.explain(event) for child in self.children)


class Any:
    """Holds when at least one child holds (`any: [...]`)."""

    __slots__ = ("children", "test", "cost")

    def __init__(self, children: Sequence[Condition]) -> None:
        self.children = tuple(children)
        self.test = _any_of([_test_of(child) for child in sorted(self.children, key=_cost)])
        self.cost = sum(_cost(child) for child in self.children)

    def evaluate(self, event: Event) -> bool:
        return self.test(event)

    def explain(self, event: Event) -> str:
        for child in self.children:
            if child.evaluate(event):
                return child.explain(event)
        return "none of: " + "; ".join(child.explain(event) for child in self.children)


class Not:
    """Holds when its child does not (`not: {...}`)."""

    __slots__ = ("child", "test", "cost")

    def __init__(self, child: Condition) -> None:
        self.child = child
        inner = _test_of(child)
        self.test = _shared(("not", inner), lambda: _not_of(inner))
        self.cost = _cost(child)

    def evaluate(self, event: Event) -> bool:
        return self.test(event)

    def explain(self, event: Event) -> str:
        return f"not ({self.child.explain(event)})"


class Field:
    """One operator applied to one event field or parameter."""

    __slots__ = (
        *("name", "op", "operand", "test", "cost"),
        *("_get", "_test", "_held", "_failed", "__weakref__"),
    )

    def __init__(self, name: str, op: str, operand: typing.Any, path: str) -> None:
        self.name = name
        self.op = op
        self.operand = operand
        self._get = _getter(name)
        self._test, self._held, self._failed = _test(op, operand, path)
        self.test = _field_test(self._get, op, operand, self._test)
        self.cost = _COSTS.get(op, 1)

    def evaluate(self, event: Event) -> bool:
        return self.test(event)

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
    """The rules whose `when` holds, in file order; a `stop` rule ends the search.

    Given a tuple (`Config.rules`), the rules are indexed once by the values
    their `when` requires (the status, a tenant parameter...: see `_Plan`),
    so an event is tested only against the rules that can match it; any
    other iterable is walked in full.
    """
    matched = []
    if isinstance(rules, tuple):
        plan = _plan_for(rules)
        while plan.get is not None:
            plan = plan.by_value.get(plan.get(event), plan.default)
        for rule, test in plan.entries:
            if test is None or test(event):
                matched.append(rule)
                if rule.stop:
                    break
        return matched
    for rule in rules:
        if rule.when is None or rule.when.evaluate(event):
            matched.append(rule)
            if rule.stop:
                break
    return matched


def prepare(rules: tuple[RuleConfig, ...]) -> None:
    """Index `rules` for `match` now (the loader does), not at the first event."""
    _plan_for(rules)


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


# -- matching many rules ---------------------------------------------------------


# A rule being indexed: its place in the file, the rule, and the conditions
# of its `when` that the index has not yet checked (a conjunction).
_Entry = tuple[int, "RuleConfig", list[Condition]]


class _Plan:
    """Rules indexed by the values their `when` requires, for `match`.

    Most rules require a field to equal one text or a few, as a direct
    condition of the `when`: `status: completed`, `params.Tenant: acme`.
    A plan picks the field that most of its rules require and lists each
    rule only under the values it accepts, with the rest of its `when` as
    its test, since the index has checked that condition; rules that do not
    require the field are listed under every value and as the `default`
    (an event whose value no rule names, or an unknown value). Each list
    is a plan again, up to `_DEPTH` levels, then a leaf of `entries` to
    test in turn. Every list keeps file order, so `stop` ends the search
    exactly where a full walk would: a rule left out of a list is one that
    could not have matched.

    A field is not indexed when the rules that do not require it would be
    copied under too many values (more than `_SPREAD` entries per rule).
    """

    __slots__ = ("get", "by_value", "default", "entries")

    def __init__(self, entries: list[_Entry], depth: int = 0) -> None:
        self.get: Callable[[Event], str | None] | None = None
        self.by_value: dict[str | None, _Plan] = {}
        self.default = self
        self.entries: tuple[tuple[RuleConfig, Test | None], ...] = ()
        chosen = _index_field(entries) if depth < _DEPTH and len(entries) >= _MIN_SPLIT else None
        if chosen is None:
            self.entries = tuple((rule, _test_all(rest)) for _, rule, rest in entries)
            return
        lacking: list[_Entry] = []
        under: dict[str, list[_Entry]] = {}
        for position, rule, rest in entries:
            found = _take_key(rest, chosen)
            if found is None:
                lacking.append((position, rule, rest))
                continue
            values, left = found
            for value in values:
                under.setdefault(value, []).append((position, rule, left))
        if len(under) * len(lacking) > _SPREAD * len(entries):
            self.entries = tuple((rule, _test_all(rest)) for _, rule, rest in entries)
            return
        self.get = _key_getter(chosen)
        self.default = _Plan(lacking, depth + 1)
        self.by_value = {
            value: _Plan(sorted(listed + lacking, key=lambda e: e[0]), depth + 1)
            for value, listed in under.items()
        }


_DEPTH = 3
_MIN_SPLIT = 4
_SPREAD = 4

# Plans of the last few rule tuples matched, by identity: a server matches
# against one `Config.rules` for its whole life. The tuple is kept with
# its plan, so its id cannot be reused by another tuple while cached.
_PLANS: dict[int, tuple[tuple[RuleConfig, ...], _Plan]] = {}
_PLANS_KEPT = 8


def _plan_for(rules: tuple[RuleConfig, ...]) -> _Plan:
    cached = _PLANS.get(id(rules))
    if cached is not None and cached[0] is rules:
        return cached[1]
    plan = _Plan([(i, rule, _conjuncts(_present(rule.when))) for i, rule in enumerate(rules)])
    while len(_PLANS) >= _PLANS_KEPT:
        # Another thread may evict the same entry first; either way it goes.
        _PLANS.pop(next(iter(_PLANS), 0), None)
    _PLANS[id(rules)] = (rules, plan)
    return plan


def _present(when: Condition | None) -> tuple[Condition, ...]:
    return () if when is None else (when,)


def _key_values(node: Condition) -> tuple[str, frozenset[str]] | None:
    """The field `node` requires to equal some texts, and those texts, if it does."""
    if isinstance(node, Field) and node.op in ("eq", "in"):
        values = _all_text(node.operand if node.op == "in" else [node.operand])
        return None if values is None else (node.name, values)
    return None


def _index_field(entries: list[_Entry]) -> str | None:
    """The field that most entries require to equal some texts, if at least half do."""
    counts: dict[str, int] = {}
    for _, _, rest in entries:
        names = {key[0] for key in map(_key_values, rest) if key is not None}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    name = max(counts, key=lambda n: counts[n])
    return name if counts[name] * 2 >= len(entries) else None


def _take_key(rest: list[Condition], name: str) -> tuple[frozenset[str], list[Condition]] | None:
    """The values required of field `name` by a condition of `rest`, and the others."""
    for index, node in enumerate(rest):
        key = _key_values(node)
        if key is not None and key[0] == name:
            return key[1], rest[:index] + rest[index + 1 :]
    return None


def _key_getter(name: str) -> Callable[[Event], str | None]:
    """The field as text, as equality compares it; None when unknown."""
    get = _getter(name)

    def key(event: Event) -> str | None:
        value = get(event)
        if value is None or value.__class__ is str:
            return value
        return _text(value)

    return key


def _test_all(parts: list[Condition]) -> Test | None:
    """One test of the conjunction `parts`, cheapest first; None when empty."""
    ordered = sorted(parts, key=_cost)
    return _all_of([_test_of(part) for part in ordered]) if ordered else None


def _conjuncts(nodes: Iterable[Condition]) -> list[Condition]:
    """`nodes` with every `All` among them replaced by its children, recursively."""
    out: list[Condition] = []
    for node in nodes:
        if isinstance(node, All):
            out.extend(_conjuncts(node.children))
        else:
            out.append(node)
    return out


# Rough relative costs, so that a conjunction tries its cheap conditions
# first: a set or string comparison, a number parsed, a regex searched.
_COSTS = {"gt": 2, "gte": 2, "lt": 2, "lte": 2, "matches": 4}


def _cost(node: Condition) -> int:
    return int(getattr(node, "cost", 8))


def _test_of(node: Condition) -> Test:
    test = getattr(node, "test", None)
    return test if test is not None else node.evaluate


# Closures shared by identical conditions, whichever rules they are in: ten
# thousand rules that differ in a tenant name then run a few dozen distinct
# closures rather than ten thousand, which keeps matching in the CPU's
# caches. Weak, so a discarded config takes its closures with it.
_SHARED: weakref.WeakValueDictionary[typing.Hashable, typing.Any] = weakref.WeakValueDictionary()


def _shared(key: typing.Hashable, make: Callable[[], _T]) -> _T:
    """What `make()` makes, made once per `key` while it is in use."""
    try:
        found = _SHARED.get(key)
    except TypeError:  # an operand that cannot be a key (a mapping): not shared
        return make()
    if found is None:
        found = _SHARED.setdefault(key, make())
    return typing.cast(_T, found)


def _not_of(test: Test) -> Test:
    return lambda event: not test(event)


def _all_of(tests: Sequence[Test]) -> Test:
    if len(tests) > 1:
        return _shared(("all", tuple(tests)), lambda: _all_of_tuple(tuple(tests)))
    return tests[0]


def _any_of(tests: Sequence[Test]) -> Test:
    if len(tests) > 1:
        return _shared(("any", tuple(tests)), lambda: _any_of_tuple(tuple(tests)))
    return tests[0]


def _all_of_tuple(tests: tuple[Test, ...]) -> Test:
    if len(tests) == 2:
        first, second = tests
        return lambda event: first(event) and second(event)
    every = tests

    # A loop rather than all(...): no generator made per event.
    def test(event: Event) -> bool:
        for each in every:  # noqa: SIM110
            if not each(event):
                return False
        return True

    return test


def _any_of_tuple(tests: tuple[Test, ...]) -> Test:
    if len(tests) == 2:
        first, second = tests
        return lambda event: first(event) or second(event)
    some = tests

    def test(event: Event) -> bool:
        for each in some:  # noqa: SIM110
            if each(event):
                return True
        return False

    return test


def _field_test(
    get: Callable[[Event], typing.Any],
    op: str,
    operand: typing.Any,
    on_value: Callable[[typing.Any], bool],
) -> Test:
    """`on_value` applied to the field of an event, with the common cases inlined.

    Each closure gives what `on_value(get(event))` gives, an unknown value
    failing every operator but `exists: false`; the shortcuts skip
    `_text` and `_number` for the value types fields usually hold.
    """
    if op == "exists":
        want = operand

        def exists(event: Event) -> bool:
            value = get(event)
            return want is False if value is None else (value != "") is want

        return exists
    texts = _all_text(operand if op in ("in", "not_in") else [operand])
    if op in ("eq", "in", "ne", "not_in") and texts is not None:
        negate = op in ("ne", "not_in")

        def equals(event: Event) -> bool:
            value = get(event)
            if value is None:
                return False
            found = (value if value.__class__ is str else _text(value)) in texts
            return found is not negate

        return equals
    if op in _ORDER:
        compare, bound = _ORDER[op][0], float(operand)

        def order(event: Event) -> bool:
            value = get(event)
            if value.__class__ is int:
                return compare(float(value), bound)
            number = _number(value)
            return number is not None and compare(number, bound)

        return order
    if op == "matches":
        search = re.compile(operand).search

        def matches(event: Event) -> bool:
            value = get(event)
            if value.__class__ is str:
                return search(value) is not None
            return value is not None and search(_text(value)) is not None

        return matches

    def general(event: Event) -> bool:
        value = get(event)
        return value is not None and on_value(value)

    return general


def _all_text(values: typing.Any) -> frozenset[str] | None:
    """`values` as a set when every one is a string (compared as text), else None."""
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        return frozenset(values)
    return None


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
            _field(key, str(op), operand, join_path(path, str(op))) for op, operand in value.items()
        ]
        return fields[0] if len(fields) == 1 else All(fields)
    if isinstance(value, list):
        return _field(key, "in", value, path)
    return _field(key, "eq", value, path)


def _field(name: str, op: str, operand: typing.Any, path: str) -> Field:
    """A `Field`, shared with any identical condition of another rule (see `_SHARED`)."""
    key = ("field", name, op, _typed(operand))
    return _shared(key, lambda: Field(name, op, operand, path))


def _typed(operand: typing.Any) -> typing.Any:
    """`operand` as a key that tells 1, 1.0 and true apart, as conditions do."""
    if isinstance(operand, list):
        return tuple(_typed(item) for item in operand)
    return (type(operand).__name__, operand)


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
    if isinstance(operand, (str, bool)) or _is_number(operand):
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
    """A number a rule may compare with: YAML's `.nan` and `.inf` are not
    (a bound of `.nan` would match nothing, silently)."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool)


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
    if isinstance(value, float) and not math.isfinite(value):
        written = ".nan" if math.isnan(value) else (".inf" if value > 0 else "-.inf")
        return f"{written}, not a finite number"
    if _is_number(value):
        return f"the number {value}"
    return type(value).__name__
