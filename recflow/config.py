"""The loaded configuration: typed, validated, with templates compiled.

`load(path, actions)` reads `config.yaml`, substitutes `${NAME}` and
`${NAME:-default}` from the environment, validates the whole file against
the JSON Schema (the base schema plus each action's `with:` schema),
compiles rules and templates, and returns a `Config`. Any problem raises
one `ConfigError` naming file, line and key path (the first; the others
found in the same pass ride along in `.others`); nothing half-loads.

Details a user meets:

- `${NAME:-default}` uses the default when NAME is unset or empty; a
  default may hold references and balanced braces of its own
  (`${URL:-mailto://u:${PASSWORD}@host}`), expanded only when used.
  `$${NAME}` is the literal text `${NAME}`. A plain (unquoted) value that
  is one reference takes the YAML type of what it expands to
  (`workers: ${WORKERS}` is a number); under `providers` values always
  stay strings, since tokens may look like numbers.
- Every value taken from the environment and every password written in a
  URL goes into `Config.secrets`, as do providers' tokens and keys.
- `sqlite:///relative` backends and `file://./` or `file://../` prefixes
  of step parameters are resolved against the config file's directory,
  its symlinks resolved once, at load: a deploy that switches a `current`
  symlink does not move a running service's database from under it, nor
  split it between its processes. (A config file that is itself a
  symlink still resolves beside the link.) `sqlite:///~/x.db` is in the
  home directory.
- A signalwire `space` without a dot is a space name: `acme` means
  `acme.signalwire.com`.
- Hostile YAML fails as one located line like any other mistake: control
  characters, values nested deeper than MAX_DEPTH, aliases that expand
  past MAX_ALIAS_VALUES values ("billion laughs"), self-references (see
  recflow.yaml_source, which reads the file, and recflow.envsubst).
- Every independent mistake is reported in one run: the schema's errors,
  one per key path, then the rules and steps the schema found sound.
- `server.listen` is checked at load (`listen_problem`), port 1 to 65535.
- Warnings, not errors: a `status` value no provider sends, and `matches`
  on a numeric field, which tests the number's decimal text.

Knows the schema, the event and the rules; nothing that runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NoReturn

import jsonschema

from recflow.errors import ConfigError, join_path
from recflow.event import STATUSES
from recflow.rules import compile_when, describe, prepare
from recflow.schema import CONFIG_SCHEMA
from recflow.secrets import Redactor
from recflow.templates import compile_params
from recflow.yaml_source import YamlReader

if TYPE_CHECKING:
    from recflow.plugins import ActionSpec

DEFAULT_BACKEND = "sqlite:///./var/recflow.db"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    path: str = "/recordings"
    public_url: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 65536
    verify_signatures: bool = True
    # Seconds a client has to send a request's headers, and again its body:
    # a client that dribbles bytes cannot hold a connection longer.
    read_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """One provider account: who signs its callbacks, where its API is."""

    name: str
    kind: str  # "signalwire" or "twilio"
    account_sid: str
    api_token: str
    signing_keys: tuple[str, ...]
    api_url: str  # e.g. https://space.signalwire.com/api/laml/2010-04-01
    space: str | None = None

    @property
    def origin(self) -> str:
        """scheme://host[:port] of the API: the only place media comes from."""
        from urllib.parse import urlsplit

        parts = urlsplit(self.api_url)
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}".lower()


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    backoff: float = 2.0
    max_backoff: float = 600.0

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (from 1)."""
        return min(self.backoff * (2 ** (attempt - 1)), self.max_backoff)


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """One step of a rule; `params` holds compiled templates (see templates)."""

    index: int
    action: str
    id: str | None
    params: Any
    raw_params: Mapping[str, Any]
    retry: RetryPolicy
    line: int | None = None
    # Seconds an attempt may run before it counts as failed (recflow.worker).
    timeout: float = 3600.0


@dataclasses.dataclass(frozen=True)
class RuleConfig:
    name: str
    when: Any  # a compiled recflow.rules condition, or None: matches all
    steps: tuple[StepConfig, ...]
    stop: bool = False
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Config:
    path: str
    server: ServerConfig
    providers: tuple[ProviderConfig, ...]
    backend: str
    workers: int
    rules: tuple[RuleConfig, ...]
    secrets: frozenset[str]
    # Problems that do not stop a load but that whoever runs it should
    # hear of: `recflow check` prints them, `recflow serve` logs them.
    warnings: tuple[str, ...] = ()
    # The file's bytes as loaded: `recflow serve` hands them to its worker
    # process, so that an edit made since it started never reaches it.
    source: bytes = dataclasses.field(default=b"", repr=False)
    # `path` in its folder with the folder's symlinks resolved at load:
    # relative paths start there, and a worker process started later is
    # given this path.
    real_path: str = ""

    def provider_for(self, account_sid: str) -> ProviderConfig | None:
        for provider in self.providers:
            if provider.account_sid == account_sid:
                return provider
        return None

    def rule(self, name: str) -> RuleConfig | None:
        """The rule called `name`: a worker looks one up for every step it runs."""
        return self._rules_by_name.get(name)

    @functools.cached_property
    def _rules_by_name(self) -> dict[str, RuleConfig]:
        # Built on first use rather than in __init__, so that a Config made
        # by hand (tests, `dataclasses.replace`) gets one too. Names are
        # unique after a load; by hand, the first of a name wins, as in the
        # file-order search this replaces.
        by_name: dict[str, RuleConfig] = {}
        for rule in self.rules:
            by_name.setdefault(rule.name, rule)
        return by_name


# -- loading -------------------------------------------------------------------


def _finite_number(checker: Any, instance: Any) -> bool:
    """JSON Schema's number, less YAML's `.nan` and `.inf`: NaN passes every
    bound (`timeout: .nan` would be no timeout at all)."""
    return jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(instance, "number") and (
        not isinstance(instance, float) or math.isfinite(instance)
    )


# The config's validator, and that of every action's `with:`.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _finite_number),
)
_BASE_VALIDATOR = _Validator(CONFIG_SCHEMA)

_HOST = re.compile(r"[A-Za-z0-9._-]+")
# Event fields that hold numbers (see recflow.event.Event).
_NUMBER_FIELDS = ("duration", "channels")
_URL_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s/:@]*:([^\s/@]+)@")
_TYPE_WORDS = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
}
_BOUND_WORDS = {
    "minimum": "at least",
    "maximum": "at most",
    "exclusiveMinimum": "more than",
    "exclusiveMaximum": "less than",
}


def load(
    path: str,
    actions: Mapping[str, ActionSpec],
    *,
    missing_action: Callable[[str], str] | None = None,
    source: bytes | None = None,
) -> Config:
    """Read, check and compile the config file at `path`.

    `actions` is what rules may name (`build_plugin_manager().actions`);
    `missing_action(name)`, if given (`PluginHost.missing_action`), says
    why an action is unknown, e.g. that the plugin adding it is broken.
    `source`, if given, is the file's content as read earlier (by the
    process that started this one): it is compiled instead of what is on
    disk now, and `path` still names the file in messages and is where
    relative paths start from.
    Raises one `ConfigError` (the first problem, in file order, with the
    rest in `.others`) and returns nothing half-loaded. Messages never
    contain a secret.
    """
    with _collection_paused():
        return _Loader(path, actions, missing_action).load(source)


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """Hold off Python's cyclic garbage collector for the duration.

    A load builds hundreds of thousands of objects (YAML nodes, compiled
    conditions and templates) and frees none of them, so each automatic
    collection walks an ever-larger heap for nothing: at 10,000 rules that
    was about 40% of the load. If another thread turns collection back on
    meanwhile, the load only runs slower.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Loader:
    """One load of one file: its line map, its secrets, its errors so far."""

    def __init__(
        self,
        path: str,
        actions: Mapping[str, ActionSpec],
        missing_action: Callable[[str], str] | None = None,
    ) -> None:
        self.file = path
        self.missing_action = missing_action
        # The folder's symlinks resolved, not the file's: a config.yaml that
        # is itself a link keeps its paths beside the link, as it always had.
        self.base_dir = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        self.real_path = os.path.join(self.base_dir, os.path.basename(path))
        self.actions = actions
        self.lines: dict[str, int] = {}
        self.secrets: set[str] = set()
        self.from_env: set[str] = set()
        self.errors: list[ConfigError] = []
        self.warnings: list[str] = []
        # Key paths (as tuples) where the schema found a problem; the
        # sections below them are not compiled, the others are.
        self.unsound: set[tuple[Any, ...]] = set()

    def load(self, raw: bytes | None = None) -> Config:
        if raw is None:
            raw = self._read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"byte 0x{raw[exc.start]:02x} is not UTF-8 text; save the file as UTF-8",
                file=self.file,
                line=raw.count(b"\n", 0, exc.start) + 1,
            ) from None

        doc = self._parse(text)
        if not isinstance(doc, dict):
            self._fail(f"found {describe(doc)} at the top; expected a mapping with providers:", "")
        self._validate(doc, _BASE_VALIDATOR, "")

        # Sections the schema found sound are compiled even when others are
        # not, so one run reports every independent mistake.
        server = self._server(self._sound_part(doc, "server"))
        providers = self._providers(doc.get("providers"))
        backend = DEFAULT_BACKEND
        if self._sound("backend"):
            backend = self._backend(doc.get("backend", DEFAULT_BACKEND))
        rules = self._rules(doc.get("rules"))
        self._raise_if_any()
        prepare(rules)
        return Config(
            path=self.file,
            server=server,
            providers=providers,
            backend=backend,
            workers=doc.get("workers", 4),
            rules=rules,
            secrets=frozenset(self.secrets),
            warnings=self._warnings(server) + tuple(self.warnings),
            source=raw,
            real_path=self.real_path,
        )

    def _read(self) -> bytes:
        try:
            with open(self.file, "rb") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(
                f"cannot read the config file: {_reason(exc)}", file=self.file
            ) from None

    def _warnings(self, server: ServerConfig) -> tuple[str, ...]:
        warnings = []
        if not server.verify_signatures:
            warnings.append(
                "server.verify_signatures is false: anyone who can reach the server"
                " can post callbacks"
            )
        written = self.secrets - self.from_env
        try:
            mode = os.stat(self.file).st_mode
        except OSError:
            mode = 0
        if written and mode & 0o044:
            warnings.append(
                f"{self.file} is readable by other users (mode {mode & 0o777:o}) and holds"
                " secrets written in it (as values or as ${NAME:-default} defaults):"
                " chmod 600 it, or set those variables in the environment"
            )
        return tuple(warnings)

    # -- errors --------------------------------------------------------------

    def _error(self, message: str, path: str, line: int | None = None) -> None:
        self.errors.append(
            ConfigError(message, file=self.file, line=line or self._line(path), path=path or None)
        )

    def _fail(self, message: str, path: str, line: int | None = None) -> NoReturn:
        self._error(message, path, line)
        self._raise_if_any()
        raise AssertionError("unreachable")  # pragma: no cover

    def _relocate(self, exc: ConfigError) -> None:
        self._error(exc.message, exc.path or "", exc.line)

    def _raise_if_any(self) -> None:
        if not self.errors:
            return
        redactor = Redactor(self.secrets)
        found = sorted(self.errors, key=lambda e: e.line or 0)
        masked = [
            ConfigError(redactor.mask(e.message), file=e.file, line=e.line, path=e.path)
            for e in found
        ]
        raise ConfigError(
            masked[0].message,
            file=masked[0].file,
            line=masked[0].line,
            path=masked[0].path,
            others=masked[1:],
        )

    def _sound(self, *parts: Any) -> bool:
        """True when the schema found nothing wrong at or under key path `parts`."""
        size = len(parts)
        return not any(bad[:size] == parts for bad in self.unsound)

    def _sound_part(self, doc: Mapping[str, Any], section: str) -> dict[str, Any]:
        """The keys of mapping `doc[section]` that the schema found sound."""
        raw = doc.get(section)
        if not isinstance(raw, dict):
            return {}
        return {k: v for k, v in raw.items() if self._sound(section, k)}

    def _line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.lines.get("")

    # -- YAML, read by recflow.yaml_source -----------------------------------

    def _parse(self, text: str) -> Any:
        """The document as plain values; what the reading found joins this load."""
        reader = YamlReader(os.environ)
        stopped: ConfigError | None = None
        doc = None
        try:
            doc = reader.read(text)
        except ConfigError as exc:
            stopped = exc
        self.lines = reader.lines
        self.secrets.update(reader.env_values)
        self.from_env.update(reader.env_values)
        for problem in reader.problems:
            self._relocate(problem)
        if stopped is not None:
            self._relocate(stopped)
            self._raise_if_any()
        return doc

    # -- schema ----------------------------------------------------------------

    def _validate(self, instance: Any, validator: Any, prefix: str) -> None:
        """Report every independent schema error of `instance`, one line each.

        Errors are grouped by the key path they are at, and each group
        reported by its most relevant error, so one mistake (a misspelt
        key, which is both unknown and missing) gives one line.
        """
        groups: dict[tuple[Any, ...], list[jsonschema.ValidationError]] = {}
        for error in validator.iter_errors(instance):
            groups.setdefault(tuple(error.absolute_path), []).append(error)
        if not prefix:
            self.unsound.update(groups)
        taken = {e.path for e in self.errors if e.path}
        for errors in groups.values():
            best = jsonschema.exceptions.best_match(errors)
            if best is None:
                continue
            for message, path in self._describe_schema_error(best, prefix):
                # An unset variable already explains the empty value found there.
                if not any(path == t or path.startswith(t + ".") for t in taken):
                    self._error(message, path)

    def _describe_schema_error(
        self, error: jsonschema.ValidationError, prefix: str
    ) -> list[tuple[str, str]]:
        """One (message, key path) per mistake in `error`: one per unknown key."""
        path = prefix
        for part in error.absolute_path:
            path = join_path(path, part)
        kind, found = error.validator, error.instance
        schema = error.schema if isinstance(error.schema, dict) else {}
        if kind == "additionalProperties" and isinstance(found, dict):
            allowed = sorted(schema.get("properties", {}))
            patterns = list(schema.get("patternProperties", {}))
            extra = [
                k for k in found if k not in allowed and not any(re.search(p, k) for p in patterns)
            ]
            return [
                (f"unknown key {key!r}; accepted: {', '.join(allowed)}", join_path(path, key))
                for key in extra or ["?"]
            ]
        return [(self._schema_message(error, templated=prefix.endswith("with")), path)]

    def _schema_message(self, error: jsonschema.ValidationError, templated: bool = False) -> str:
        """What is wrong, in a user's words; `templated`: values there may be templates."""
        kind, expected, found = error.validator, error.validator_value, error.instance
        schema = error.schema if isinstance(error.schema, dict) else {}
        if kind == "required" and isinstance(found, dict):
            missing = [repr(k) for k in expected if k not in found] or [repr(expected)]
            return f"missing key{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        if kind == "type":
            wanted = [expected] if isinstance(expected, str) else list(expected)
            words = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
            return f"found {describe(found)}; expected {words}"
        if kind in ("enum", "const"):
            values = expected if kind == "enum" else [expected]
            return f"found {describe(found)}; accepted: {', '.join(map(str, values))}"
        if kind in _BOUND_WORDS:
            return f"found {describe(found)}; expected {_BOUND_WORDS[kind]} {expected}"
        if kind == "minLength":
            return f"found {describe(found)}; expected a non-empty string"
        if kind == "minItems":
            return f"found {describe(found)}; expected at least {expected} item(s)"
        if kind == "pattern":
            shape = schema.get("description") or f"a string matching {expected}"
            if templated and isinstance(found, str) and "{{" in found:
                # Checked as written, before rendering: the fixed part must fit.
                return (
                    f"found the template {found!r}; expected {shape}: a template is"
                    " checked as written, before it is rendered, so write out the part"
                    " the pattern needs"
                )
            return f"found {describe(found)}; expected {shape}"
        return " ".join(error.message.split())

    # -- sections ------------------------------------------------------------

    def _server(self, raw: dict[str, Any]) -> ServerConfig:
        proxies = []
        for index, value in enumerate(raw.get("trusted_proxies", [])):
            try:
                proxies.append(ipaddress.ip_network(value))
            except ValueError as exc:
                self._error(
                    f"found {describe(value)}: {exc}; expected an address or network"
                    " such as 10.0.0.0/8",
                    join_path("server.trusted_proxies", index),
                )
        defaults = ServerConfig()
        listen = raw.get("listen", defaults.listen)
        problem = listen_problem(listen)
        if problem:
            self._error(f"found {describe(listen)}: {problem}", "server.listen")
        return ServerConfig(
            listen=listen,
            path=raw.get("path", defaults.path),
            public_url=raw.get("public_url"),
            trusted_proxies=tuple(proxies),
            max_body_bytes=raw.get("max_body_bytes", defaults.max_body_bytes),
            verify_signatures=raw.get("verify_signatures", True),
            read_timeout=float(raw.get("read_timeout", defaults.read_timeout)),
        )

    def _providers(self, raw: Any) -> tuple[ProviderConfig, ...]:
        providers: list[ProviderConfig] = []
        names: dict[str, int] = {}
        accounts: dict[str, str] = {}
        for index, item in enumerate(raw if isinstance(raw, list) else []):
            if not self._sound("providers", index):
                continue
            path = join_path("providers", index)
            kind = item["kind"]
            name = item.get("name", kind)
            if name in names:
                self._error(
                    f"duplicate provider name {name!r} (also providers[{names[name]}]);"
                    " give each provider its own name",
                    join_path(path, "name"),
                )
            names.setdefault(name, index)
            account = item["account_sid"]
            if account in accounts:
                self._error(
                    f"this account_sid is also used by provider {accounts[account]!r};"
                    " each account may be listed once",
                    join_path(path, "account_sid"),
                )
            accounts.setdefault(account, name)

            space = item.get("space")
            keys = item.get("signing_key", [])
            keys = [keys] if isinstance(keys, str) else list(keys)
            if kind == "signalwire":
                for required in ("space", "signing_key"):
                    if required not in item:
                        self._error(
                            f"missing key {required!r}; a signalwire provider needs"
                            " space (e.g. example.signalwire.com) and signing_key",
                            path,
                        )
                if space and "." not in space:
                    space = f"{space}.signalwire.com"
                default_url = f"https://{space}/api/laml/2010-04-01"
            else:
                if space is not None:
                    self._error(
                        "space is for signalwire providers only; remove it",
                        join_path(path, "space"),
                    )
                keys = keys or [item["api_token"]]
                default_url = "https://api.twilio.com/2010-04-01"

            self.secrets.add(item["api_token"])
            self.secrets.update(keys)
            providers.append(
                ProviderConfig(
                    name=name,
                    kind=kind,
                    account_sid=account,
                    api_token=item["api_token"],
                    signing_keys=tuple(keys),
                    api_url=item.get("api_url", default_url).rstrip("/"),
                    space=space,
                )
            )
        return tuple(providers)

    def _backend(self, url: str) -> str:
        prefix = "sqlite:///"
        if not url.startswith(prefix):
            redis_problem = _redis_url_problem(url)
            if redis_problem:
                self._error(f"{url}: {redis_problem}", "backend")
            return url
        written = url[len(prefix) :]
        expanded = os.path.expanduser(written)
        target = os.path.normpath(os.path.join(self.base_dir, expanded))
        problem: str | None
        if "?" in written or "#" in written:
            problem = "a query or fragment is not read; name the database file alone"
        elif written == ":memory:":
            problem = "an in-memory database would lose every callback; name a file"
        elif expanded.startswith("~"):
            problem = f"no home folder for {expanded.split('/')[0]}"
        elif written.endswith("/"):
            problem = "ends in /; name the database file, e.g. recflow.db in that folder"
        else:
            problem = _sqlite_path_problem(target)
        if problem:
            self._error(f"{url}: {problem}", "backend")
        return prefix + target

    def _rules(self, raw: Any) -> tuple[RuleConfig, ...]:
        """The rules; those the schema found fault with are compiled as far as sound."""
        rules: list[RuleConfig] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(raw if isinstance(raw, list) else []):
            if not isinstance(item, dict):
                continue
            path = join_path("rules", index)
            name = item.get("name") if self._sound("rules", index, "name") else None
            if name in seen:
                self._error(
                    f"duplicate rule name {name!r} (also rules[{seen[name]}]);"
                    " rule names must be unique",
                    join_path(path, "name"),
                )
            if name is not None:
                seen.setdefault(name, index)
            when = None
            if "when" in item and self._sound("rules", index, "when"):
                try:
                    when = compile_when(item["when"], join_path(path, "when"))
                except ConfigError as exc:
                    self._relocate(exc)
                else:
                    self._when_warnings(item["when"], join_path(path, "when"))
            steps = item.get("steps")
            rules.append(
                RuleConfig(
                    name=str(name),
                    when=when,
                    steps=self._steps(steps if isinstance(steps, list) else [], index),
                    stop=item.get("stop", False),
                    line=self._line(path),
                )
            )
        return tuple(rules)

    def _when_warnings(self, spec: Any, path: str) -> None:
        """Warn of conditions that compile but are unlikely to mean what was meant.

        A `status` value providers never send can only match if one starts
        sending it; `matches` on a number tests its decimal text.
        """
        if not isinstance(spec, dict):
            return
        for key, value in spec.items():
            here = join_path(path, str(key))
            if key in ("all", "any") and isinstance(value, list):
                for index, item in enumerate(value):
                    self._when_warnings(item, join_path(here, index))
            elif key == "not":
                self._when_warnings(value, here)
            elif key == "status":
                for unknown in _unknown_statuses(value):
                    self._warn(
                        f"status {unknown!r} is not a status providers send"
                        f" ({', '.join(STATUSES)}); this condition matches only if a"
                        " provider starts sending it",
                        here,
                    )
            elif key in _NUMBER_FIELDS and isinstance(value, dict) and "matches" in value:
                self._warn(
                    f"{key} is a number: matches tests its decimal text (94 as '94');"
                    " use gt, gte, lt, lte to compare amounts",
                    join_path(here, "matches"),
                )

    def _warn(self, message: str, path: str) -> None:
        line = self._line(path)
        self.warnings.append(f"{self.file}{f':{line}' if line else ''}: {path}: {message}")

    def _steps(self, raw: list[Any], rule: int) -> tuple[StepConfig, ...]:
        steps: list[StepConfig] = []
        ids: set[str] = set()
        stored = False
        path = join_path(join_path("rules", rule), "steps")
        for index, item in enumerate(raw):
            if not self._sound("rules", rule, "steps", index):
                # Still a store, for the check of a delete after it.
                stored = stored or (isinstance(item, dict) and item.get("action") == "store")
                continue
            here = join_path(path, index)
            action = item["action"]
            step_id = item.get("id")
            if step_id is not None:
                if step_id in ids:
                    self._error(
                        f"duplicate step id {step_id!r}; ids must be unique within a rule",
                        join_path(here, "id"),
                    )
                ids.add(step_id)
            if action == "delete" and not stored:
                self._error(
                    "delete has no store step before it in this rule; delete runs"
                    " only after a verified store, so add a store step first",
                    join_path(here, "action"),
                )
            stored = stored or action == "store"

            params = self._resolve_paths(item.get("with", {}))
            self._collect_url_passwords(params)
            spec = self.actions.get(action)
            if spec is None:
                known = ", ".join(sorted(self.actions)) or "none"
                why = f"unknown action {action!r}; known actions: {known}"
                if self.missing_action is not None:
                    why = self.missing_action(action)
                self._error(why, join_path(here, "action"))
            else:
                try:
                    validator = _action_validator(spec)
                except ConfigError as exc:
                    self._error(exc.message, join_path(here, "action"))
                else:
                    self._validate(params, validator, join_path(here, "with"))
            try:
                compiled = compile_params(params, join_path(here, "with"), self.lines)
            except ConfigError as exc:
                self._relocate(exc)
                compiled = compile_params({}, "")

            retry = item.get("retry", {})
            steps.append(
                StepConfig(
                    index=index,
                    action=action,
                    id=step_id,
                    params=compiled,
                    raw_params=params,
                    retry=RetryPolicy(
                        attempts=retry.get("attempts", RetryPolicy.attempts),
                        backoff=float(retry.get("backoff", RetryPolicy.backoff)),
                    ),
                    line=self._line(here),
                    timeout=float(item.get("timeout", StepConfig.timeout)),
                )
            )
        return tuple(steps)

    def _resolve_paths(self, value: Any) -> Any:
        """`file://./x` and `file://../x` made relative to the config's directory."""
        if isinstance(value, str):
            return _resolve_file_url(value, self.base_dir)
        if isinstance(value, dict):
            return {k: self._resolve_paths(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._resolve_paths(v) for v in value]
        return value

    def _collect_url_passwords(self, value: Any) -> None:
        if isinstance(value, str):
            self.secrets.update(_URL_PASSWORD.findall(value))
        elif isinstance(value, dict):
            for item in value.values():
                self._collect_url_passwords(item)
        elif isinstance(value, list):
            for item in value:
                self._collect_url_passwords(item)


def _redis_url_problem(url: str) -> str | None:
    """Why redis-py would refuse `url` at start: its port or database number."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number in range
    except ValueError:
        return "the port is not a number from 0 to 65535"
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        return f"the database {database!r} is not a number (redis://HOST:PORT/0)"
    return None


# What every SQLite 3 database file starts with.
_SQLITE_HEADER = b"SQLite format 3\x00"


def _sqlite_path_problem(path: str) -> str | None:
    """Why SQLite could never open a database at `path`, told before `serve` tries.

    Folders that do not exist yet are fine (they are made at start); a
    file standing where a folder must be, a folder or device where the
    database must be, or a file that is not SQLite's, is not. Permissions
    are not judged: `recflow check` may run as another user than the
    service.
    """
    if os.path.isdir(path):
        return f"{path} is a folder; name a file in it, e.g. {os.path.join(path, 'recflow.db')}"
    if os.path.exists(path):
        if not os.path.isfile(path):
            return f"{path} is not a regular file"
        try:
            with open(path, "rb") as handle:
                header = handle.read(len(_SQLITE_HEADER))
        except OSError:
            return None  # perhaps readable by the service's user
        if header and header != _SQLITE_HEADER:
            return f"{path} is not an SQLite database (its first bytes say otherwise)"
        return None
    folder = os.path.dirname(path)
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    if folder and not os.path.isdir(folder):
        return f"{folder} is a file, not a folder"
    return None


def _unknown_statuses(value: Any) -> list[Any]:
    """The values a `status` condition compares with that are not known statuses."""
    if isinstance(value, dict):
        values: list[Any] = []
        for op, operand in value.items():
            if op in ("eq", "ne"):
                values.append(operand)
            elif op in ("in", "not_in") and isinstance(operand, list):
                values.extend(operand)
    else:
        values = value if isinstance(value, list) else [value]
    return [v for v in values if v not in STATUSES]


def listen_problem(listen: str) -> str | None:
    """Why `listen` is not a HOST:PORT a server can bind, or None when it is.

    The host is a name, an IPv4 address or a bracketed IPv6 address
    (`[::1]:8080`); the port is 1 to 65535.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host:
        return "expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080"
    if host.startswith("[") or host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1] if host[:1] + host[-1:] == "[]" else host)
        except ValueError:
            return f"{host} is not a bracketed IPv6 address; expected e.g. [::1]:8080"
        if host[:1] + host[-1:] != "[]":
            return f"{host} is not a bracketed IPv6 address; expected e.g. [::1]:8080"
    elif ":" in host:
        return f"an IPv6 address goes in brackets: [{host}]:{port}"
    elif not _HOST.fullmatch(host):
        return f"{host!r} is not a host name or address; expected HOST:PORT, e.g. 127.0.0.1:8080"
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        return f"port {port or '(none)'} is out of range; expected a port from 1 to 65535"
    return None


def _resolve_file_url(value: str, base_dir: str) -> str:
    prefix = "file://"
    if not value.startswith((prefix + "./", prefix + "../")):
        return value
    rest, base = value[len(prefix) :], base_dir
    while True:
        if rest.startswith("./"):
            rest = rest[2:]
        elif rest.startswith("../"):
            rest, base = rest[3:], os.path.dirname(base)
        else:
            break
    return prefix + base.rstrip("/") + "/" + rest


_VALIDATORS: dict[int, Any] = {}


def _action_validator(spec: ActionSpec) -> Any:
    """A validator for an action's `with:` schema, built once per schema."""
    key = id(spec.schema)
    if key not in _VALIDATORS:
        try:
            jsonschema.Draft202012Validator.check_schema(spec.schema)
        except jsonschema.SchemaError as exc:
            raise ConfigError(
                f"action {spec.name!r} of plugin {spec.plugin or '?'} has an invalid"
                f" schema: {exc.message}"
            ) from None
        _VALIDATORS[key] = _Validator(spec.schema)
    return _VALIDATORS[key]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
