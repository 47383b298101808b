"""config.load: defaults, environment values, relative paths, and located errors."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
import yaml
from config_util import ACTIONS, PROVIDER, marked_line, write_config

from recflow import config, yaml_source
from recflow.errors import ConfigError
from recflow.plugins import ActionSpec, build_plugin_manager
from recflow.templates import Compiled

STORE_RULE = """\
rules:
  - name: archive
    steps:
      - id: archive
        action: store
        with: {to: "file://./rec/{{ event.recording_sid }}.wav"}
"""


def load_text(tmp_path: Path, text: str) -> config.Config:
    return config.load(write_config(tmp_path, text), ACTIONS)


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, PROVIDER)
    assert cfg.server.listen == "127.0.0.1:8080"
    assert cfg.server.path == "/recordings"
    assert cfg.server.max_body_bytes == 65536
    assert cfg.server.verify_signatures is True
    assert cfg.server.trusted_proxies == ()
    assert cfg.workers == 4
    assert cfg.backend == "sqlite:///" + str(tmp_path / "var" / "recflow.db")
    assert cfg.rules == ()


def test_example_config_loads_with_the_builtin_actions(tmp_path: Path) -> None:
    actions = build_plugin_manager(entry_points=False).actions
    example = Path(__file__).parent.parent / "config.example.yaml"
    cfg = config.load(str(example), actions)
    assert [r.name for r in cfg.rules] == ["archive-and-mail", "silent-call"]
    assert [s.action for s in cfg.rules[0].steps] == ["store", "notify", "delete"]
    assert cfg.providers[0].kind == "signalwire"
    assert cfg.rules[0].steps[0].raw_params["to"].startswith(f"file://{example.parent}/var/")


def test_signalwire_provider(tmp_path: Path) -> None:
    provider = load_text(tmp_path, PROVIDER).providers[0]
    assert provider.api_url == "https://example.signalwire.com/api/laml/2010-04-01"
    assert provider.origin == "https://example.signalwire.com"
    assert provider.signing_keys == ("PSK_signingkey",)


def test_signalwire_space_name_alone_means_its_signalwire_host(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, PROVIDER.replace("example.signalwire.com", "acme"))
    assert cfg.providers[0].api_url == "https://acme.signalwire.com/api/laml/2010-04-01"


def test_twilio_signs_with_its_api_token_and_keys_may_be_a_list(tmp_path: Path) -> None:
    cfg = load_text(
        tmp_path,
        """\
providers:
  - name: tw
    kind: twilio
    account_sid: AC0123
    api_token: authtoken1
  - name: tw2
    kind: twilio
    account_sid: AC4567
    api_token: authtoken2
    signing_key: [newkey1, oldkey2]
    api_url: http://127.0.0.1:9000/2010-04-01/
""",
    )
    first, second = cfg.providers
    assert first.signing_keys == ("authtoken1",)
    assert first.api_url == "https://api.twilio.com/2010-04-01"
    assert second.signing_keys == ("newkey1", "oldkey2")
    assert second.api_url == "http://127.0.0.1:9000/2010-04-01"
    assert cfg.provider_for("AC4567") is second
    assert {"authtoken1", "authtoken2", "newkey1", "oldkey2"} <= cfg.secrets


def test_environment_values_defaults_and_literal_dollar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RF_TOKEN", "from-env-token")
    monkeypatch.setenv("RF_WORKERS", "7")
    monkeypatch.delenv("RF_UNSET", raising=False)
    text = PROVIDER.replace("PTapitoken123", "${RF_TOKEN}") + (
        "workers: ${RF_WORKERS}\n"
        "server:\n"
        "  path: ${RF_UNSET:-/hooks}\n"
        "  public_url: https://h.example.com/$${NOT_A_VAR}\n"
    )
    cfg = load_text(tmp_path, text)
    assert cfg.providers[0].api_token == "from-env-token"
    assert cfg.workers == 7
    assert cfg.server.path == "/hooks"
    assert cfg.server.public_url == "https://h.example.com/${NOT_A_VAR}"
    assert "from-env-token" in cfg.secrets
    # A number from the environment is no secret: masked, it would blank
    # every "7" in the logs (step=7, attempt=7).
    assert "7" not in cfg.secrets
    assert "/hooks" not in cfg.secrets


def test_url_credentials_in_step_parameters_are_secrets(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + STORE_RULE
        + """\
      - action: notify
        with: {to: ["mailto://ops:smtp-pass-9@mail.example.com"]}
"""
    )
    assert "smtp-pass-9" in load_text(tmp_path, text).secrets


def test_relative_paths_resolve_against_the_config_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    text = PROVIDER + "backend: sqlite:///./data/q.db\n" + STORE_RULE
    cfg = config.load(write_config(sub, text), ACTIONS)
    assert cfg.backend == f"sqlite:///{sub}/data/q.db"
    assert cfg.rules[0].steps[0].raw_params["to"] == (
        f"file://{sub}/rec/{{{{ event.recording_sid }}}}.wav"
    )
    up = config.load(write_config(sub, text.replace("file://./", "file://../")), ACTIONS)
    assert up.rules[0].steps[0].raw_params["to"].startswith(f"file://{tmp_path}/rec/")


def test_relative_paths_follow_a_symlinked_directory_once_at_load(tmp_path: Path) -> None:
    releases = [tmp_path / "v1", tmp_path / "v2"]
    for release in releases:
        release.mkdir()
        write_config(release, PROVIDER + "backend: sqlite:///./var/q.db\n" + STORE_RULE)
    current = tmp_path / "current"
    current.symlink_to(releases[0])

    cfg = config.load(str(current / "config.yaml"), ACTIONS)
    current.unlink()
    current.symlink_to(releases[1])

    assert cfg.path == str(current / "config.yaml")
    assert cfg.real_path == str(releases[0] / "config.yaml")
    assert cfg.backend == f"sqlite:///{releases[0]}/var/q.db"
    assert cfg.rules[0].steps[0].raw_params["to"].startswith(f"file://{releases[0]}/rec/")


def test_a_config_file_that_is_a_symlink_keeps_its_paths_beside_the_link(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "app").mkdir()
    target = write_config(tmp_path / "etc", PROVIDER + "backend: sqlite:///./var/q.db\n")
    (tmp_path / "app" / "config.yaml").symlink_to(target)

    cfg = config.load(str(tmp_path / "app" / "config.yaml"), ACTIONS)

    assert cfg.backend == f"sqlite:///{tmp_path}/app/var/q.db"


def test_a_database_in_the_home_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = load_text(tmp_path, PROVIDER + "backend: sqlite:///~/recflow.db\n")
    assert cfg.backend == f"sqlite:///{tmp_path}/home/recflow.db"


@pytest.mark.parametrize(
    "backend",
    [
        pytest.param("sqlite:////srv/recflow.db", id="absolute-sqlite"),
        pytest.param("redis://127.0.0.1:6379/0", id="redis"),
    ],
)
def test_backends_that_are_not_relative_stay_as_written(tmp_path: Path, backend: str) -> None:
    assert load_text(tmp_path, PROVIDER + f"backend: {backend}\n").backend == backend


def test_server_section_and_rule_details(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
server:
  listen: 0.0.0.0:9000
  trusted_proxies: [10.0.0.0/8, 192.168.1.7]
  verify_signatures: false
  max_body_bytes: 4096
rules:
  - name: first
    stop: true
    when: {status: completed}
    steps:
      - id: archive
        action: store
        with: {to: "file:///tmp/x.wav"}
        retry: {attempts: 3, backoff: 0.5}
        timeout: 900
      - action: delete
"""
    )
    cfg = load_text(tmp_path, text)
    assert cfg.server.listen == "0.0.0.0:9000"
    assert cfg.server.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.7"),
    )
    assert cfg.server.verify_signatures is False
    rule = cfg.rule("first")
    assert rule is not None and rule.stop
    store, delete = rule.steps
    assert (store.retry.attempts, store.retry.backoff, store.retry.max_backoff) == (3, 0.5, 600)
    assert (delete.retry.attempts, delete.retry.backoff) == (5, 2.0)
    assert (store.timeout, delete.timeout) == (900, 3600)
    assert isinstance(store.params, Compiled)
    assert store.line == text.splitlines().index("      - id: archive") + 1


# A rule of one `delete` step, for a key of that step to follow.
ONE_STEP = PROVIDER + "rules:\n  - name: a\n    steps:\n      - action: delete\n"

ERRORS = [
    pytest.param(
        PROVIDER + "backend: sqlite:////etc/passwd/recflow.db  # <-\n",
        "backend",
        "sqlite:////etc/passwd/recflow.db: /etc/passwd is a file, not a folder",
        id="sqlite-under-a-file",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:///.  # <-\n",
        "backend",
        "is a folder; name a file in it",
        id="sqlite-is-a-folder",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:////etc/passwd  # <-\n",
        "backend",
        "sqlite:////etc/passwd: /etc/passwd is not an SQLite database",
        id="sqlite-not-a-database",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:////dev/null  # <-\n",
        "backend",
        "/dev/null is not a regular file",
        id="sqlite-a-device",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:///./var/r.db?timeout=5  # <-\n",
        "backend",
        "a query or fragment is not read",
        id="sqlite-query",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:///./db/  # <-\n",
        "backend",
        "sqlite:///./db/: ends in /; name the database file",
        id="sqlite-folder-slash",
    ),
    pytest.param(
        PROVIDER + "backend: redis://127.0.0.1:6379/0x  # <-\n",
        "backend",
        "redis://127.0.0.1:6379/0x: the database '0x' is not a number",
        id="redis-database",
    ),
    pytest.param(
        PROVIDER + "backend: redis://127.0.0.1:99999/0  # <-\n",
        "backend",
        "the port is not a number from 0 to 65535",
        id="redis-port",
    ),
    pytest.param(
        PROVIDER + "backend: 'sqlite:///:memory:'  # <-\n",
        "backend",
        "an in-memory database would lose every callback",
        id="sqlite-memory",
    ),
    pytest.param(
        PROVIDER + "backend: sqlite:///~nosuchuser-recflow/x.db  # <-\n",
        "backend",
        "no home folder for ~nosuchuser-recflow",
        id="sqlite-unknown-home",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: long
    when:
      duration: {gtee: 5}  # <-
    steps: [{action: delete}]
""",
        "rules[0].when.duration.gtee",
        "unknown operator 'gtee'; accepted: eq, ne, in, not_in, gt, gte",
        id="misspelt-operator",
    ),
    pytest.param(
        PROVIDER + "server:\n  listne: 1.2.3.4:80  # <-\n",
        "server.listne",
        "unknown key 'listne'; accepted: listen, max_body_bytes, path",
        id="unknown-key",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: a
    steps:
      - id: archive
        action: store
        with: {to: "x"}
        tries: 3  # <-
""",
        "rules[0].steps[0].tries",
        "unknown key 'tries'; accepted: action, id, retry, timeout, with",
        id="unknown-key-in-step",
    ),
    pytest.param(
        ONE_STEP + "        timeout: 0  # <-\n",
        "rules[0].steps[0].timeout",
        "0",
        id="zero-timeout",
    ),
    pytest.param(
        ONE_STEP + "        timeout: .nan  # <-\n",
        "rules[0].steps[0].timeout",
        "found .nan, not a finite number; expected a number",
        id="nan-timeout",
    ),
    pytest.param(
        ONE_STEP + "        retry: {backoff: .inf}  # <-\n",
        "rules[0].steps[0].retry.backoff",
        "found .inf, not a finite number; expected a number",
        id="infinite-backoff",
    ),
    pytest.param(
        PROVIDER + "rules:\n  - name: a\n    when:\n      duration: {gte: .nan}  # <-\n"
        "    steps: [{action: delete}]\n",
        "rules[0].when.duration.gte",
        "found .nan, not a finite number; expected a number",
        id="nan-bound",
    ),
    pytest.param(
        PROVIDER + "rules:\n  - name: a\n    when: {}  # <-\n    steps: [{action: notify}]\n",
        "rules[0].when",
        "empty condition",
        id="empty-when",
    ),
    pytest.param(
        PROVIDER
        + "rules:\n  - name: a\n    when:\n      all: []  # <-\n    steps: [{action: notify}]\n",
        "rules[0].when.all",
        "empty all: []",
        id="empty-all",
    ),
    pytest.param(
        PROVIDER + "workers: four  # <-\n",
        "workers",
        "found the string 'four'; expected an integer",
        id="wrong-type",
    ),
    pytest.param(
        PROVIDER + "server:\n  verify_signatures: 'no'  # <-\n",
        "server.verify_signatures",
        "expected true or false",
        id="wrong-type-bool",
    ),
    pytest.param(
        PROVIDER.replace("PTapitoken123", "${RF_SURELY_UNSET_VAR}  # <-"),
        "providers[0].api_token",
        "environment variable RF_SURELY_UNSET_VAR is not set",
        id="unset-variable",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: a
    when:
      params.To: {matches: "^(+1"}  # <-
    steps: [{action: notify}]
""",
        "rules[0].when.params.To.matches",
        "bad regular expression",
        id="bad-regex",
    ),
    pytest.param(
        PROVIDER + "rules:\n  - name: a\n    steps:\n      - action: sotre  # <-\n",
        "rules[0].steps[0].action",
        "unknown action 'sotre'; known actions: delete, notify, store",
        id="unknown-action",
    ),
    pytest.param(
        PROVIDER
        + "rules:\n  - name: a\n    when:\n      durration: 5  # <-\n"
        + "    steps: [{action: notify}]\n",
        "rules[0].when.durration",
        "unknown field 'durration'; accepted: account_sid",
        id="unknown-field",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: a
    steps:
      - action: notify
        with:
          body: "{{ event.duration }"  # <-
""",
        "rules[0].steps[0].with.body",
        "template syntax",
        id="template-syntax",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: a
    steps:
      - action: store
        with:
          format: flac  # <-
          to: x
""",
        "rules[0].steps[0].with.format",
        "found the string 'flac'; accepted: wav, mp3",
        id="action-parameter",
    ),
    pytest.param(
        PROVIDER
        + "rules:\n  - name: a\n    steps:\n      - action: store\n        with: {}  # <-\n",
        "rules[0].steps[0].with",
        "missing key 'to'",
        id="action-required-parameter",
    ),
    pytest.param(
        PROVIDER + "rules:\n  - name: a\n    steps:\n      - action: delete  # <-\n",
        "rules[0].steps[0].action",
        "delete has no store step before it",
        id="delete-without-store",
    ),
    pytest.param(
        PROVIDER + STORE_RULE + "  - name: archive  # <-\n    steps: [{action: notify}]\n",
        "rules[1].name",
        "duplicate rule name 'archive'",
        id="duplicate-rule",
    ),
    pytest.param(
        PROVIDER
        + """\
rules:
  - name: a
    steps:
      - {id: x, action: notify}
      - {id: x, action: notify}  # <-
""",
        "rules[0].steps[1].id",
        "duplicate step id 'x'",
        id="duplicate-step-id",
    ),
    pytest.param(
        PROVIDER
        + """\
  - name: other
    kind: signalwire
    space: example.signalwire.com
    account_sid: b3877c40-da60-4998-90ad-b792e98472af  # <-
    api_token: t
    signing_key: k
""",
        "providers[1].account_sid",
        "also used by provider 'main'",
        id="duplicate-account",
    ),
    pytest.param(
        "providers:\n  - kind: signalwire  # <-\n    account_sid: a\n    api_token: t\n",
        "providers[0]",
        "missing key 'space'",
        id="signalwire-needs-space",
    ),
    pytest.param(
        "providers:\n  - kind: twilio\n    account_sid: a\n    api_token: t\n"
        "    space: x.signalwire.com  # <-\n",
        "providers[0].space",
        "signalwire providers only",
        id="twilio-space",
    ),
    pytest.param(
        "providers:\n  - kind: plivo  # <-\n    account_sid: a\n    api_token: t\n",
        "providers[0].kind",
        "found the string 'plivo'; accepted: signalwire, twilio",
        id="unknown-kind",
    ),
    pytest.param(
        PROVIDER + "server:\n  trusted_proxies: [10.0.0.1/8]  # <-\n",
        "server.trusted_proxies[0]",
        "expected an address or network",
        id="bad-network",
    ),
    pytest.param(
        PROVIDER + "server:\n  listen: localhost  # <-\n",
        "server.listen",
        "expected HOST:PORT",
        id="bad-listen",
    ),
    pytest.param(
        PROVIDER + "workers: 4\nworkers: 5  # <-\n",
        "workers",
        "duplicate key 'workers'",
        id="duplicate-yaml-key",
    ),
    pytest.param(
        PROVIDER + "rules:\n  - name: a\n    steps: [{action: notify}]\n    stop: [  # <-\n",
        None,
        "YAML syntax",
        id="yaml-syntax",
    ),
    pytest.param(
        "server: {}  # <-\n",
        None,
        "missing key 'providers'",
        id="no-providers",
    ),
]


@pytest.mark.parametrize(("text", "key_path", "message"), ERRORS)
def test_errors_name_file_line_and_key_path(
    tmp_path: Path, text: str, key_path: str | None, message: str
) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, ACTIONS)
    line = marked_line(text)
    prefix = f"{path}:{line}: " + (f"{key_path}: " if key_path else "")
    assert str(caught.value).startswith(prefix), str(caught.value)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_every_problem_is_reported_in_file_order(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
rules:
  - name: a
    when: {status: {gtee: 1}}
    steps: [{action: nope}]
  - name: b
    when: {durration: 3}
    steps: [{action: notify}]
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    paths = [e.path for e in caught.value.all]
    assert paths == [
        "rules[0].when.status.gtee",
        "rules[0].steps[0].action",
        "rules[1].when.durration",
    ]


def test_secrets_never_appear_in_error_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RF_SECRET_PATH", "hunter2-secret")
    text = PROVIDER + "server:\n  path: ${RF_SECRET_PATH}\n"
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert "hunter2-secret" not in str(caught.value)
    assert "'***'" in str(caught.value)


def test_unreadable_file_is_one_line_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the config file"):
        config.load(missing, ACTIONS)


def test_action_with_an_invalid_schema_names_it(tmp_path: Path) -> None:
    actions = dict(ACTIONS)
    actions["bad"] = ActionSpec(name="bad", run=print, schema={"type": "nonsense"}, plugin="acme")
    path = write_config(tmp_path, PROVIDER + "rules:\n  - name: a\n    steps: [{action: bad}]\n")
    with pytest.raises(ConfigError, match="action 'bad' of plugin acme has an invalid schema"):
        config.load(path, actions)


def test_anchors_under_x_keys_are_reusable(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
x-mail: &mail
  action: notify
  with: {to: ["mailto://ops@example.com"]}
rules:
  - name: a
    steps: [*mail]
  - name: b
    steps:
      - <<: *mail
        id: again
"""
    )
    cfg = load_text(tmp_path, text)
    assert [s.raw_params for r in cfg.rules for s in r.steps] == [
        {"to": ["mailto://ops@example.com"]}
    ] * 2
    assert cfg.rules[1].steps[0].id == "again"


def test_empty_environment_value_takes_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RF_EMPTY", "")
    cfg = load_text(tmp_path, PROVIDER + "server: {path: '${RF_EMPTY:-/cb}'}\n")
    assert cfg.server.path == "/cb"


# -- hostile YAML: every failure one located line, quickly ---------------------

LOADERS = [
    pytest.param(getattr(yaml, "CSafeLoader", yaml.SafeLoader), id="libyaml"),
    pytest.param(yaml.SafeLoader, id="pure-python"),
]


@pytest.fixture(params=LOADERS)
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with libyaml's parser and with PyYAML's own: their errors differ."""
    monkeypatch.setattr(yaml_source, "_YamlLoader", request.param)


def laughs(levels: int, width: int = 8) -> str:
    """A "billion laughs": each anchor a list of `width` aliases of the one before."""
    text = "x-l0: &l0 [" + ", ".join(["lol"] * width) + "]\n"
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*l{level - 1}"] * width)
        text += f"x-l{level}: &l{level} [{aliases}]\n"
    return text


def merges(levels: int, width: int = 8) -> str:
    """The same with merge keys: `<<` of `width` aliases of the mapping before."""
    text = "x-m0: &m0 {k: v}\n"
    for level in range(1, levels + 1):
        aliases = ", ".join([f"*m{level - 1}"] * width)
        text += f"x-m{level}: &m{level} {{<<: [{aliases}], k{level}: v}}\n"
    return text


HOSTILE_YAML = [
    pytest.param("workers: 4\x00  # <-\n", "unacceptable character #x0000;", id="nul"),
    pytest.param('backend: "a\x07b"  # <-\n', "unacceptable character #x0007;", id="bell"),
    pytest.param("workers: [4  # <-\n", "YAML syntax", id="scanner-parser"),
    pytest.param("workers: *nowhere  # <-\n", "YAML syntax: found undefined alias", id="composer"),
    pytest.param("workers: !!python/object:os.system x  # <-\n", "YAML syntax", id="constructor"),
    pytest.param("x-when: 2024-13-45  # <-\n", "cannot read '2024-13-45' as a date", id="bad-date"),
    pytest.param("workers: !!int four  # <-\n", "cannot read 'four' as an integer", id="bad-int"),
    pytest.param("x-flag: !!bool maybe  # <-\n", "cannot read 'maybe' as true or false", id="bool"),
    pytest.param(
        "x-self: &self [1, *self]  # <-\n", "an alias used inside its own anchor", id="self-alias"
    ),
    pytest.param(
        "x-self: &self {<<: *self}  # <-\n", "merges a mapping into itself", id="self-merge"
    ),
    pytest.param(
        "x-m: {<<: [1, 2]}  # <-\n", "merges a mapping or a list of mappings", id="merge-1"
    ),
]


@pytest.mark.parametrize(("tail", "message"), HOSTILE_YAML)
def test_hostile_yaml_is_one_located_line(
    tmp_path: Path, yaml_loader: None, tail: str, message: str
) -> None:
    text = PROVIDER + tail
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, ACTIONS)
    error = str(caught.value)
    assert message in error
    assert error.startswith(f"{path}:{marked_line(text)}: "), error
    assert "\n" not in error


def test_billion_laughs_is_refused_without_building_it(tmp_path: Path, yaml_loader: None) -> None:
    # 9 levels of 8 would be 134 million values: refused after the first 100,000.
    text = PROVIDER + laughs(9) + "x-boom: *l9\n"
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, ACTIONS)
    # Where the expansion passed the bound: 8 + 64 + ... + 8**5 values.
    line = text.splitlines().index("x-l5: &l5 [" + ", ".join(["*l4"] * 8) + "]") + 1
    assert str(caught.value).startswith(f"{path}:{line}: x-l5: YAML: aliases expand to more")


def test_merges_of_merges_keep_each_key_once(tmp_path: Path, yaml_loader: None) -> None:
    # PyYAML's own merging would make 8**12 entries of these.
    cfg = load_text(tmp_path, PROVIDER + merges(12))
    assert cfg.providers[0].name == "main"


def test_merged_keys_yield_to_the_mapping_own_keys(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
x-mail: &mail
  action: notify
  with: {to: ["mailto://ops@example.com"]}
rules:
  - name: a
    steps:
      - <<: *mail
        with: {to: ["mailto://other@example.com"]}
"""
    )
    (step,) = load_text(tmp_path, text).rules[0].steps
    assert step.raw_params == {"to": ["mailto://other@example.com"]}


@pytest.mark.parametrize("depth", [pytest.param(100, id="100"), pytest.param(5000, id="5000")])
def test_deep_nesting_says_so(tmp_path: Path, yaml_loader: None, depth: int) -> None:
    path = write_config(tmp_path, PROVIDER + "x-deep: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError, match="nested deeper than 64 levels") as caught:
        config.load(path, ACTIONS)
    assert "self-referencing" not in str(caught.value)


def test_check_prints_one_line_for_a_nul_byte(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recflow.cli import cli

    path = write_config(tmp_path, PROVIDER + "workers: 4\x00\n")
    result = CliRunner().invoke(cli, ["check", "-c", path])
    assert result.exit_code == 1
    assert result.stderr == f"{path}:8: YAML: unacceptable character #x0000; " + (
        "control characters other than tab and newline are not allowed in YAML: remove it\n"
    )


# -- ${...} defaults that hold references --------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            "${RF_ALERT_URL:-mailto://recflow:${RF_SMTP_PW}@h.example.com?to=x}",
            "mailto://recflow:pw-from-env@h.example.com?to=x",
            id="nested-reference",
        ),
        pytest.param(
            "${RF_ALERT_URL:-a${RF_NOPE:-b${RF_SMTP_PW}c}d}", "abpw-from-envcd", id="deep"
        ),
        pytest.param("${RF_ALERT_URL:-$${LITERAL}}", "${LITERAL}", id="literal-in-default"),
        pytest.param("${RF_ALERT_URL:-{a: {b}}}", "{a: {b}}", id="balanced-braces"),
        pytest.param("${RF_SMTP_PW:-${RF_NOPE}}", "pw-from-env", id="unused-default-unset"),
        pytest.param("x${RF_NOPE:-}y", "xy", id="empty-default"),
    ],
)
def test_defaults_may_hold_references(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv("RF_SMTP_PW", "pw-from-env")
    monkeypatch.delenv("RF_ALERT_URL", raising=False)
    monkeypatch.delenv("RF_NOPE", raising=False)
    text = PROVIDER + STORE_RULE + f"      - action: notify\n        with: {{to: ['{value}']}}\n"
    cfg = load_text(tmp_path, text)
    assert cfg.rules[0].steps[1].raw_params["to"] == [expected]
    assert ("pw-from-env" in cfg.secrets) is ("pw-from-env" in expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param("${RF_NOPE:-${RF_NOPE2}}", "environment variable RF_NOPE2 is not set", id="u"),
        pytest.param("${RF_NOPE:-abc", "unclosed ${", id="unclosed-default"),
        pytest.param("a${RF_NOPE", "unclosed ${", id="unclosed"),
        pytest.param("${RF NOPE}", "malformed reference ${RF NOPE}", id="malformed"),
    ],
)
def test_bad_references_are_located(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.delenv("RF_NOPE", raising=False)
    monkeypatch.delenv("RF_NOPE2", raising=False)
    text = PROVIDER + f"server:\n  public_url: '{value}'  # <-\n"
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, ACTIONS)
    assert str(caught.value).startswith(f"{path}:{marked_line(text)}: server.public_url: ")
    assert message in str(caught.value)


# -- server.listen ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        pytest.param("127.0.0.1:8080", None, id="ipv4"),
        pytest.param("localhost:65535", None, id="name-top-port"),
        pytest.param("[::1]:8080", None, id="ipv6"),
        pytest.param("127.0.0.1:99999", "port 99999 is out of range", id="port-too-big"),
        pytest.param("127.0.0.1:0", "port 0 is out of range", id="port-0"),
        pytest.param("::1:8080", "an IPv6 address goes in brackets: [::1]:8080", id="bare-ipv6"),
        pytest.param("[::g]:8080", "[::g] is not a bracketed IPv6 address", id="bad-ipv6"),
        pytest.param("[::1:8080", "[::1 is not a bracketed IPv6 address", id="half-bracket"),
        pytest.param("a b:80", "'a b' is not a host name or address", id="space"),
        pytest.param("localhost", "expected HOST:PORT", id="no-port"),
    ],
)
def test_server_listen_is_checked_at_load(tmp_path: Path, listen: str, problem: str | None) -> None:
    text = PROVIDER + f"server:\n  listen: '{listen}'  # <-\n"
    path = write_config(tmp_path, text)
    if problem is None:
        assert config.load(path, ACTIONS).server.listen == listen
        return
    with pytest.raises(ConfigError) as caught:
        config.load(path, ACTIONS)
    assert str(caught.value).startswith(f"{path}:{marked_line(text)}: server.listen: ")
    assert problem in str(caught.value)


# -- every independent mistake in one run ------------------------------------------


def test_schema_errors_and_rule_errors_are_all_reported(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
workers: many
server:
  listen: 127.0.0.1:99999
  lisen: x
rules:
  - name: a
    when: {duration: {gtee: 5}}
    steps:
      - acton: notify
      - action: store
        with: {to: "x", format: flac}
  - name: b
    when: {status: {eq: completed}}
    steps: [{action: sotre}]
  - name: c
    steps: 5
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    found = [(e.path, e.message.split(";")[0]) for e in caught.value.all]
    assert found == [
        ("workers", "found the string 'many'"),
        ("server.listen", "found the string '127.0.0.1:99999': port 99999 is out of range"),
        ("server.lisen", "unknown key 'lisen'"),
        ("rules[0].when.duration.gtee", "unknown operator 'gtee'"),
        ("rules[0].steps[0].acton", "unknown key 'acton'"),
        ("rules[0].steps[1].with.format", "found the string 'flac'"),
        ("rules[1].steps[0].action", "unknown action 'sotre'"),
        ("rules[2].steps", "found the number 5"),
    ]


def test_every_unknown_key_of_a_mapping_is_named(tmp_path: Path) -> None:
    text = PROVIDER + "server:\n  lisen: x\n  pth: /x\n"
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    assert [e.path for e in caught.value.all] == ["server.lisen", "server.pth"]


# -- warnings: conditions that load but can hardly mean what was meant -------------


def test_unknown_statuses_and_matches_on_numbers_are_warned_about(tmp_path: Path) -> None:
    text = (
        PROVIDER
        + """\
rules:
  - name: a
    when:
      status: complete
      any:
        - status: {in: [completed, 5]}
        - duration: {matches: "^9"}
        - not: {status: absent}
    steps: [{action: notify}]
"""
    )
    cfg = load_text(tmp_path, text)
    path = str(tmp_path / "config.yaml")
    assert [w.split(";")[0] for w in cfg.warnings if "rules[" in w] == [
        f"{path}:11: rules[0].when.status: status 'complete' is not a status providers send"
        " (in-progress, completed, absent, failed)",
        f"{path}:13: rules[0].when.any[0].status: status 5 is not a status providers send"
        " (in-progress, completed, absent, failed)",
        f"{path}:14: rules[0].when.any[1].duration.matches: duration is a number: matches"
        " tests its decimal text (94 as '94')",
    ]


def test_a_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    text = PROVIDER + "# caf\u00e9  # <-\n"
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("latin-1"))

    with pytest.raises(ConfigError) as caught:
        config.load(str(path), ACTIONS)

    assert str(caught.value) == (
        f"{path}:{marked_line(text)}: byte 0xe9 is not UTF-8 text; save the file as UTF-8"
    )


def test_a_template_where_a_pattern_is_expected_says_the_pattern_sees_it_unrendered(
    tmp_path: Path,
) -> None:
    text = PROVIDER + "rules:\n  - name: r\n    steps:\n      - action: webhook\n"
    text += '        with: {url: "{{ event.recording_url }}"}  # <-\n'
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.load(path, build_plugin_manager().actions)
    assert str(caught.value) == (
        f"{path}:{marked_line(text)}: rules[0].steps[0].with.url: found the template"
        " '{{ event.recording_url }}'; expected a string matching ^https?://: a template is"
        " checked as written, before it is rendered, so write out the part the pattern needs"
    )


def test_a_template_outside_with_is_not_explained_as_one(tmp_path: Path) -> None:
    text = PROVIDER + "rules:\n  - name: r\n    steps:\n      - action: delete\n"
    text += '        id: "a{{ rule.name }}"  # <-\n'
    with pytest.raises(ConfigError) as caught:
        config.load(write_config(tmp_path, text), ACTIONS)
    assert "rules[0].steps[0].id: found the string 'a{{ rule.name }}'" in str(caught.value)
    assert "checked as written" not in str(caught.value)
