"""The webhook action posting to a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import socket
from typing import Any

import jsonschema
import pytest
from emulator import Emulator, hook_json, serve_app, step_context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from recflow.actions import webhook
from recflow.errors import ActionError

SID = "77777777-1111-4222-8333-944455556666"


def test_posts_event_and_step_outputs(emulator: Emulator) -> None:
    steps = {"archive": {"url": "file:///r.wav", "bytes": 10}}
    ctx = step_context(emulator, SID, steps=steps)
    params = {"url": emulator.base_url + "/hook", "headers": {"X-Tenant": "acme"}}
    assert webhook.run(params, ctx) == {"status_code": 200}
    (request,) = emulator.requests
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-tenant"] == "acme"
    assert "x-recflow-signature" not in request.headers
    document = hook_json(request)
    assert document["rule"] == "test-rule"
    assert document["steps"] == steps
    assert document["event"]["recording_sid"] == SID
    assert document["event"]["status"] == "completed"


def test_signature_is_hmac_sha256_of_the_raw_body(emulator: Emulator) -> None:
    params = {"url": emulator.base_url + "/hook", "secret": "s3cret"}
    webhook.run(params, step_context(emulator, SID))
    (request,) = emulator.requests
    expected = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-recflow-signature"] == f"sha256={expected}"


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        pytest.param(400, True, id="400"),
        pytest.param(404, True, id="404"),
        pytest.param(408, False, id="408"),
        pytest.param(429, False, id="429"),
        pytest.param(500, False, id="500"),
        pytest.param(502, False, id="502"),
    ],
)
def test_failure_statuses(emulator: Emulator, status: int, permanent: bool) -> None:
    emulator.hook_status.append(status)
    with pytest.raises(ActionError, match=f"answered {status}") as info:
        webhook.run({"url": emulator.base_url + "/hook"}, step_context(emulator, SID))
    assert info.value.permanent is permanent


@pytest.mark.parametrize("status", [201, 202, 204])
def test_any_2xx_is_success(emulator: Emulator, status: int) -> None:
    emulator.hook_status.append(status)
    outputs = webhook.run({"url": emulator.base_url + "/hook"}, step_context(emulator, SID))
    assert outputs == {"status_code": status}


def test_timeout_is_retried(emulator: Emulator) -> None:
    async def slow(request: Request) -> Response:
        await asyncio.sleep(1)
        return Response()

    app = Starlette(routes=[Route("/", slow, methods=["POST"])])
    with serve_app(app) as url, pytest.raises(ActionError, match="timed out") as info:
        webhook.run({"url": url + "/", "timeout": 0.2}, step_context(emulator, SID))
    assert not info.value.permanent


def test_refused_connection_is_retried_and_masks_secrets(emulator: Emulator) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://user:hunter22@127.0.0.1:{port}/hook?token=tok-abc123"
    ctx = step_context(emulator, SID, secrets=frozenset({"tok-abc123"}))
    with pytest.raises(ActionError, match="unreachable") as info:
        webhook.run({"url": url}, ctx)
    assert not info.value.permanent
    assert "hunter22" not in str(info.value)
    assert "tok-abc123" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        pytest.param({"url": "https://x.test/h"}, True, id="minimal"),
        pytest.param(
            {"url": "http://x", "headers": {"A": "b"}, "secret": "k", "timeout": 3}, True, id="full"
        ),
        pytest.param({}, False, id="missing-url"),
        pytest.param({"url": "ftp://x"}, False, id="not-http"),
        pytest.param({"url": "http://x", "timeout": 0}, False, id="zero-timeout"),
        pytest.param({"url": "http://x", "headers": {"A": 1}}, False, id="header-not-string"),
        pytest.param({"url": "http://x", "method": "PUT"}, False, id="unknown-key"),
    ],
)
def test_schema(params: dict[str, Any], valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(webhook.SCHEMA).iter_errors(params))
    assert (not errors) is valid
