"""`recflow check` and `recflow match`, driven as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from config_util import PROVIDER, SAMPLES, marked_line, write_config

from recflow.cli import cli

EXAMPLE = str(Path(__file__).parent.parent / "config.example.yaml")

RULES = """\
rules:
  - name: archive
    when:
      status: completed
      duration: {gte: 5}
    steps:
      - id: archive
        action: store
        with: {to: "file://./rec/{{ event.recording_sid }}.wav"}
      - action: notify
        with:
          to: ["mailto://ops:smtp-secret-pw@mail.example.com"]
          body: "{{ rule.name }}: {{ steps.archive.url }} ({{ event.duration }} s)"
      - action: delete
  - name: tenant
    when: {params.tenant: acme}
    stop: true
    steps:
      - action: notify
        with: {to: "json://127.0.0.1:9/{{ event.params.tenant }}"}
  - name: everything
    steps:
      - action: notify
        with: {to: "json://127.0.0.1:9/"}
"""


def run(*args: str, stdin: str | bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_check_ok_on_the_example() -> None:
    code, out, _ = run("check", "-c", EXAMPLE)
    assert code == 0
    assert out.strip() == "ok: 2 rules, 1 provider"


def test_check_reads_recflow_config_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECFLOW_CONFIG", write_config(tmp_path, PROVIDER + RULES))
    code, out, _ = run("check")
    assert (code, out.strip()) == (0, "ok: 3 rules, 1 provider")


def test_check_warns_when_signatures_are_not_verified(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROVIDER + "server: {verify_signatures: false}\n")
    code, out, err = run("check", "-c", path)
    assert code == 0
    assert "ok: 0 rules, 1 provider" in out
    assert "warning: server.verify_signatures is false" in err


def test_check_lists_every_error_located(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
rules:
  - name: a
    when: {duration: {gtee: 5}}  # <-
    steps: [{action: sotre}]
"""
    )
    path = write_config(tmp_path, text)
    code, out, err = run("check", "-c", path)
    line = marked_line(text)
    assert code == 1
    assert out == ""
    first, second = err.splitlines()
    assert first == (
        f"{path}:{line}: rules[0].when.duration.gtee: unknown operator 'gtee';"
        " accepted: eq, ne, in, not_in, gt, gte, lt, lte, matches, exists"
    )
    assert second.startswith(f"{path}:{line + 1}: rules[0].steps[0].action: unknown action 'sotre'")
    assert "delete, notify, store" in second


def test_check_reports_template_typos(tmp_path: Path) -> None:
    text = PROVIDER + RULES.replace("{{ event.duration }}", "{{ event.duraton }}")
    path = write_config(tmp_path, text)
    code, _, err = run("check", "-c", path)
    line = next(n for n, t in enumerate(text.splitlines(), 1) if "duraton" in t)
    assert code == 1
    assert err.startswith(f"{path}:{line}: rules[0].steps[1].with.body: ")
    assert "event has no field 'duraton'" in err


def test_check_never_prints_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_CLI_SECRET", "top-secret-value")
    path = write_config(tmp_path, PROVIDER + "server: {public_url: '${RF_CLI_SECRET}'}\n")
    code, out, err = run("check", "-c", path)
    assert code == 1
    assert "top-secret-value" not in out + err
    assert "server.public_url: found the string '***'" in err


def test_check_as_a_process_exits_1_with_one_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, PROVIDER + "workers: many  # <-\n")
    recflow = str(Path(sys.executable).parent / "recflow")
    done = subprocess.run(
        [recflow, "check", "-c", path], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert f"{path}:{marked_line(PROVIDER + 'workers: many  # <-')}: workers: " in done.stderr
    assert "Traceback" not in done.stderr


def test_check_missing_file(tmp_path: Path) -> None:
    code, _, err = run("check", "-c", str(tmp_path / "none.yaml"))
    assert code == 1
    assert "none.yaml: cannot read the config file" in err
    assert "Traceback" not in err


@pytest.fixture
def config_file(tmp_path: Path) -> str:
    return write_config(tmp_path, PROVIDER + RULES)


@pytest.mark.parametrize(
    ("sample", "matched"),
    [
        pytest.param("completed.form", ["archive", "everything"], id="form"),
        pytest.param("completed.json", ["archive", "everything"], id="json"),
        pytest.param("absent.form", ["everything"], id="absent"),
        pytest.param("in-progress.form", ["everything"], id="unknown-duration"),
    ],
)
def test_match_json_reports_every_rule(config_file: str, sample: str, matched: list[str]) -> None:
    code, out, _ = run("match", "-c", config_file, "--json", str(SAMPLES / sample))
    assert code == 0
    report = json.loads(out)
    assert report["event"]["recording_sid"] == "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"
    assert [r["name"] for r in report["rules"]] == ["archive", "tenant", "everything"]
    assert [r["name"] for r in report["rules"] if r["matched"]] == matched
    assert all(r["reason"] for r in report["rules"])
    assert all(r["steps"] == [] for r in report["rules"] if not r["matched"])


def test_match_renders_steps_with_placeholders_and_masks_secrets(
    config_file: str, tmp_path: Path
) -> None:
    code, out, _ = run("match", "-c", config_file, "--json", str(SAMPLES / "completed.form"))
    assert code == 0
    archive = json.loads(out)["rules"][0]
    assert archive["reason"] == "status 'completed' is 'completed' and duration 94 >= 5"
    store, notify, delete = archive["steps"]
    assert store == {
        "action": "store",
        "id": "archive",
        "with": {"to": f"file://{tmp_path}/rec/7e2d1c4b-90ad-4998-b792-e984a1b2c3d4.wav"},
    }
    assert notify["with"] == {
        "to": ["mailto://ops:***@mail.example.com"],
        "body": "archive: <steps.archive.url> (94 s)",
    }
    assert delete == {"action": "delete", "id": None, "with": {}}
    assert "smtp-secret-pw" not in out


def test_match_stop_and_query_parameters_from_stdin(config_file: str) -> None:
    body = (SAMPLES / "completed.form").read_text().strip() + "&tenant=acme"
    code, out, _ = run("match", "-c", config_file, "-", stdin=body)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("event completed recording 7e2d1c4b")
    assert "match  archive: status 'completed' is 'completed' and duration 94 >= 5" in lines
    assert "match  tenant: params.tenant 'acme' is 'acme'" in lines
    assert "no     everything: not tried: rule 'tenant' matched with stop: true" in lines
    assert '         to: "json://127.0.0.1:9/acme"' in lines


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param("{not json", "payload: not valid JSON", id="bad-json"),
        pytest.param("[1]", "payload: missing required field AccountSid", id="not-object"),
        pytest.param('["x"', "payload: missing required field AccountSid", id="list-form"),
        pytest.param("AccountSid=a&RecordingSid=b", "missing required field", id="missing"),
        pytest.param(b"\xff\xfe\x00binary", "payload: not UTF-8 text", id="binary"),
        pytest.param(
            "AccountSid=a&RecordingSid=x/y&RecordingUrl=u&RecordingStatus=completed",
            "payload: malformed field RecordingSid",
            id="path-in-id",
        ),
    ],
)
def test_match_bad_payload_is_one_line(
    config_file: str, payload: str | bytes, message: str
) -> None:
    code, _, err = run("match", "-c", config_file, "-", stdin=payload)
    assert code == 1
    assert message in err
    assert "Traceback" not in err


def test_match_missing_payload_file(config_file: str, tmp_path: Path) -> None:
    code, _, err = run("match", "-c", config_file, str(tmp_path / "nope.form"))
    assert code == 2
    assert "nope.form" in err


def test_match_escapes_control_characters_a_callback_carried(config_file: str) -> None:
    payload = (
        "AccountSid=b3877c40-da60-4998-90ad-b792e98472af&RecordingSid=RE1&RecordingUrl=u"
        "&RecordingStatus=%1B%5D0%3Btitle%07completed%0AINFO+forged"
    )

    code, out, _ = run("match", "-c", config_file, "-", stdin=payload)

    assert code == 0, out
    assert "\x1b" not in out and "\x07" not in out
    assert "\\x1b]0;title\\x07completed\\nINFO forged" in out
    assert all(not line.startswith("INFO") for line in out.splitlines())


def test_check_refuses_what_could_only_fail_after_the_callback(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
rules:
  - name: a
    when: {status: complete}  # <-
    steps:
      - id: archive
        action: store
        with: {to: "nosuchproto://bucket/{{ event.recording_sid }}.wav"}
      - action: notify
        with: {to: ["nonsense://foo", "json://localhost/{{ steps.archive.url }}"]}
"""
    )
    path = write_config(tmp_path, text)
    code, out, err = run("check", "-c", path)
    line = marked_line(text)
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{path}:{line + 2}: rules[0].steps[0].with: to: storage protocol 'nosuchproto' is"
        " unknown to fsspec; known ones include file, s3, gs, az, sftp, memory",
        f"{path}:{line + 5}: rules[0].steps[1].with: to: nonsense:// is not a service apprise"
        " knows",
    ]


def test_check_warns_of_statuses_no_provider_sends(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + "rules:\n  - name: a\n    when: {status: complete}  # <-\n"
        + ("    steps: [{action: notify, with: {to: 'json://localhost'}}]\n")
    )
    path = write_config(tmp_path, text)
    code, out, err = run("check", "-c", path)
    assert code == 0
    assert out == "ok: 1 rule, 1 provider\n"
    assert f"warning: {path}:{marked_line(text)}: rules[0].when.status: status 'complete'" in err


def test_check_of_a_bad_listen_names_the_config_not_an_option(tmp_path: Path) -> None:
    text = PROVIDER + "server:\n  listen: 127.0.0.1:99999  # <-\n"
    path = write_config(tmp_path, text)
    code, _, err = run("check", "-c", path)
    assert code == 1
    assert err.startswith(f"{path}:{marked_line(text)}: server.listen: ")
    assert "port 99999 is out of range" in err
    assert "--listen" not in err


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_what_check_refuses(tmp_path: Path, command: str) -> None:
    text = PROVIDER + (
        "rules:\n  - name: a\n    steps:\n      - action: notify\n"
        "        with: {to: ['json://127.0.0.1:9/'], body: '{{ event.duraton }}'}  # <-\n"
    )
    path = write_config(tmp_path, text)
    recflow = str(Path(sys.executable).parent / "recflow")
    done = subprocess.run(
        [
            recflow,
            command,
            "-c",
            path,
            *(["--listen", "127.0.0.1:0"] if command == "serve" else []),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.startswith(
        f"{path}:{marked_line(text)}: rules[0].steps[0].with.body: event has no field 'duraton'"
    )
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "var").exists(), "it opened its backend before refusing"
