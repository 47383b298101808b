"""The `webhook` action: post the event and the rule's step outputs as JSON.

The body is `{"event": ..., "rule": ..., "steps": {id: outputs}}`. With a
`secret`, the receiver can check it came from us: the header
`X-Recflow-Signature: sha256=<hex HMAC-SHA256 of the raw body>`.

A 2xx is success. A 4xx is the receiver refusing this request, which
sending it again will not change, so it is permanent, except 408 and 429,
which ask to come back later; a 5xx, a timeout or a refused connection is
retried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import httpx

from recflow import http_client
from recflow.context import StepContext
from recflow.errors import ActionError
from recflow.hookspecs import hookimpl
from recflow.plugins import ActionSpec
from recflow.secrets import Redactor

SIGNATURE_HEADER = "X-Recflow-Signature"

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url"],
    "properties": {
        "url": {"type": "string", "pattern": "^https?://"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "secret": {"type": "string", "minLength": 1},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 300, "default": 10},
    },
}


def sign(body: bytes, secret: str) -> str:
    """The value of the signature header for `body`: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def run(params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Post the event to `params["url"]`; outputs `status_code`."""
    url = str(params["url"])
    document = {
        "event": ctx.event.to_dict(),
        "rule": ctx.rule,
        "steps": {name: dict(outputs) for name, outputs in ctx.steps.items()},
    }
    body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "recflow"}
    headers.update(params.get("headers") or {})
    if params.get("secret"):
        headers[SIGNATURE_HEADER] = sign(body, params["secret"])
    timeout = float(params.get("timeout") or 10)
    where = Redactor(ctx.secrets).mask(url)

    try:
        response = http_client.client().post(url, content=body, headers=headers, timeout=timeout)
    except httpx.TimeoutException:
        raise ActionError(f"webhook {where} timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise ActionError(f"webhook {where} unreachable: {type(exc).__name__}") from None

    status = response.status_code
    if response.is_success:
        ctx.logger.info(
            "webhook: event of recording %s posted to %s: %d",
            ctx.event.recording_sid,
            where,
            status,
        )
        return {"status_code": status}
    permanent = 400 <= status < 500 and status not in (408, 429)
    raise ActionError(f"webhook {where} answered {status}", permanent=permanent)


@hookimpl
def register_actions(register: Any) -> None:
    register(
        ActionSpec(
            name="webhook",
            run=run,
            schema=SCHEMA,
            outputs=("status_code",),
            description="post the event and step outputs as JSON to a URL",
        )
    )
