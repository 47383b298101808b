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
