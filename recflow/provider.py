"""The provider's REST API, as far as recflow calls it: delete a recording, send an SMS.

Both SignalWire and Twilio speak the same compatibility API under
`{api_url}/Accounts/{account}/...` with Basic auth (account id, API
token), so one small client serves both. Answers are mapped to
`ActionError`s the worker understands: 401/403 are permanent (waiting will
not fix credentials), 5xx, 408, 429 and network trouble are retried.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from recflow import http_client
from recflow.config import ProviderConfig
from recflow.errors import ActionError

logger = logging.getLogger(__name__)

TIMEOUT = httpx.Timeout(15.0, connect=10.0)


def default_api_url(kind: str, space: str | None) -> str:
    """The compatibility API's base URL for a provider kind."""
    if kind == "twilio":
        return "https://api.twilio.com/2010-04-01"
    return f"https://{space}/api/laml/2010-04-01"


def delete_recording(provider: ProviderConfig, recording_sid: str) -> bool:
    """Delete a recording at the provider: True if deleted, False if it was already gone."""
    # safe="": a sid holding "/" or "../" must stay one path segment.
    url = _account_url(
        provider.api_url, provider.account_sid, f"Recordings/{quote(recording_sid, safe='')}"
    )
    response = _call("DELETE", url, (provider.account_sid, provider.api_token))
    if response.status_code in (200, 202, 204):
        return True
    if response.status_code == 404:
        return False
    raise _status_error("delete recording", response)


def send_message(
    api_url: str,
    account_sid: str,
    token: str,
    *,
    sender: str,
    to: str,
    body: str,
    timeout: float | httpx.Timeout = TIMEOUT,
) -> dict[str, Any]:
    """Send one SMS through `Messages.json`; the provider's JSON answer."""
    url = _account_url(api_url, account_sid, "Messages")
    data = {"From": sender, "To": to, "Body": body}
    response = _call("POST", url, (account_sid, token), data=data, timeout=timeout)
    if response.status_code not in (200, 201):
        raise _status_error("send message", response)
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    return answer if isinstance(answer, dict) else {}


def _account_url(api_url: str, account_sid: str, resource: str) -> str:
    return f"{api_url.rstrip('/')}/Accounts/{quote(account_sid, safe='')}/{resource}.json"


def _call(
    method: str,
    url: str,
    auth: tuple[str, str],
    *,
    data: dict[str, str] | None = None,
    timeout: float | httpx.Timeout = TIMEOUT,
) -> httpx.Response:
    try:
        return http_client.client().request(method, url, auth=auth, data=data, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ActionError(f"provider API unreachable: {type(exc).__name__}: {exc}") from None


def _status_error(what: str, response: httpx.Response) -> ActionError:
    status = response.status_code
    detail = _provider_message(response)
    message = f"{what}: provider answered {status}{': ' + detail if detail else ''}"
    if status in (401, 403):
        return ActionError(message + " (check account id and API token)", permanent=True)
    if status >= 500 or status in (408, 429):
        return ActionError(message)
    return ActionError(message, permanent=True)


def _provider_message(response: httpx.Response) -> str:
    """The `message` of the provider's JSON error document, if it sent one."""
    try:
        document = response.json()
    except ValueError:
        return ""
    message = document.get("message") if isinstance(document, dict) else None
    return str(message)[:200] if message else ""
