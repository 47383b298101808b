"""rules: compiling `when`, matching events, explaining why."""

from __future__ import annotations

from typing import Any

import pytest
from config_util import SAMPLES

from recflow import rules
from recflow.config import RetryPolicy, RuleConfig, StepConfig
from recflow.errors import ConfigError
from recflow.event import Event, params_from_pairs, parse_event


def sample(name: str, **extra: str) -> Event:
    from urllib.parse import parse_qsl

    pairs = parse_qsl((SAMPLES / name).read_text().strip(), keep_blank_values=True)
    return parse_event(params_from_pairs(pairs, extra.items()))


COMPLETED = sample("completed.form", tenant="acme", Flag="true")  # duration 94
IN_PROGRESS = sample("in-progress.form")  # duration -1: unknown
ABSENT = sample("absent.form")  # duration 0, error code 16102


def holds(when: Any, event: Event) -> bool:
    condition = rules.compile_when(when, "when")
    assert condition is not None
    return condition.evaluate(event)


CASES = [
    pytest.param({"status": "completed"}, COMPLETED, True, id="scalar-eq"),
    pytest.param({"status": "absent"}, COMPLETED, False, id="scalar-eq-fails"),
    pytest.param({"status": ["absent", "completed"]}, COMPLETED, True, id="list-in"),
    pytest.param({"duration": {"gte": 5}}, COMPLETED, True, id="gte"),
    pytest.param({"duration": {"gte": 5}}, ABSENT, False, id="gte-fails"),
    pytest.param({"duration": {"lt": 100, "gt": 90}}, COMPLETED, True, id="range"),
    pytest.param({"duration": {"gte": 0}}, IN_PROGRESS, False, id="unknown-no-order"),
    pytest.param({"duration": {"ne": 5}}, IN_PROGRESS, False, id="unknown-no-ne"),
    pytest.param({"duration": {"not_in": [5]}}, IN_PROGRESS, False, id="unknown-no-not-in"),
    pytest.param({"duration": {"exists": False}}, IN_PROGRESS, True, id="unknown-exists-false"),
    pytest.param({"not": {"duration": 5}}, IN_PROGRESS, True, id="not-eq-unknown"),
    pytest.param({"duration": 94}, COMPLETED, True, id="number-eq"),
    pytest.param({"duration": "94"}, COMPLETED, True, id="string-vs-int"),
    pytest.param({"params.RecordingDuration": {"gt": 90}}, COMPLETED, True, id="numeric-param"),
    pytest.param({"params.RecordingDuration": 94.0}, COMPLETED, True, id="numeric-param-eq"),
    pytest.param({"params.tenant": {"gt": 1}}, COMPLETED, False, id="text-vs-number"),
    pytest.param({"error_code": 16102}, ABSENT, True, id="number-vs-text-field"),
    pytest.param({"params.Flag": True}, COMPLETED, True, id="bool-as-text"),
    pytest.param({"params.tenant": "acme"}, COMPLETED, True, id="query-param"),
    pytest.param({"params.tenant": {"exists": True}}, ABSENT, False, id="absent-param"),
    pytest.param({"params.tenant": {"matches": "^ac"}}, COMPLETED, True, id="matches"),
    pytest.param({"recording_url": {"matches": r"\.twilio\.com/"}}, COMPLETED, False, id="nomatch"),
    pytest.param({"status": {"ne": "absent"}}, COMPLETED, True, id="ne"),
    pytest.param({"status": {"not_in": ["absent", "failed"]}}, ABSENT, False, id="not-in"),
    pytest.param({"conference_sid": {"exists": True}}, COMPLETED, False, id="exists-null"),
    pytest.param(
        {"any": [{"status": "absent"}, {"duration": {"gte": 60}}]}, COMPLETED, True, id="any"
    ),
    pytest.param(
        {"all": [{"status": "completed"}, {"duration": {"lt": 60}}]}, COMPLETED, False, id="all"
    ),
    pytest.param(
        {"status": "completed", "not": {"params.tenant": "beta"}}, COMPLETED, True, id="mixed"
    ),
]


@pytest.mark.parametrize(("when", "event", "expected"), CASES)
def test_conditions(when: Any, event: Event, expected: bool) -> None:
    assert holds(when, event) is expected


EXPLAIN = [
    pytest.param({"duration": {"gte": 100}}, COMPLETED, "duration 94 is not >= 100", id="failed"),
    pytest.param({"duration": {"gte": 5}}, COMPLETED, "duration 94 >= 5", id="held"),
    pytest.param({"duration": {"gte": 5}}, IN_PROGRESS, "duration is unknown", id="unknown"),
    pytest.param(
        {"status": "completed", "duration": {"lt": 10}},
        COMPLETED,
        "duration 94 is not < 10",
        id="first-failing-child",
    ),
    pytest.param(
        {"status": "completed", "duration": {"gt": 10}},
        COMPLETED,
        "status 'completed' is 'completed' and duration 94 > 10",
        id="all-held",
    ),
    pytest.param(
        {"any": [{"status": "absent"}, {"status": "failed"}]},
        COMPLETED,
        "none of: status 'completed' is not 'absent'; status 'completed' is not 'failed'",
        id="any-failed",
    ),
    pytest.param(
        {"not": {"status": "completed"}},
        COMPLETED,
        "not (status 'completed' is 'completed')",
        id="not",
    ),
    pytest.param(
        {"params.tenant": {"exists": True}}, ABSENT, "params.tenant does not exist", id="exists"
    ),
]


@pytest.mark.parametrize(("when", "event", "reason"), EXPLAIN)
def test_explain_says_why(when: Any, event: Event, reason: str) -> None:
    condition = rules.compile_when(when, "when")
    assert condition is not None
    assert condition.explain(event) == reason


BAD = [
    pytest.param({}, "when", "empty condition", id="empty"),
    pytest.param({"duration": {"gtee": 5}}, "when.duration.gtee", "accepted: eq, ne", id="op"),
    pytest.param({"duration": {}}, "when.duration", "empty operator mapping", id="no-op"),
    pytest.param({"durration": 5}, "when.durration", "unknown field", id="field"),
    pytest.param({"params.": 5}, "when.params.", "unknown field", id="params-without-name"),
    pytest.param({"all": []}, "when.all", "empty all", id="empty-all"),
    pytest.param({"any": {"status": "x"}}, "when.any", "expected a list", id="any-not-list"),
    pytest.param({"not": []}, "when.not", "expected a mapping", id="not-list"),
    pytest.param({"any": [{"status": {"gtee": 1}}]}, "when.any[0].status.gtee", "", id="deep"),
    pytest.param({"duration": {"gte": "five"}}, "when.duration.gte", "a number", id="order-str"),
    pytest.param({"duration": {"in": 5}}, "when.duration.in", "non-empty list", id="in-scalar"),
    pytest.param({"source": None}, "when.source", "exists: false", id="null"),
    pytest.param({"source": {"eq": [1]}}, "when.source.eq", "a string", id="eq-list"),
    pytest.param({"track": {"matches": "("}}, "when.track.matches", "bad regular", id="regex"),
    pytest.param({"track": {"exists": "yes"}}, "when.track.exists", "true or false", id="exists"),
    pytest.param(["status"], "when", "expected a mapping", id="list"),
]


@pytest.mark.parametrize(("when", "path", "message"), BAD)
def test_bad_conditions_are_located_errors(when: Any, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rules.compile_when(when, "when")
    assert caught.value.path == path
    assert message in caught.value.message


def test_absent_when_matches_everything() -> None:
    assert rules.compile_when(None, "when") is None


def rule(name: str, when: Any = None, stop: bool = False) -> RuleConfig:
    step = StepConfig(
        index=0, action="notify", id=None, params={}, raw_params={}, retry=RetryPolicy()
    )
    return RuleConfig(name=name, when=rules.compile_when(when, "when"), steps=(step,), stop=stop)


RULES = (
    rule("never", {"status": "failed"}),
    rule("all"),
    rule("long", {"duration": {"gte": 60}}, stop=True),
    rule("after-stop"),
)


@pytest.mark.parametrize(
    ("event", "names"),
    [
        pytest.param(COMPLETED, ["all", "long"], id="stop-ends-search"),
        pytest.param(ABSENT, ["all", "after-stop"], id="stop-rule-not-matched"),
    ],
)
def test_match_in_file_order(event: Event, names: list[str]) -> None:
    assert [r.name for r in rules.match(RULES, event)] == names


def test_explain_covers_every_rule() -> None:
    report = [(r.name, held, reason) for r, held, reason in rules.explain(RULES, COMPLETED)]
    assert report == [
        ("never", False, "status 'completed' is not 'failed'"),
        ("all", True, "no when: matches every event"),
        ("long", True, "duration 94 >= 60"),
        ("after-stop", False, "not tried: rule 'long' matched with stop: true"),
    ]


def test_unknown_status_is_matchable() -> None:
    event = sample("completed.form", RecordingStatus="paused")
    assert event.status == "completed"  # the body wins over the query
    paused = parse_event({**dict(COMPLETED.params), "RecordingStatus": "paused"})
    assert holds({"status": "paused"}, paused)


# -- matching many rules: the index against a plain reading of the rules ------------

STATUSES = ["completed", "absent", "failed", "paused"]
TENANTS = ["acme", "beta", "gamma"]


def _scalar_strategy(field: str) -> Any:
    from hypothesis import strategies as st

    if field == "status":
        return st.sampled_from(STATUSES)
    if field == "params.Tenant":
        return st.sampled_from(TENANTS)
    if field == "duration":
        return st.sampled_from([0, 5, 60, "5", 5.0])
    return st.sampled_from(["5", "x", 5, True, ""])


def _field_condition(field: str) -> Any:
    from hypothesis import strategies as st

    scalar = _scalar_strategy(field)
    ops = st.one_of(
        st.tuples(st.sampled_from(["eq", "ne"]), scalar),
        st.tuples(st.sampled_from(["in", "not_in"]), st.lists(scalar, min_size=1, max_size=3)),
        st.tuples(st.sampled_from(["gt", "gte", "lt", "lte"]), st.sampled_from([0, 5, 30])),
        st.tuples(st.just("matches"), st.sampled_from(["^c", "a", "^$", "[0-9]"])),
        st.tuples(st.just("exists"), st.booleans()),
    )
    return st.one_of(
        scalar,
        st.lists(scalar, min_size=1, max_size=3),
        st.lists(ops, min_size=1, max_size=2).map(dict),
    )


def _when_strategy() -> Any:
    from hypothesis import strategies as st

    fields = ["status", "duration", "params.Tenant", "params.N"]
    leaf = st.sampled_from(fields).flatmap(lambda f: _field_condition(f).map(lambda c: {f: c}))

    def combine(children: Any) -> Any:
        return st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda ws: {"all": ws}),
            st.lists(children, min_size=1, max_size=3).map(lambda ws: {"any": ws}),
            children.map(lambda w: {"not": w}),
            st.lists(children, min_size=2, max_size=3).map(
                lambda ws: {k: v for w in ws for k, v in w.items()}
            ),
        )

    return st.recursive(leaf, combine, max_leaves=5)


def _reference(when: Any, event: Event) -> bool:
    """Whether `when` holds, read straight from the documented semantics."""
    if when is None:
        return True
    return all(_reference_key(key, value, event) for key, value in when.items())


def _reference_key(key: str, value: Any, event: Event) -> bool:
    if key == "all":
        return all(_reference(w, event) for w in value)
    if key == "any":
        return any(_reference(w, event) for w in value)
    if key == "not":
        return not _reference(value, event)
    name = key.removeprefix("params.")
    actual = event.params.get(name) if key.startswith("params.") else getattr(event, key)
    if isinstance(value, dict):
        return all(_reference_op(op, operand, actual) for op, operand in value.items())
    return _reference_op("in" if isinstance(value, list) else "eq", value, actual)


def _reference_op(op: str, operand: Any, actual: Any) -> bool:
    import operator
    import re

    if op == "exists":
        return (actual is not None and actual != "") is operand
    if actual is None:
        return False
    if op in ("eq", "ne", "in", "not_in"):
        items = operand if op in ("in", "not_in") else [operand]
        hit = any(_reference_equal(item, actual) for item in items)
        return hit if op in ("eq", "in") else not hit
    if op == "matches":
        return re.search(operand, str(actual)) is not None
    number = _reference_number(actual)
    compare = {"gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le}
    return number is not None and compare[op](number, float(operand))


def _reference_equal(item: Any, actual: Any) -> bool:
    if isinstance(item, bool):
        return str(actual).lower() == str(item).lower()
    if isinstance(item, (int, float)):
        return _reference_number(actual) == float(item)
    return str(actual) == item


def _reference_number(actual: Any) -> float | None:
    if isinstance(actual, int):
        return float(actual)
    try:
        return float(actual)
    except ValueError:
        return None


def _event(status: str, duration: int | None, params: dict[str, str]) -> Event:
    return Event(
        account_sid="AC1",
        call_sid="CA1",
        recording_sid="RE1",
        recording_url="https://api.example.com/r",
        status=status,
        duration=duration,
        params=params,
    )


def test_indexed_match_equals_a_plain_reading_of_every_rule() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    specs = st.lists(
        st.tuples(st.one_of(st.none(), _when_strategy()), st.sampled_from([False] * 5 + [True])),
        max_size=24,
    )
    params = st.fixed_dictionaries(
        {},
        optional={"Tenant": st.sampled_from(TENANTS), "N": st.sampled_from(["5", "x", "", "30"])},
    )
    events = st.builds(_event, st.sampled_from(STATUSES), st.sampled_from([None, 0, 5, 60]), params)

    @settings(max_examples=300, deadline=None)
    @given(specs, st.lists(events, min_size=1, max_size=4))
    def check(specs: list[tuple[Any, bool]], events: list[Event]) -> None:
        ruleset = tuple(rule(f"r{i}", when, stop) for i, (when, stop) in enumerate(specs))
        for event in events:
            expected = []
            for i, (when, stop) in enumerate(specs):
                if _reference(when, event):
                    expected.append(f"r{i}")
                    if stop:
                        break
            assert [r.name for r in rules.match(ruleset, event)] == expected
            assert [r.name for r in rules.match(list(ruleset), event)] == expected

    check()


@pytest.mark.parametrize(
    ("tenant", "names"),
    [
        pytest.param("t3", ["catch-all", "t3", "any-status"], id="one-tenant"),
        pytest.param("t7", ["catch-all", "t7-stop"], id="stop-ends-search"),
        pytest.param("nobody", ["catch-all", "any-status"], id="no-tenant-rule"),
    ],
)
def test_many_tenant_rules_keep_file_order_and_stop(tenant: str, names: list[str]) -> None:
    ruleset = (
        rule("catch-all", {"status": "completed"}),
        *(rule(f"t{n}", {"status": "completed", "params.Tenant": f"t{n}"}) for n in range(7)),
        rule("t7-stop", {"status": ["completed", "absent"], "params.Tenant": "t7"}, stop=True),
        rule("any-status", {"duration": {"gte": 5}}),
        rule("absent-only", {"status": "absent"}),
    )
    event = _event("completed", 60, {"Tenant": tenant})
    assert [r.name for r in rules.match(ruleset, event)] == names
