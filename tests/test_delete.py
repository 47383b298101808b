"""The delete action against the emulator: only after a verified store, and idempotent."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from emulator import ACCOUNT, Emulator, audio, step_context

from recflow.actions import delete, store
from recflow.errors import ActionError

SID = "0a0b0c0d-1111-4222-8333-944455556666"


def stored(emulator: Emulator, tmp_path: Path, fmt: str = "wav") -> tuple[str, dict[str, Any]]:
    outputs = store.run(
        {"to": f"file://{tmp_path}/r.{fmt}", "format": fmt}, step_context(emulator, SID)
    )
    return ("store", outputs)


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_deletes_after_a_verified_store(emulator: Emulator, tmp_path: Path, fmt: str) -> None:
    emulator.add_recording(SID)
    previous = (stored(emulator, tmp_path, fmt), ("notify", {"sent": 1}))
    outputs = delete.run({}, step_context(emulator, SID, previous=previous))
    assert outputs == {"deleted": True}
    assert emulator.deleted == [SID]
    methods = [(r.method, r.path.rsplit("/", 1)[1]) for r in emulator.requests]
    assert methods[-2:] == [("HEAD", f"{SID}.{fmt}"), ("DELETE", f"{SID}.json")]
    assert emulator.requests[-1].headers["authorization"].startswith("Basic ")


def test_already_gone_is_done(emulator: Emulator) -> None:
    previous = (("store", {"bytes": len(audio(1.0)), "format": "wav"}),)
    outputs = delete.run({}, step_context(emulator, SID, previous=previous))
    assert outputs == {"deleted": False}
    assert emulator.requests[-1].method == "DELETE"


@pytest.mark.parametrize(
    ("previous", "message"),
    [
        pytest.param((), "no store step ran before it", id="no-store"),
        pytest.param((("notify", {"sent": 1}),), "no store step", id="only-notify"),
        pytest.param((("store", {"bytes": 0}),), "kept no bytes", id="empty-store"),
        pytest.param(
            (("store", {"bytes": 10, "format": "wav"}),), "provider has 16044 bytes", id="size"
        ),
    ],
)
def test_refuses_without_a_verified_store(
    emulator: Emulator, previous: tuple, message: str
) -> None:
    emulator.add_recording(SID)
    with pytest.raises(ActionError, match=message) as info:
        delete.run({}, step_context(emulator, SID, previous=previous))
    assert info.value.permanent
    assert emulator.deleted == []
    assert [r for r in emulator.requests if r.method == "DELETE"] == []


@pytest.mark.parametrize(
    ("delete_status", "permanent"),
    [
        pytest.param(500, False, id="500-retried"),
        pytest.param(503, False, id="503-retried"),
        pytest.param(401, True, id="401-permanent"),
        pytest.param(400, True, id="400-permanent"),
    ],
)
def test_provider_failures(emulator: Emulator, delete_status: int, permanent: bool) -> None:
    emulator.add_recording(SID, delete_status=delete_status)
    previous = (("store", {"bytes": len(audio(1.0)), "format": "wav"}),)
    with pytest.raises(ActionError, match=f"answered {delete_status}") as info:
        delete.run({}, step_context(emulator, SID, previous=previous))
    assert info.value.permanent is permanent


def test_wrong_token_is_permanent(emulator: Emulator) -> None:
    emulator.add_recording(SID)
    previous = (("store", {"bytes": len(audio(1.0)), "format": "wav"}),)
    ctx = step_context(emulator, SID, previous=previous, provider=emulator.provider(api_token="x"))
    with pytest.raises(ActionError, match="401") as info:
        delete.run({}, ctx)
    assert info.value.permanent
    assert emulator.deleted == []


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        pytest.param({}, True, id="empty"),
        pytest.param(None, True, id="none"),
        pytest.param({"force": True}, False, id="unknown-key"),
    ],
)
def test_schema(params: Any, valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(delete.SCHEMA).iter_errors(params))
    assert (not errors) is valid


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param("/Accounts/{account}/Calls/CA123", id="a-call"),
        pytest.param("/Accounts/{account}/Recordings/{other}", id="another-recording"),
        pytest.param("/Accounts/{account}/Recordings/{other}.wav", id="another-with-ext"),
    ],
)
def test_deletes_only_the_recording_whose_url_came_with_the_id(
    emulator: Emulator, resource: str
) -> None:
    """A signed callback pairing a URL with another recording's id deletes nothing."""
    other = "99999999-1111-4222-8333-944455556666"
    emulator.add_recording(SID)
    emulator.add_recording(other)
    url = emulator.api_url + resource.format(account=ACCOUNT, other=other)
    ctx = step_context(emulator, SID, previous=(("store", {"bytes": len(audio(1.0))}),))
    ctx = dataclasses.replace(ctx, event=dataclasses.replace(ctx.event, recording_url=url))
    with pytest.raises(ActionError, match=f"is not recording {SID} .* refused") as info:
        delete.run({}, ctx)
    assert info.value.permanent
    assert emulator.deleted == []
    assert emulator.requests == []


def test_checks_the_size_of_the_recording_it_deletes(emulator: Emulator) -> None:
    """The HEAD goes to the URL built from the id, the resource the DELETE removes."""
    emulator.add_recording(SID)
    ctx = step_context(emulator, SID, previous=(("store", {"bytes": len(audio(1.0))}),))
    url = emulator.recording_url(SID) + ".mp3"
    ctx = dataclasses.replace(ctx, event=dataclasses.replace(ctx.event, recording_url=url))
    assert delete.run({}, ctx) == {"deleted": True}
    paths = [(r.method, r.path.rsplit("/", 1)[1]) for r in emulator.requests]
    assert paths == [("HEAD", SID), ("DELETE", f"{SID}.json")]
