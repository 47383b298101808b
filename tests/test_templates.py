"""templates: compile at load, render per event, check against a sample event."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from config_util import ACTIONS, PROVIDER, marked_line, write_config

from recflow import config
from recflow.errors import ConfigError, TemplateError
from recflow.event import parse_event
from recflow.plugins import build_plugin_manager
from recflow.templates import (
    check_config,
    compile_params,
    placeholder_steps,
    render_params,
    sample_event,
)

EVENT = sample_event()


def context(**steps: dict[str, Any]) -> dict[str, Any]:
    return {"event": EVENT, "rule": {"name": "archive"}, "steps": steps}


RENDER = [
    pytest.param("plain text", "plain text", id="plain"),
    pytest.param("{{ event.duration }} s", "94 s", id="field"),
    pytest.param("{{ event.params.RecordingSource }}", "RecordVerb", id="param"),
    pytest.param("{{ rule.name }}/{{ steps.archive.url }}", "archive/s3://b/k", id="steps"),
    pytest.param("{{ event.start_time.year }}", "2024", id="datetime"),
    pytest.param("{% if event.duration > 60 %}long{% else %}short{% endif %}", "long", id="if"),
    pytest.param(
        {"to": ["a-{{ event.status }}", 3], "n": None, "attach": True},
        {"to": ["a-completed", 3], "n": None, "attach": True},
        id="nested",
    ),
]


@pytest.mark.parametrize(("params", "expected"), RENDER)
def test_render(params: Any, expected: Any) -> None:
    compiled = compile_params(params, "with")
    assert render_params(compiled, context(archive={"url": "s3://b/k"})) == expected


def test_callback_values_are_data_not_templates() -> None:
    params = {**EVENT.params, "RecordingSource": "{{ 7 * 7 }}{% raw %}"}
    event = parse_event(params)
    out = render_params(compile_params("from {{ event.source }}", "with"), {"event": event})
    assert out == "from {{ 7 * 7 }}{% raw %}"


RENDER_ERRORS = [
    pytest.param("{{ event.recording_sd }}", "event has no field 'recording_sd'", id="field"),
    pytest.param("{{ evnt.status }}", "'evnt' is undefined", id="name"),
    pytest.param("{{ steps.archiv.url }}", "'archiv'", id="step"),
    pytest.param("{{ event.params.Nope }}", "no parameter 'Nope'", id="param"),
    pytest.param("{{ event.__class__.__mro__ }}", "no field '__class__'", id="sandbox"),
    pytest.param("{{ 1 / 0 }}", "ZeroDivisionError", id="arith"),
]


@pytest.mark.parametrize(("source", "message"), RENDER_ERRORS)
def test_render_errors_are_one_line_template_errors(source: str, message: str) -> None:
    compiled = compile_params({"x": source}, "with")
    with pytest.raises(TemplateError) as caught:
        render_params(compiled, context(archive={"url": "u"}))
    text = str(caught.value)
    assert text.startswith("with.x: ")
    assert message in text
    assert "\n" not in text


def test_syntax_error_at_compile_is_located() -> None:
    with pytest.raises(ConfigError) as caught:
        compile_params(
            {"body": ["ok", "{% if %}"]},
            "rules[0].steps[0].with",
            {"rules[0].steps[0].with.body": 12},
        )
    assert caught.value.path == "rules[0].steps[0].with.body[1]"
    assert caught.value.line == 12


@pytest.mark.parametrize(
    ("source", "message"),
    [
        pytest.param("{{ event.sid | shout }}", "No filter named 'shout'", id="unknown-filter"),
        pytest.param("{{ event.sid is loud }}", "No test named 'loud'", id="unknown-test"),
    ],
)
def test_unknown_filters_and_tests_fail_at_load_not_at_render(source: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_params({"to": source}, "with")


def test_a_template_repeated_across_rules_renders_in_each() -> None:
    source = "file:///r/{{ event.recording_sid }}.wav"
    first, second = compile_params(source, "a"), compile_params(source, "b")
    assert render_params(first, context()) == render_params(second, context())
    assert render_params(second, context()) == f"file:///r/{EVENT.recording_sid}.wav"


def test_placeholder_steps_show_what_is_not_known_yet() -> None:
    out = render_params(
        compile_params("{{ steps.archive.url }} {{ steps.archive.bytes }}", "with"),
        {"steps": placeholder_steps(["archive", None])},
    )
    assert out == "<steps.archive.url> <steps.archive.bytes>"


def test_sample_event_is_realistic() -> None:
    assert EVENT.status == "completed"
    assert EVENT.duration == 94
    assert EVENT.recording_url.endswith(EVENT.recording_sid)
    assert parse_event(EVENT.params).to_dict()["duration"] == 94


# A rule whose first step is a `store` with the id `archive`; its `with:` follows.
ARCHIVE_FIRST = (
    PROVIDER
    + """\
rules:
  - name: archive
    steps:
      - id: archive
        action: store
"""
)


def test_check_config_reports_typos_with_file_line_and_path(tmp_path: Path) -> None:
    text = (
        ARCHIVE_FIRST
        + """\
        with: {to: "file:///r/{{ event.recording_sid }}.{{ event.params.Anything }}"}
      - action: notify
        with:
          to: ["{{ steps.archive.url }}"]
          body: "see {{ event.recording_sd }}"  # <-
      - action: notify
        with:
          body: "{{ steps.later.url }}"
      - id: later
        action: notify
"""
    )
    path = write_config(tmp_path, text)
    problems = check_config(config.load(path, ACTIONS))
    line = marked_line(text)
    assert problems[0].startswith(f"{path}:{line}: rules[0].steps[1].with.body: ")
    assert "recording_sd" in problems[0]
    assert problems[1].startswith(f"{path}:{line + 3}: rules[0].steps[2].with.body: ")
    assert problems[1].endswith(
        "no earlier step has the id 'later'; earlier steps' ids: archive"
    ), problems[1]
    assert len(problems) == 2


def test_check_config_passes_a_good_config() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    assert check_config(config.load(str(example), ACTIONS)) == []


def test_check_config_passes_rendered_params_to_the_action_check(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def check(params: Any) -> list[str]:
        seen.append(dict(params))
        return ["to: no  such\nplace"] if "nowhere" in params["to"] else []

    actions = dict(ACTIONS, store=dataclasses.replace(ACTIONS["store"], check=check))
    text = (
        PROVIDER
        + """\
rules:
  - name: a
    steps:
      - action: store
        with: {to: "file:///r/{{ event.recording_sid }}.wav"}
      - action: store  # <-
        with: {to: "nowhere://{{ event.recording_sid }}"}
      - action: store
        with: {to: "{{ event.nope }}"}
"""
    )
    path = write_config(tmp_path, text)
    problems = check_config(config.load(path, actions), actions)
    sid = EVENT.recording_sid
    assert seen == [{"to": f"file:///r/{sid}.wav"}, {"to": f"nowhere://{sid}"}]
    line = marked_line(text)
    assert problems[0] == f"{path}:{line}: rules[0].steps[1].with: to: no such place"
    assert "event has no field 'nope'" in problems[1]
    assert len(problems) == 2


def test_check_config_reports_a_check_that_raises(tmp_path: Path) -> None:
    def check(params: Any) -> list[str]:
        raise KeyError("format")

    spec = dataclasses.replace(ACTIONS["store"], check=check, plugin="acme")
    actions = dict(ACTIONS, store=spec)
    path = write_config(
        tmp_path,
        PROVIDER + "rules:\n  - name: a\n    steps:\n      - {action: store, with: {to: x}}\n",
    )
    (problem,) = check_config(config.load(path, actions), actions)
    assert problem.endswith("the check of action 'store' (acme) failed: 'format'")


def test_a_step_id_where_no_earlier_step_has_one_says_how_to_name_one() -> None:
    params = compile_params({"body": "{{ steps.archive.url }}"}, "with")
    with pytest.raises(TemplateError) as caught:
        render_params(
            params, {"event": EVENT, "rule": {"name": "r"}, "steps": placeholder_steps([None])}
        )
    assert "no earlier step has the id 'archive'; earlier steps' ids: none" in str(caught.value)


def test_check_config_knows_the_outputs_an_action_declares(tmp_path: Path) -> None:
    text = (
        ARCHIVE_FIRST
        + """\
        with: {to: "file:///r/{{ event.recording_sid }}.wav"}
      - action: webhook
        with:
          url: "https://hooks.example.com/stored"
          headers: {X-Stored: "{{ steps.archive.urll }}"}  # <-
      - action: webhook
        with:
          url: "https://hooks.example.com/{{ steps.archive.sha256 }}"
"""
    )
    path = write_config(tmp_path, text)
    actions = build_plugin_manager().actions
    problems = check_config(config.load(path, actions), actions)
    assert problems == [
        f"{path}:{marked_line(text)}: rules[0].steps[1].with.headers.X-Stored: step 'archive'"
        " has no output 'urll'; its outputs: bytes, content_type, format, sha256, url"
    ]
