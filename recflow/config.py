"""The loaded configuration: typed, validated, with templates compiled.

`load(path, actions)` reads `config.yaml`, substitutes `${NAME}` and
`${NAME:-default}` from the environment, validates the whole file against
the JSON Schema (the base schema plus each action's `with:` schema),
compiles rules and templates, and returns a `Config`. Any problem raises
one `ConfigError` naming file, line and key path; nothing half-loads.

Knows the schema, the event and the rules; nothing that runs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

DEFAULT_BACKEND = "sqlite:///./var/recflow.db"


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:8080"
    path: str = "/recordings"
    public_url: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_body_bytes: int = 65536
    verify_signatures: bool = True


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

    def provider_for(self, account_sid: str) -> ProviderConfig | None:
        for provider in self.providers:
            if provider.account_sid == account_sid:
                return provider
        return None

    def rule(self, name: str) -> RuleConfig | None:
        for rule in self.rules:
            if rule.name == name:
                return rule
        return None
