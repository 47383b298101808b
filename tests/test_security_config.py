"""The config file as an attack surface, and the warnings it must give.

It is parsed with YAML's safe loader: a tag that would build a Python
object or call a function is a located error and runs nothing. A file
that others can read while holding secrets written in it is warned
about, as is turning signature checks off, by `recflow check` and at
the start of `recflow serve`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_util import running_server

from recflow import config as config_module
from recflow.cli import cli
from recflow.errors import ConfigError

PROVIDER = """\
providers:
  - name: main
    kind: twilio
    account_sid: AC0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f
    api_token: {token}
    api_url: http://127.0.0.1:9/2010-04-01
backend: sqlite:///./var/recflow.db
"""
LITERAL = PROVIDER.format(token="literal_token_in_the_file_42")
FROM_ENV = PROVIDER.format(token="${SECURITY_CONFIG_TOKEN}")


def _write(directory: Path, text: str, mode: int = 0o600) -> Path:
    path = directory / "config.yaml"
    path.write_text(text)
    path.chmod(mode)
    return path


def _check(path: Path) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        cli, ["check", "-c", str(path)], env={"SECURITY_CONFIG_TOKEN": "env_token_77"}
    )
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "tagged",
    [
        pytest.param('!!python/object/apply:os.system ["touch {marker}"]', id="object-apply"),
        pytest.param("!!python/object/new:os.system [touch {marker}]", id="object-new"),
        pytest.param("!!python/name:os.system", id="name"),
        pytest.param("!!python/object:os.PathLike {{}}", id="object"),
        pytest.param("!!python/module:os", id="module"),
    ],
)
def test_python_tags_are_refused_with_a_located_error(tmp_path: Path, tagged: str) -> None:
    marker = tmp_path / "pwned"
    text = LITERAL + "workers: " + tagged.format(marker=marker) + "\n"
    path = _write(tmp_path, text)
    line = text.count("\n")

    with pytest.raises(ConfigError) as caught:
        config_module.load(str(path), {})
    code, _, err = _check(path)

    assert caught.value.file == str(path)
    assert caught.value.line == line
    assert code == 1
    assert f"{path}:{line}:" in err
    assert "Traceback" not in err
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "mode", "warned"),
    [
        pytest.param(LITERAL, 0o644, True, id="literal-secret-world-readable"),
        pytest.param(LITERAL, 0o640, True, id="literal-secret-group-readable"),
        pytest.param(LITERAL, 0o600, False, id="literal-secret-owner-only"),
        pytest.param(FROM_ENV, 0o644, False, id="secret-from-env-world-readable"),
        pytest.param(
            FROM_ENV
            + "rules:\n  - name: r\n    steps:\n      - action: notify\n        with:\n"
            + "          to: ['mailto://u:pw_in_url_9@127.0.0.1:25?to=a@b.c&from=r@example.com']\n",
            0o644,
            True,
            id="password-in-a-url-world-readable",
        ),
    ],
)
def test_readable_config_with_written_secrets_is_warned_about(
    tmp_path: Path, text: str, mode: int, warned: bool
) -> None:
    path = _write(tmp_path, text, mode)

    code, out, err = _check(path)

    assert code == 0, err
    assert out.startswith("ok:")
    assert ("readable by other users" in err) is warned
    assert "literal_token_in_the_file_42" not in out + err
    assert "pw_in_url_9" not in out + err


def test_check_says_signatures_are_off(tmp_path: Path) -> None:
    path = _write(tmp_path, FROM_ENV + "server: {verify_signatures: false}\n")

    code, _, err = _check(path)

    assert code == 0
    assert "warning: server.verify_signatures is false" in err


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("'false'", id="quoted-string"),
        pytest.param("0", id="zero"),
        pytest.param("''", id="empty"),
        pytest.param("null", id="null"),
    ],
)
def test_only_an_explicit_boolean_turns_verification_off(tmp_path: Path, value: str) -> None:
    path = _write(tmp_path, FROM_ENV + f"server:\n  verify_signatures: {value}\n")

    code, _, err = _check(path)

    assert code == 1
    assert "server.verify_signatures" in err


def test_serve_logs_a_warning_when_verification_is_off(tmp_path: Path) -> None:
    path = _write(tmp_path, FROM_ENV + "server: {verify_signatures: false}\nworkers: 1\n")

    with running_server(path, env={"SECURITY_CONFIG_TOKEN": "env_token_77"}) as url:
        log = url.log()

    warnings = [line for line in log.splitlines() if " WARNING " in line]
    assert any("verify_signatures is false" in line for line in warnings)
