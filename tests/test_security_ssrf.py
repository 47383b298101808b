"""Server-side request forgery: recflow fetches only what the config allows.

A callback names the media URL, so a forged or hostile one could point
recflow (and the provider's credentials) anywhere. These tests run the
real fetch code against the emulator (the provider) and an "outsider"
server that records every request it gets: media outside the provider's
origin is never fetched, redirects off the origin to private, loopback
or link-local addresses are refused, credentials never leave the origin,
and webhook and notify targets come from the config, never a callback.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from emulator import ACCOUNT, Emulator, audio, serve_app, step_context
from starlette.responses import Response

from recflow import media, provider
from recflow.actions import delete, store
from recflow.errors import ActionError
from recflow.event import Event
from recflow.templates import compile_params, render_params

SID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@dataclasses.dataclass
class Outsider:
    """A server that is not the provider; it serves audio to anyone who asks.

    A bare ASGI app, so `seen` holds each request's raw path as it came.
    """

    base: str = ""
    seen: list[tuple[str, str, str | None]] = dataclasses.field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        headers = dict(scope["headers"])
        authorization = headers.get(b"authorization")
        self.seen.append(
            (
                scope["method"],
                scope["raw_path"].decode(),
                authorization.decode() if authorization else None,
            )
        )
        await Response(audio(1.0), media_type="audio/x-wav")(scope, receive, send)


@pytest.fixture(scope="module")
def outsider_server() -> Iterator[Outsider]:
    outsider = Outsider()
    with serve_app(outsider) as url:
        outsider.base = url
        yield outsider


@pytest.fixture
def outsider(outsider_server: Outsider) -> Iterator[Outsider]:
    outsider_server.seen.clear()
    yield outsider_server
    outsider_server.seen.clear()


def _fetch(emulator: Emulator, recording_url: str, **options: bool) -> bytes:
    with media.open_media(recording_url, emulator.provider(), **options) as opened:
        return b"".join(opened.iter_bytes())


def _outside_urls(emulator: Emulator, outsider: Outsider) -> list[tuple[str, str]]:
    own = emulator.base_url
    port = own.rsplit(":", 1)[1]
    path = f"/api/laml/2010-04-01/Accounts/{ACCOUNT}/Recordings/{SID}"
    return [
        ("other-port", outsider.base + path),
        ("localhost-name", f"http://localhost:{port}{path}"),
        ("other-scheme", f"https://127.0.0.1:{port}{path}"),
        ("link-local-metadata", "http://169.254.169.254/latest/meta-data/"),
        ("userinfo-trick", f"http://127.0.0.1:{port}@{outsider.base[7:]}{path}"),
        ("credentials-in-url", f"http://{ACCOUNT}:x@127.0.0.1:{port}{path}"),
        ("file-scheme", "file:///etc/passwd"),
        ("no-scheme", f"127.0.0.1:{port}{path}"),
        ("host-suffix", f"http://127.0.0.1.nip.io:{port}{path}"),
        ("ipv6-loopback", f"http://[::1]:{port}{path}"),
    ]


def test_media_outside_the_provider_origin_is_never_fetched(
    emulator: Emulator, outsider: Outsider
) -> None:
    emulator.add_recording(SID)
    refused = []
    for name, url in _outside_urls(emulator, outsider):
        with pytest.raises(ActionError) as caught:
            _fetch(emulator, url, allow_private_redirects=True)
        assert caught.value.permanent, name
        refused.append(name)

    assert len(refused) == len(_outside_urls(emulator, outsider))
    assert outsider.seen == []
    assert emulator.media_requests(SID) == []


def test_store_of_an_outside_media_url_writes_nothing(
    emulator: Emulator, outsider: Outsider, tmp_path: object
) -> None:
    context = step_context(emulator, SID)
    event = dataclasses.replace(context.event, recording_url=outsider.base + "/audio/x")
    context = dataclasses.replace(context, event=event)

    with pytest.raises(ActionError) as caught:
        store.run({"to": f"file://{tmp_path}/x.wav"}, context)

    assert caught.value.permanent
    assert outsider.seen == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("{outsider}/stolen", id="loopback-other-port"),
        pytest.param("http://localhost:{outsider_port}/stolen", id="localhost-name"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local-metadata"),
        pytest.param("http://10.1.2.3/internal", id="private-10"),
        pytest.param("http://192.168.0.1/router", id="private-192"),
        pytest.param("http://[::1]:{outsider_port}/stolen", id="ipv6-loopback"),
        pytest.param("http://[fe80::1]/x", id="ipv6-link-local"),
        pytest.param("http://0.0.0.0:{outsider_port}/stolen", id="unspecified"),
        pytest.param("file:///etc/passwd", id="file-scheme"),
        pytest.param("gopher://127.0.0.1:25/x", id="gopher-scheme"),
    ],
)
def test_redirect_off_the_origin_to_a_private_address_is_refused(
    emulator: Emulator, outsider: Outsider, target: str
) -> None:
    redirect = target.format(outsider=outsider.base, outsider_port=outsider.base.rsplit(":")[-1])
    emulator.add_recording(SID, redirect_to=redirect)

    with pytest.raises(ActionError) as caught:
        _fetch(emulator, emulator.recording_url(SID))

    assert caught.value.permanent
    assert outsider.seen == []


def test_followed_redirect_to_another_origin_gets_no_credentials(
    emulator: Emulator, outsider: Outsider
) -> None:
    """Self-hosted set-ups may allow private redirects; credentials still stay home."""
    emulator.add_recording(SID, redirect_to=outsider.base + "/short-lived/abc")

    body = _fetch(emulator, emulator.recording_url(SID), allow_private_redirects=True)

    assert body == audio(1.0)
    [first] = emulator.media_requests(SID)
    assert first.headers["authorization"].startswith("Basic ")
    assert outsider.seen == [("GET", "/short-lived/abc", None)]


def test_same_origin_media_is_fetched_with_credentials(emulator: Emulator) -> None:
    emulator.add_recording(SID)

    assert _fetch(emulator, emulator.recording_url(SID)) == audio(1.0)
    [request] = emulator.media_requests(SID)
    assert request.headers["authorization"].startswith("Basic ")


@pytest.mark.parametrize(
    "sid",
    [
        pytest.param("../../Calls/CA1", id="dot-dot"),
        pytest.param("x/../../Messages", id="slash-inside"),
        pytest.param("..", id="bare-dot-dot"),
    ],
)
def test_delete_keeps_a_hostile_recording_sid_in_one_path_segment(
    emulator: Emulator, outsider: Outsider, sid: str
) -> None:
    api = emulator.provider(api_url=outsider.base + "/api")
    provider.delete_recording(api, sid)

    [(method, raw_path, _)] = outsider.seen
    assert method == "DELETE"
    prefix = f"/api/Accounts/{ACCOUNT}/Recordings/"
    assert raw_path.startswith(prefix)
    assert "/" not in raw_path.removeprefix(prefix)


HOSTILE_PARAMS = {
    "url": "http://169.254.169.254/latest",
    "Url": "http://127.0.0.1:6379/",
    "to": "mailto://attacker@evil.example",
    "Target": "json://evil.example/collect",
    "RecordingUrl": "http://10.0.0.1/x",
}


@pytest.mark.parametrize(
    ("with_", "field", "expected"),
    [
        pytest.param(
            {"url": "https://hooks.example.com/in"},
            "url",
            "https://hooks.example.com/in",
            id="webhook-url",
        ),
        pytest.param(
            {"to": ["mailto://ops@example.com"], "body": "{{ event.params.Target }}"},
            "to",
            ["mailto://ops@example.com"],
            id="notify-to",
        ),
        pytest.param(
            {"to": "file:///srv/{{ event.recording_sid }}.wav"},
            "to",
            "file:///srv/RE1.wav",
            id="store-to",
        ),
    ],
)
def test_targets_come_from_the_config_not_the_callback(
    with_: dict[str, object], field: str, expected: object
) -> None:
    """Callback values render as data; a target holds callback text only if templated so."""
    event = Event(
        account_sid=ACCOUNT,
        call_sid="c",
        recording_sid="RE1",
        recording_url="http://10.0.0.1/x",
        status="completed",
        params={**HOSTILE_PARAMS, "Tmpl": "{{ 7 * 7 }}"},
    )
    rendered = render_params(
        compile_params({**with_, "title": "{{ event.params.Tmpl }}"}, "with"),
        {"event": event, "rule": {"name": "r"}, "steps": {}},
    )

    assert rendered[field] == expected
    # A callback value that looks like a template stays text.
    assert rendered["title"] == "{{ 7 * 7 }}"


def test_delete_schema_takes_no_url() -> None:
    """`delete` reaches the provider's API from the config, never a URL in `with:`."""
    assert delete.SCHEMA["properties"] == {}
    assert delete.SCHEMA["additionalProperties"] is False
