"""The JSON Schema (Draft 2020-12) of `config.yaml`, before any action's part.

The loader validates the whole file against `CONFIG_SCHEMA`, then each
step's `with:` against the schema its action registered. `when` is only
checked to be a mapping here: `recflow.rules` compiles it and reports its
mistakes with the accepted fields and operators, which a schema error
could not list as plainly. `description` keywords double as the "what is
accepted" half of error messages.
"""

from __future__ import annotations

from typing import Any

_NON_EMPTY = {"type": "string", "minLength": 1}

_SERVER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        # The loader checks HOST:PORT itself (recflow.config.listen_problem),
        # to say which part is wrong.
        "listen": {"type": "string"},
        "path": {
            "type": "string",
            "pattern": r"^/\S*$",
            "description": "a path starting with /, e.g. /recordings",
        },
        "public_url": {
            "type": "string",
            "pattern": r"^https?://[^\s/]+(/\S*)?$",
            "description": "an http(s) URL, e.g. https://hooks.example.com/recordings",
        },
        "trusted_proxies": {"type": "array", "items": _NON_EMPTY},
        "max_body_bytes": {"type": "integer", "minimum": 1024},
        "read_timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
        "verify_signatures": {"type": "boolean"},
    },
}

_PROVIDER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "account_sid", "api_token"],
    "properties": {
        "name": _NON_EMPTY,
        "kind": {"enum": ["signalwire", "twilio"]},
        "space": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9.\-]+(:[0-9]+)?$",
            "description": "a space host such as example.signalwire.com",
        },
        "account_sid": _NON_EMPTY,
        "api_token": _NON_EMPTY,
        "signing_key": {
            "type": ["string", "array"],
            "minLength": 1,
            "minItems": 1,
            "items": _NON_EMPTY,
        },
        "api_url": {
            "type": "string",
            "pattern": r"^https?://[^\s/]+(/\S*)?$",
            "description": "an http(s) URL of the provider's API",
        },
    },
}

_STEP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["action"],
    "properties": {
        "action": _NON_EMPTY,
        "id": {
            "type": "string",
            "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$",
            "description": "a name of letters, digits and _ (templates read steps.<id>)",
        },
        "with": {"type": "object"},
        "retry": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "attempts": {"type": "integer", "minimum": 1, "maximum": 100},
                "backoff": {"type": "number", "minimum": 0, "maximum": 86400},
            },
        },
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 86400},
    },
}

_RULE: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "steps"],
    "properties": {
        "name": _NON_EMPTY,
        "when": {"type": "object"},
        "steps": {"type": "array", "minItems": 1, "items": _STEP},
        "stop": {"type": "boolean"},
    },
}

CONFIG_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "recflow config.yaml",
    "type": "object",
    "additionalProperties": False,
    # x-... keys hold YAML anchors for reuse and are otherwise ignored.
    "patternProperties": {"^x-": {}},
    "required": ["providers"],
    "properties": {
        "server": _SERVER,
        "providers": {"type": "array", "minItems": 1, "items": _PROVIDER},
        "backend": {
            "type": "string",
            "pattern": r"^(sqlite:///\S+|rediss?://\S+)$",
            "description": "sqlite:///PATH or redis://HOST:PORT/DB",
        },
        "workers": {"type": "integer", "minimum": 1, "maximum": 256},
        "rules": {"type": "array", "items": _RULE},
    },
}
