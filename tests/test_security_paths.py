"""Paths built from templates stay where the config put them.

A callback's values are chosen by whoever can place a call. Rendered into
a `store` target they could climb out of the directory (`..`, an absolute
path, `%2e%2e`, a NUL, a backslash, a `..` hidden behind `?`). The store
action refuses such targets before touching storage, and the `filename`
filter turns any value into one harmless name. Both are tested with the
real store action, real audio from the emulator, and real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from emulator import ACCOUNT, Emulator, step_context

from recflow.actions import store
from recflow.errors import ActionError
from recflow.event import Event
from recflow.templates import FILENAME_MAX, compile_params, filename, render_params

SID = "0c1d2e3f-4a5b-4c6d-8e7f-8091a2b3c4d5"

HOSTILE = [
    pytest.param("../../escaped", id="dot-dot"),
    pytest.param("a/../../../escaped", id="dot-dot-inside"),
    pytest.param("/etc/escaped", id="absolute-path"),
    pytest.param("%2e%2e/%2e%2e/escaped", id="percent-encoded-dots"),
    pytest.param("%252e%252e/%252e%252e/escaped", id="double-encoded-dots"),
    pytest.param("..%2f..%2fescaped", id="encoded-slash"),
    pytest.param("x?/../../escaped", id="dot-dot-behind-question-mark"),
    pytest.param("x#/../../escaped", id="dot-dot-behind-hash"),
    pytest.param("..\\..\\escaped", id="backslashes"),
    pytest.param("name\x00.txt", id="nul"),
    pytest.param("%00escaped", id="encoded-nul"),
    pytest.param("line\nbreak", id="newline"),
]


def _render_target(template: str, value: str) -> str:
    """`template` rendered for an event whose `Tenant` parameter is `value`."""
    event = Event(
        account_sid=ACCOUNT,
        call_sid="c",
        recording_sid=SID,
        recording_url="unused",
        status="completed",
        params={"RecordingSid": SID, "Tenant": value},
    )
    compiled = compile_params({"to": template}, "with")
    rendered = render_params(compiled, {"event": event, "rule": {"name": "r"}, "steps": {}})
    return str(rendered["to"])


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


@pytest.mark.parametrize("value", HOSTILE)
def test_store_refuses_a_target_that_escapes(
    emulator: Emulator, tmp_path: Path, value: str
) -> None:
    emulator.add_recording(SID)
    root = tmp_path / "root" / "recordings"
    root.mkdir(parents=True)
    target = _render_target(f"file://{root}/{{{{ event.params.Tenant }}}}/{SID}.wav", value)

    with pytest.raises(ActionError) as caught:
        store.run({"to": target}, step_context(emulator, SID))

    assert caught.value.permanent
    assert _files(tmp_path) == []
    assert emulator.media_requests(SID) == []


@pytest.mark.parametrize("value", HOSTILE)
def test_filename_filter_keeps_hostile_values_inside(
    emulator: Emulator, tmp_path: Path, value: str
) -> None:
    emulator.add_recording(SID)
    root = tmp_path / "recordings"
    root.mkdir()
    target = _render_target(f"file://{root}/{{{{ event.params.Tenant | filename }}}}.wav", value)

    outputs = store.run({"to": target}, step_context(emulator, SID))

    [stored] = _files(tmp_path)
    assert stored.startswith("recordings/")
    assert "/" not in stored.removeprefix("recordings/")
    assert outputs["url"] == target


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("acme", "acme", id="plain"),
        pytest.param("RE0123abcd-ef.wav", "RE0123abcd-ef.wav", id="id-like"),
        pytest.param("..", "_", id="dot-dot"),
        pytest.param(".hidden", "hidden", id="leading-dot"),
        pytest.param("a/b\\c", "a_b_c", id="separators"),
        pytest.param("Zo\u00eb \u260e", "Zo_", id="non-ascii"),
        pytest.param("", "_", id="empty"),
        pytest.param(42, "42", id="number"),
        pytest.param("x" * 500, "x" * FILENAME_MAX, id="long"),
    ],
)
def test_filename_filter(value: object, expected: str) -> None:
    assert filename(value) == expected


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("file:///srv/recordings/acme/RE1.wav", id="local"),
        pytest.param("s3://bucket/acme/2024-06-03/RE1.mp3", id="s3"),
        pytest.param("file:///srv/rec/a%20b/RE1.wav", id="encoded-space"),
        pytest.param("file:///srv/rec/v1.2..3/RE1.wav", id="dots-inside-a-name"),
    ],
)
def test_ordinary_targets_pass_the_check(target: str) -> None:
    store._check_target(target)
