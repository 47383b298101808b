"""recflow.media against the provider emulator: what is fetched, from where, and how it fails."""

from __future__ import annotations

import dataclasses

import pytest
from emulator import Emulator, audio, running_emulator, step_context

from recflow.errors import ActionError
from recflow.media import head_length, media_url, open_media

SID = "7e2d1c4b-90ad-4998-b792-e984a1b2c3d4"


def fetch(emulator: Emulator, fmt: str | None = "wav", **kwargs: object) -> bytes:
    with open_media(emulator.recording_url(SID), emulator.provider(), fmt, **kwargs) as media:
        return b"".join(media.iter_bytes(4096))


@pytest.mark.parametrize(
    ("url", "fmt", "expected"),
    [
        pytest.param("https://x.test/R/abc", "wav", "https://x.test/R/abc.wav", id="wav"),
        pytest.param("https://x.test/R/abc", "mp3", "https://x.test/R/abc.mp3", id="mp3"),
        pytest.param("https://x.test/R/abc", None, "https://x.test/R/abc", id="as-sent"),
        pytest.param("https://x.test/R/abc.wav", "mp3", "https://x.test/R/abc.mp3", id="swap"),
        pytest.param("https://x.test/R/abc?x=1", "wav", "https://x.test/R/abc.wav?x=1", id="query"),
    ],
)
def test_media_url(url: str, fmt: str | None, expected: str) -> None:
    assert media_url(url, fmt) == expected


@pytest.mark.parametrize("fmt", ["wav", "mp3", None])
def test_fetches_real_audio_with_basic_auth(emulator: Emulator, fmt: str | None) -> None:
    emulator.add_recording(SID, seconds=1.0)
    with open_media(emulator.recording_url(SID), emulator.provider(), fmt) as media:
        data = b"".join(media.iter_bytes(1000))
        assert media.content_type == ("audio/mpeg" if fmt == "mp3" else "audio/x-wav")
        assert media.length == len(data)
    assert data == audio(1.0, fmt or "wav")
    assert emulator.requests[0].headers["authorization"].startswith("Basic ")


def test_not_ready_then_ready(emulator: Emulator) -> None:
    emulator.add_recording(SID, not_found_first=2)
    for _ in range(2):
        with pytest.raises(ActionError, match="not ready") as info:
            fetch(emulator)
        assert not info.value.permanent
    assert fetch(emulator) == audio(1.0)


@pytest.mark.parametrize(
    ("options", "message", "permanent"),
    [
        pytest.param({"not_found_first": 99}, "not ready yet", False, id="404-forever"),
        pytest.param({"status": 500}, "provider \\(500\\)", False, id="500"),
        pytest.param({"status": 503}, "provider \\(503\\)", False, id="503"),
        pytest.param({"status": 401}, "account id and API token", True, id="401"),
        pytest.param({"status": 403}, "account id and API token", True, id="403"),
        pytest.param({"body": "json"}, "application/json, not audio", True, id="json"),
        pytest.param({"body": "xml"}, "application/xml, not audio", True, id="xml"),
        pytest.param({"cut_after": 3000}, "broke after 3000 bytes", False, id="cut"),
    ],
)
def test_failures(emulator: Emulator, options: dict, message: str, permanent: bool) -> None:
    emulator.add_recording(SID, **options)
    with pytest.raises(ActionError, match=message) as info:
        fetch(emulator)
    assert info.value.permanent is permanent


def test_wrong_token_is_permanent(emulator: Emulator) -> None:
    emulator.add_recording(SID)
    with (
        pytest.raises(ActionError, match="401") as info,
        open_media(emulator.recording_url(SID), emulator.provider(api_token="nope"), "wav"),
    ):
        pass
    assert info.value.permanent


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://169.254.169.254/latest/meta-data", id="metadata-service"),
        pytest.param("https://example.signalwire.com/api/laml/x", id="other-host"),
        pytest.param("file:///etc/passwd", id="file-scheme"),
    ],
)
def test_refuses_urls_off_the_provider_origin(emulator: Emulator, url: str) -> None:
    with pytest.raises(ActionError, match="not on provider emulated") as info:
        open_media(url, emulator.provider(), "wav").__enter__()
    assert info.value.permanent
    assert emulator.requests == []


def test_refuses_credentials_in_the_url(emulator: Emulator) -> None:
    url = emulator.recording_url(SID).replace("http://", "http://a:b@")
    with pytest.raises(ActionError, match="credentials"):
        open_media(url, emulator.provider(), "wav").__enter__()


def test_redirect_within_origin_keeps_auth(emulator: Emulator) -> None:
    emulator.add_recording(SID, redirect_to=emulator.base_url + "/files/x.wav")
    assert fetch(emulator) == audio(1.0)
    assert emulator.requests[-1].path == "/files/x.wav"
    assert emulator.requests[-1].headers["authorization"].startswith("Basic ")


def test_redirect_to_private_address_elsewhere_is_refused(emulator: Emulator) -> None:
    with running_emulator() as other:
        emulator.add_recording(SID, redirect_to=other.base_url + "/files/x.wav")
        with pytest.raises(ActionError, match="non-public address 127.0.0.1") as info:
            fetch(emulator)
        assert info.value.permanent
        assert other.requests == []


def test_redirect_elsewhere_gets_no_credentials(emulator: Emulator) -> None:
    with running_emulator() as other:
        emulator.add_recording(SID, redirect_to=other.base_url + "/files/x.wav")
        assert fetch(emulator, allow_private_redirects=True) == audio(1.0)
        assert "authorization" in emulator.requests[0].headers
        assert [r.path for r in other.requests] == ["/files/x.wav"]
        assert "authorization" not in other.requests[0].headers


def test_head_length(emulator: Emulator) -> None:
    emulator.add_recording(SID)
    length = head_length(emulator.recording_url(SID), emulator.provider(), "wav")
    assert length == len(audio(1.0))
    assert emulator.requests[0].method == "HEAD"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/Calls/CA1", id="another-resource"),
        pytest.param("/Recordings/RE-other", id="another-recording"),
        pytest.param("/Recordings.json", id="the-list"),
    ],
)
def test_the_context_opens_only_the_events_own_recording(emulator: Emulator, path: str) -> None:
    """Plugins fetch through `ctx.open_media`: it refuses what `store` refuses."""
    emulator.add_recording("RE-mine")
    ctx = step_context(emulator, "RE-mine")
    account_url = emulator.recording_url("RE-mine").rsplit("/Recordings/", 1)[0]
    event = dataclasses.replace(ctx.event, recording_url=account_url + path)
    ctx = dataclasses.replace(ctx, event=event)

    with pytest.raises(ActionError) as raised, ctx.open_media("wav"):
        pass

    assert raised.value.permanent
    assert "is not recording RE-mine" in str(raised.value)
    assert not [r for r in emulator.requests if r.method == "GET"]
