"""recflow.event: what a callback's parameters become, field by field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from recflow.errors import RequestError
from recflow.event import (
    Event,
    event_id,
    params_from_json,
    params_from_pairs,
    parse_event,
)

SAMPLES = Path(__file__).parent / "samples"


def form(name: str) -> dict[str, str]:
    body = (SAMPLES / name).read_text().strip()
    return params_from_pairs(parse_qsl(body, keep_blank_values=True))


def test_completed_sample_gives_every_field() -> None:
    event = parse_event(form("completed.form"))

    assert event.account_sid == "b3877c40-da60-4998-90ad-b792e98472af"
    assert event.call_sid == "b3877c40-da60-4998-90ad-b792e98472ca"
    assert event.recording_sid == "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"
    assert event.recording_url.startswith("https://example.signalwire.com/api/laml/")
    assert event.status == "completed"
    assert event.duration == 94
    assert event.channels == 1
    assert event.source == "RecordVerb"
    assert event.start_time is None
    assert event.error_code is None
    assert event.params["RecordingDuration"] == "94"


def test_form_and_json_samples_give_the_same_event() -> None:
    from_json = parse_event(params_from_json(json.loads((SAMPLES / "completed.json").read_text())))

    assert from_json == parse_event(form("completed.form"))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param("94", 94, id="digits"),
        pytest.param(" 7 ", 7, id="spaces"),
        pytest.param("12.0", 12, id="json-float-text"),
        pytest.param("-1", None, id="in-progress-minus-one"),
        pytest.param("", None, id="empty"),
        pytest.param("abc", None, id="garbage"),
        pytest.param("nan", None, id="nan"),
        pytest.param("inf", None, id="infinity"),
        pytest.param("1e308", None, id="absurdly-large"),
        pytest.param("0", 0, id="zero"),
        pytest.param("\u0663", None, id="arabic-indic-digit"),
    ],
)
def test_durations(raw: str, expected: int | None) -> None:
    params = form("completed.form") | {"RecordingDuration": raw}

    assert parse_event(params).duration == expected


def test_absent_keeps_its_error_code_and_in_progress_has_no_duration() -> None:
    assert parse_event(form("absent.form")).error_code == "16102"
    assert parse_event(form("in-progress.form")).duration is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            "Thu, 03 Dec 2026 16:00:00 +0000",
            datetime(2026, 12, 3, 16, 0, tzinfo=UTC),
            id="rfc2822-as-twilio-sends",
        ),
        pytest.param(
            "2026-12-03T16:00:00+00:00", datetime(2026, 12, 3, 16, 0, tzinfo=UTC), id="iso"
        ),
        pytest.param("yesterday", None, id="garbage"),
    ],
)
def test_start_time(raw: str, expected: datetime | None) -> None:
    params = form("completed.form") | {"RecordingStartTime": raw}

    assert parse_event(params).start_time == expected


@pytest.mark.parametrize("name", ["AccountSid", "RecordingSid", "RecordingUrl", "RecordingStatus"])
@pytest.mark.parametrize("value", [None, "", "   "], ids=["absent", "empty", "blank"])
def test_required_fields(name: str, value: str | None) -> None:
    params = form("completed.form")
    if value is None:
        del params[name]
    else:
        params[name] = value

    with pytest.raises(RequestError) as raised:
        parse_event(params)

    assert raised.value.status == 400
    assert name in raised.value.reason


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("RecordingSid", "a/b", id="slash"),
        pytest.param("RecordingSid", "..", id="dots"),
        pytest.param("RecordingSid", "x" * 65, id="too-long"),
        pytest.param("AccountSid", "acct\nINFO forged", id="newline"),
        pytest.param("CallSid", "CA\x1b]0;title\x07", id="terminal-escape"),
        pytest.param("ConferenceSid", "CF 1", id="space"),
    ],
)
def test_ids_that_no_provider_sends_are_refused(name: str, value: str) -> None:
    params = form("completed.form") | {name: value}

    with pytest.raises(RequestError) as raised:
        parse_event(params)

    assert raised.value.status == 400
    assert name in raised.value.detail


@pytest.mark.parametrize(
    "sid",
    [
        pytest.param("RE2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d2d", id="twilio"),
        pytest.param("7e2d1c4b-90ad-4998-b792-e984a1b2c3d4", id="signalwire-uuid"),
        pytest.param("rec_42", id="underscore"),
    ],
)
def test_ids_of_either_provider_are_accepted(sid: str) -> None:
    assert parse_event(form("completed.form") | {"RecordingSid": sid}).recording_sid == sid


def test_unknown_status_is_kept_for_rules_to_match() -> None:
    assert parse_event(form("completed.form") | {"RecordingStatus": "paused"}).status == "paused"


def test_json_values_become_the_strings_a_form_would_carry() -> None:
    params = params_from_json(
        {"A": "text", "N": 94, "F": 1.5, "T": True, "Z": None, "L": [1, "x"], "O": {"k": 1}}
    )

    assert params == {
        "A": "text",
        "N": "94",
        "F": "1.5",
        "T": "true",
        "L": '[1,"x"]',
        "O": '{"k":1}',
    }


@pytest.mark.parametrize("document", [[], "x", 3, None], ids=["list", "str", "int", "null"])
def test_json_body_must_be_an_object(document: object) -> None:
    with pytest.raises(RequestError) as raised:
        params_from_json(document)

    assert raised.value.status == 400


def test_body_parameters_win_over_the_query_and_first_occurrence_wins() -> None:
    body = [("RecordingStatus", "completed"), ("Tag", "b"), ("Tag", "a")]
    query = [("RecordingStatus", "absent"), ("tenant", "acme")]

    assert params_from_pairs(body, query) == {
        "RecordingStatus": "completed",
        "Tag": "b",
        "tenant": "acme",
    }


def test_event_is_immutable_and_round_trips_through_the_journal_form() -> None:
    event = parse_event(
        form("completed.form") | {"RecordingStartTime": "Thu, 03 Dec 2026 16:00:00 +0000"}
    )

    with pytest.raises(AttributeError):
        event.status = "absent"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.params["RecordingStatus"] = "absent"  # type: ignore[index]
    assert Event.from_dict(json.loads(json.dumps(event.to_dict()))) == event


def test_event_id_is_the_dedupe_key_of_account_recording_and_status() -> None:
    completed = parse_event(form("completed.form"))
    retried = parse_event(form("completed.form") | {"RecordingDuration": "95"})
    absent = parse_event(form("absent.form"))

    assert completed.id == retried.id
    assert completed.id != absent.id
    assert completed.id == event_id(
        completed.account_sid, completed.recording_sid, completed.status
    )
    assert event_id("a", "bc", "d") != event_id("ab", "c", "d")
