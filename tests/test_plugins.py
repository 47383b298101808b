"""The plugin system: loading, validating, listing plugins, running actions.

Installed plugins are real distributions (tests/plugins/*) installed with
pip into a directory of their own; `recflow` runs with it on PYTHONPATH.
recflow-transcribe is expected installed in the test environment, as the
test command does (`pip install -e plugins/recflow-transcribe`).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from emulator import ACCOUNT, TOKEN, Emulator, step_context
from plugins_util import pip_install, plugins_json, recflow, speech
from serve_util import running_server, signed_form

from recflow import ActionError, ConfigError, hookimpl
from recflow.plugins import (
    ActionSpec,
    add_commands,
    build_plugin_manager,
    call_action,
)

SPOKEN = "one two three four five. please call me back tomorrow."
KEY_WORDS = {"one", "two", "three", "four", "five", "call", "back", "tomorrow"}

needs_speech_tools = pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")),
    reason="espeak-ng and sox make the speech",
)


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A broken plugin and a plugin with commands, pip-installed into their own dir."""
    return pip_install(
        ["broken", "greet", "engine-tally"], tmp_path_factory.mktemp("broken") / "site"
    )


@pytest.fixture(scope="session")
def conflict_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two plugins that both add the action `shout`."""
    return pip_install(["shout-a", "shout-b"], tmp_path_factory.mktemp("conflict") / "site")


@pytest.fixture(scope="session")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox make the speech")
    return speech(SPOKEN, tmp_path_factory.mktemp("speech") / "spoken.wav")


def _plugin(**hooks: Any) -> object:
    """A plugin object whose hooks are the given functions."""
    namespace = {name: staticmethod(hookimpl(function)) for name, function in hooks.items()}
    return type("Plugin", (), namespace)()


def _register(*specs: Any) -> object:
    def register_actions(register: Any) -> None:
        for spec in specs:
            register(spec)

    return _plugin(register_actions=register_actions)


def _run(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"got": params}


# -- running actions ------------------------------------------------------------


async def _async_run(params: dict[str, Any], ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"async": True, **params}


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        pytest.param(_run, {"got": {"n": 1}}, id="sync"),
        pytest.param(_async_run, {"async": True, "n": 1}, id="coroutine"),
        pytest.param(lambda p, c: None, {}, id="none-is-no-outputs"),
        pytest.param(lambda p, c: {"list": [1, "a", None]}, {"list": [1, "a", None]}, id="json"),
    ],
)
def test_call_action_returns_outputs(run: Any, expected: dict[str, Any]) -> None:
    spec = ActionSpec(name="a", run=run, plugin="p")
    assert call_action(spec, {"n": 1}, None) == expected


def test_call_action_runs_a_coroutine_from_inside_an_event_loop() -> None:
    spec = ActionSpec(name="a", run=_async_run, plugin="p")

    async def caller() -> dict[str, Any]:
        return call_action(spec, {"n": 2}, None)

    assert asyncio.run(caller()) == {"async": True, "n": 2}


@pytest.mark.parametrize(
    ("result", "complaint"),
    [
        pytest.param(["a"], "returned list, expected a mapping", id="list"),
        pytest.param("done", "returned str, expected a mapping", id="string"),
        pytest.param({1: "x"}, "output key 1, not a string", id="int-key"),
        pytest.param({"raw": b"x"}, "output 'raw' that is not JSON-serialisable", id="bytes"),
        pytest.param({"n": float("nan")}, "output 'n' that is not JSON-serialisable", id="nan"),
    ],
)
def test_call_action_refuses_outputs_the_journal_cannot_hold(result: Any, complaint: str) -> None:
    spec = ActionSpec(name="shout", run=lambda p, c: result, plugin="loud")
    with pytest.raises(ActionError) as caught:
        call_action(spec, {}, None)
    assert caught.value.permanent
    assert "action 'shout' of plugin loud" in str(caught.value)
    assert complaint in str(caught.value)


def test_call_action_refuses_an_output_the_action_does_not_declare() -> None:
    declared = ("url", "bytes")
    spec = ActionSpec(
        name="keep", run=lambda p, c: {"url": "u", "size": 3}, plugin="box", outputs=declared
    )
    with pytest.raises(ActionError) as caught:
        call_action(spec, {}, None)
    assert caught.value.permanent
    assert str(caught.value) == (
        "action 'keep' of plugin box returned output 'size', which it does not declare"
        " (outputs: url, bytes)"
    )


# -- validating what plugins register ------------------------------------------


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        pytest.param({"name": "x"}, "passed dict to register(), expected", id="not-a-spec"),
        pytest.param(
            ActionSpec(name="Bad Name", run=_run), "ActionSpec.name 'Bad Name'", id="name"
        ),
        pytest.param(ActionSpec(name="x", run="nope"), "ActionSpec.run", id="run"),
        pytest.param(
            ActionSpec(name="x", run=_run, schema=["a"]),
            "ActionSpec.schema of action 'x' is list",
            id="schema-type",
        ),
        pytest.param(
            ActionSpec(name="x", run=_run, schema={"type": "thing"}),
            "ActionSpec.schema of action 'x' is not a valid JSON Schema",
            id="schema-invalid",
        ),
        pytest.param(
            ActionSpec(name="x", run=_run, check="nope"),  # type: ignore[arg-type]
            "ActionSpec.check of action 'x' is not callable",
            id="check",
        ),
    ],
)
def test_a_bad_registration_names_plugin_hook_and_argument(spec: Any, complaint: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(entry_points=False, extra=(_register(spec),))
    message = str(caught.value)
    assert "plugin " in message and "register_actions" in message
    assert complaint in message


def test_an_unknown_hook_is_refused_by_name() -> None:
    plugin = _plugin(register_action=lambda register: None)
    with pytest.raises(ConfigError, match="implements hook 'register_action', which recflow"):
        build_plugin_manager(entry_points=False, extra=(plugin,))


def test_a_hook_argument_that_does_not_exist_is_refused_by_name() -> None:
    plugin = _plugin(step_failed=lambda step, reason: None)
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(entry_points=False, extra=(plugin,))
    assert "step_failed" in str(caught.value) and "reason" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "first"),
    [
        pytest.param("shout", "by plugin ", id="two-plugins"),
        pytest.param("store", "by plugin recflow.actions.store", id="a-builtin"),
    ],
)
def test_two_plugins_claiming_one_action_are_named_both(name: str, first: str) -> None:
    one = _register(ActionSpec(name="shout", run=_run))
    two = _register(ActionSpec(name=name, run=_run))
    with pytest.raises(ConfigError) as caught:
        build_plugin_manager(entry_points=False, extra=(one, two))
    message = str(caught.value)
    assert f"action {name!r} is registered twice" in message
    assert first in message
    assert message.count("by plugin") == 2


def test_actions_keep_their_plugin_name_and_builtins_come_first() -> None:
    host = build_plugin_manager(entry_points=False, extra=(_register(ActionSpec("x", _run)),))
    assert list(host.actions)[:4] == ["store", "notify", "webhook", "delete"]
    assert host.actions["store"].plugin == "recflow.actions.store"
    assert host.actions["x"].plugin  # pluggy's generated name for an unnamed object
    assert host.broken == {}


# -- plugin commands -------------------------------------------------------------


def test_plugin_commands_join_the_group_and_a_failing_one_is_left_out() -> None:
    @click.command()
    def hello() -> None:
        click.echo("hi")

    def adds(cli: click.Group) -> None:
        cli.add_command(hello)

    def raises(cli: click.Group) -> None:
        raise RuntimeError("no commands today")

    def replaces(cli: click.Group) -> None:
        cli.add_command(click.Command("serve"))

    host = build_plugin_manager(
        entry_points=False,
        extra=(
            _plugin(register_commands=adds),
            _plugin(register_commands=raises),
            _plugin(register_commands=replaces),
        ),
    )
    serve = click.Command("serve")
    group = click.Group(commands={"serve": serve})
    add_commands(host, group)
    assert group.commands == {"serve": serve, "hello": hello}
    errors = sorted(host.broken.values())
    assert errors == [
        "register_commands failed: RuntimeError: no commands today",
        "register_commands failed: command 'serve' is already taken",
    ]


# -- installed plugins, through the command line ----------------------------------


def test_recflow_plugins_lists_builtins_and_the_installed_transcribe() -> None:
    plugins = plugins_json()
    store = plugins["recflow.actions.store"]
    assert store["builtin"] is True
    assert [a["name"] for a in store["actions"]] == ["store"]
    transcribe = plugins["transcribe"]
    assert transcribe["builtin"] is False
    assert (transcribe["distribution"], transcribe["version"]) == ("recflow-transcribe", "0.1.0")
    assert transcribe["hooks"] == ["register_actions"]
    assert [a["name"] for a in transcribe["actions"]] == ["transcribe"]
    assert transcribe["actions"][0]["description"]
    assert transcribe["error"] is None


def test_a_broken_plugin_is_shown_and_the_others_still_work(broken_site: Path) -> None:
    plugins = plugins_json([broken_site])
    assert plugins["broken"]["error"] == (
        "RuntimeError: recflow_broken cannot start: its licence server is unreachable"
    )
    assert plugins["broken"]["distribution"] == "recflow-broken"
    assert plugins["transcribe"]["error"] is None
    assert plugins["recflow.actions.store"]["error"] is None

    text = recflow("plugins", path=[broken_site])
    assert text.returncode == 0
    assert "broken  0.0.1  (recflow-broken)" in text.stdout
    assert "BROKEN: RuntimeError: recflow_broken cannot start" in text.stdout
    assert "Traceback" not in text.stderr


def test_plugin_commands_appear_even_with_a_broken_plugin(broken_site: Path) -> None:
    helped = recflow("--help", path=[broken_site])
    greeted = recflow("greet", "Ada", path=[broken_site])
    listed = plugins_json([broken_site])
    assert helped.returncode == 0 and "greet    Say hello to NAME." in helped.stdout
    assert "Traceback" not in helped.stderr and helped.stderr == ""
    assert (greeted.returncode, greeted.stdout) == (0, "hello, Ada\n")
    assert listed["greet"]["hooks"] == ["register_commands"]
    assert listed["rude"]["error"] == "register_commands failed: command 'check' is already taken"


def test_check_says_which_broken_plugin_an_unknown_action_comes_from(
    broken_site: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(emulator_api="https://example.signalwire.com/api/laml/2010-04-01")
        + "rules:\n  - name: r\n    steps:\n      - action: broken\n"
    )
    done = recflow("check", "-c", str(config), path=[broken_site])
    assert done.returncode == 1
    assert (
        "action 'broken' comes from plugin broken which failed to load: RuntimeError:"
        " recflow_broken cannot start" in done.stderr
    )
    assert "Traceback" not in done.stderr


def test_two_installed_plugins_claiming_one_action(conflict_site: Path, tmp_path: Path) -> None:
    plugins = plugins_json([conflict_site])
    errors = [plugins[name]["error"] for name in ("shout_a", "shout_b")]
    [error] = [e for e in errors if e]
    assert "action 'shout' is registered twice" in error
    assert "shout_a" in error and "shout_b" in error

    config = tmp_path / "config.yaml"
    config.write_text(_config(emulator_api="https://example.signalwire.com/api/laml/2010-04-01"))
    done = recflow("check", "-c", str(config), path=[conflict_site])
    assert done.returncode == 1
    [line] = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert "action 'shout' is registered twice" in line
    assert "shout_a" in line and "shout_b" in line


# -- recflow-transcribe ------------------------------------------------------------


def test_transcribe_fetches_the_recording_and_writes_the_transcript(
    emulator: Emulator, spoken_wav: Path, tmp_path: Path
) -> None:
    host = build_plugin_manager()
    emulator.add_recording("RE-spoken", wav=spoken_wav.read_bytes())
    ctx = step_context(emulator, "RE-spoken")
    target = tmp_path / "out" / "RE-spoken.json"

    outputs = call_action(host.actions["transcribe"], {"to": target.as_uri()}, ctx)

    heard = set(outputs["text"].split())
    assert len(heard & KEY_WORDS) >= 6, outputs["text"]
    assert outputs["engine"] == "pocketsphinx"
    assert outputs["url"] == target.as_uri()
    starts = [w["start"] for w in outputs["words"]]
    assert starts == sorted(starts) and all(w["end"] > w["start"] for w in outputs["words"])
    written = json.loads(target.read_text())
    assert written["text"] == outputs["text"]
    assert written["recording_sid"] == "RE-spoken"
    assert len(emulator.media_requests("RE-spoken")) == 1


def test_transcribe_with_an_engine_from_another_distribution(
    broken_site: Path,
    spoken_wav: Path,
    emulator: Emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(broken_site))  # entry points are read from sys.path
    host = build_plugin_manager(strict=False)
    spec = host.actions["transcribe"]
    params = {
        "engine": "tally",
        "engine_options": {"word": "seconds"},
        "audio": spoken_wav.as_uri(),
    }

    outputs = call_action(spec, params, step_context(emulator, "RE-tally"))

    assert spec.schema["properties"]["engine"]["enum"] == ["pocketsphinx", "tally"]
    assert outputs["engine"] == "tally"
    seconds, word = outputs["text"].split()
    assert word == "seconds"
    assert abs(float(seconds) - _wav_seconds(spoken_wav)) < 0.1
    assert emulator.media_requests("RE-tally") == []


# -- end to end -----------------------------------------------------------------------


@needs_speech_tools
def test_serve_transcribes_a_signed_callback_and_stores_the_transcript(
    emulator: Emulator, spoken_wav: Path, tmp_path: Path
) -> None:
    sid = "RE0123456789abcdef0123456789abcdef"
    emulator.add_recording(sid, wav=spoken_wav.read_bytes())
    config = tmp_path / "config.yaml"
    config.write_text(
        _config(emulator_api=emulator.api_url) + "rules:\n"
        "  - name: transcribe-calls\n"
        "    when: {status: completed}\n"
        "    steps:\n"
        "      - id: archive\n"
        "        action: store\n"
        "        with: {to: 'file://./var/audio/{{ event.recording_sid }}.wav'}\n"
        "      - action: transcribe\n"
        "        with:\n"
        "          audio: '{{ steps.archive.url }}'\n"
        "          to: 'file://./var/audio/{{ event.recording_sid }}.txt'\n"
    )
    transcript = tmp_path / "var" / "audio" / f"{sid}.txt"
    pairs = [
        ("AccountSid", ACCOUNT),
        ("CallSid", "CA0123456789abcdef0123456789abcdef"),
        ("RecordingSid", sid),
        ("RecordingUrl", emulator.recording_url(sid)),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "5"),
    ]
    with running_server(config) as url:
        body, headers = signed_form(url.callback_url, pairs, "PSK_e2e_signing")
        answer = httpx.post(url.callback_url, content=body, headers=headers, trust_env=False)
        deadline = time.monotonic() + 60
        while not transcript.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        log = url.log()

    assert answer.status_code == 204
    assert transcript.exists(), log[-3000:]
    heard = set(transcript.read_text().split())
    assert len(heard & KEY_WORDS) >= 6, transcript.read_text()
    assert (tmp_path / "var" / "audio" / f"{sid}.wav").read_bytes() == spoken_wav.read_bytes()
    assert len(emulator.media_requests(sid)) == 1  # the transcript reused the stored audio
    assert TOKEN not in log


# -- helpers ---------------------------------------------------------------------------


def _config(emulator_api: str) -> str:
    return (
        "providers:\n"
        "  - name: main\n"
        "    kind: signalwire\n"
        "    space: example.signalwire.com\n"
        f"    account_sid: {ACCOUNT}\n"
        f"    api_token: {TOKEN}\n"
        "    signing_key: PSK_e2e_signing\n"
        f"    api_url: {emulator_api}\n"
        "backend: sqlite:///./var/recflow.db\n"
        "workers: 1\n"
    )


def _wav_seconds(path: Path) -> float:
    import wave

    with wave.open(str(path)) as reader:
        return reader.getnframes() / reader.getframerate()
