"""The store action: real audio from the emulator to local files and to S3 (moto server)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import fsspec
import jsonschema
import pytest
from emulator import ACCOUNT, Emulator, audio, step_context

from recflow.actions import store
from recflow.errors import ActionError

SID = "5f1c0e2a-1111-4222-8333-944455556666"


def stored_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("fmt", ["wav", "mp3"])
def test_stores_to_a_local_file(emulator: Emulator, tmp_path: Path, fmt: str) -> None:
    emulator.add_recording(SID, seconds=1.0)
    target = tmp_path / "acct" / f"{SID}.{fmt}"
    params = {"to": f"file://{target}", "format": fmt}
    outputs = store.run(params, step_context(emulator, SID))
    data = audio(1.0, fmt)
    assert target.read_bytes() == data
    assert outputs == {
        "url": f"file://{target}",
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "content_type": "audio/mpeg" if fmt == "mp3" else "audio/x-wav",
        "format": fmt,
    }
    assert stored_files(tmp_path) == [f"acct/{SID}.{fmt}"]


def test_identical_object_is_not_rewritten(emulator: Emulator, tmp_path: Path) -> None:
    emulator.add_recording(SID)
    target = tmp_path / "r.wav"
    params = {"to": f"file://{target}"}
    first = store.run(params, step_context(emulator, SID))
    os.utime(target, (1_000_000, 1_000_000))
    second = store.run(params, step_context(emulator, SID))
    assert second == first
    assert target.stat().st_mtime == 1_000_000
    assert stored_files(tmp_path) == ["r.wav"]


def test_different_object_is_replaced(emulator: Emulator, tmp_path: Path) -> None:
    emulator.add_recording(SID)
    target = tmp_path / "r.wav"
    target.write_bytes(b"RIFF old and different")
    outputs = store.run({"to": f"file://{target}"}, step_context(emulator, SID))
    assert target.read_bytes() == audio(1.0)
    assert outputs["bytes"] == len(audio(1.0))


@pytest.mark.parametrize(
    ("options", "message", "permanent"),
    [
        pytest.param({"cut_after": 5000}, "broke after", False, id="cut-mid-transfer"),
        pytest.param({"not_found_first": 99}, "not ready yet", False, id="404"),
        pytest.param({"status": 401}, "API token", True, id="401"),
        pytest.param({"body": "json"}, "not audio", True, id="json-body"),
    ],
)
def test_failed_transfer_leaves_nothing(
    emulator: Emulator, tmp_path: Path, options: dict[str, Any], message: str, permanent: bool
) -> None:
    emulator.add_recording(SID, seconds=2.0, **options)
    with pytest.raises(ActionError, match=message) as info:
        store.run({"to": f"file://{tmp_path}/r.wav"}, step_context(emulator, SID))
    assert info.value.permanent is permanent
    assert stored_files(tmp_path) == []


@pytest.mark.parametrize(
    "to",
    [
        pytest.param("file:///srv/rec/../../etc/passwd", id="dotdot"),
        pytest.param("file:///srv/rec/a\x00b.wav", id="nul"),
        pytest.param("file:///srv/rec/", id="directory"),
        pytest.param("s3://bucket/x/../../y.wav", id="s3-dotdot"),
    ],
)
def test_refuses_paths_escaping_the_root(emulator: Emulator, to: str) -> None:
    emulator.add_recording(SID)
    with pytest.raises(ActionError) as info:
        store.run({"to": to}, step_context(emulator, SID))
    assert info.value.permanent
    assert emulator.requests == []


def test_s3_upload_and_identical_reupload(emulator: Emulator, moto_s3: dict[str, Any]) -> None:
    emulator.add_recording(SID, seconds=2.0)
    fs = fsspec.filesystem("s3", **moto_s3)
    fs.mkdir("recordings-ok")
    params = {"to": f"s3://recordings-ok/acct/{SID}.wav", "storage_options": moto_s3}
    first = store.run(params, step_context(emulator, SID))
    assert fs.cat(f"recordings-ok/acct/{SID}.wav") == audio(2.0)
    assert first["sha256"] == hashlib.sha256(audio(2.0)).hexdigest()
    second = store.run(params, step_context(emulator, SID))
    assert second == first
    fs.invalidate_cache()
    assert fs.find("recordings-ok") == [f"recordings-ok/acct/{SID}.wav"]


def test_s3_cut_transfer_leaves_no_object(emulator: Emulator, moto_s3: dict[str, Any]) -> None:
    emulator.add_recording(SID, seconds=2.0, cut_after=4000)
    fs = fsspec.filesystem("s3", **moto_s3)
    fs.mkdir("recordings-cut")
    params = {"to": f"s3://recordings-cut/{SID}.wav", "storage_options": moto_s3}
    with pytest.raises(ActionError, match="broke after"):
        store.run(params, step_context(emulator, SID))
    fs.invalidate_cache()
    assert fs.find("recordings-cut") == []


def test_s3_missing_bucket_is_a_clear_permanent_error(
    emulator: Emulator, moto_s3: dict[str, Any]
) -> None:
    emulator.add_recording(SID)
    params = {"to": "s3://no-such-bucket/r.wav", "storage_options": moto_s3}
    with pytest.raises(ActionError, match="no such bucket") as info:
        store.run(params, step_context(emulator, SID))
    assert info.value.permanent
    assert "testing-secret" not in str(info.value)


@pytest.mark.parametrize(
    ("params", "valid"),
    [
        pytest.param({"to": "file:///x.wav"}, True, id="minimal"),
        pytest.param({"to": "s3://b/k", "format": "mp3", "storage_options": {}}, True, id="full"),
        pytest.param({}, False, id="missing-to"),
        pytest.param({"to": "file:///x", "format": "ogg"}, False, id="bad-format"),
        pytest.param({"to": "file:///x", "bucket": "b"}, False, id="unknown-key"),
        pytest.param({"to": 5}, False, id="to-not-string"),
    ],
)
def test_schema(params: dict[str, Any], valid: bool) -> None:
    errors = list(jsonschema.Draft202012Validator(store.SCHEMA).iter_errors(params))
    assert (not errors) is valid


def _event_url(emulator: Emulator, url: str) -> Any:
    """A store context whose callback carried RecordingUrl `url` (sid SID)."""
    ctx = step_context(emulator, SID)
    return dataclasses.replace(ctx, event=dataclasses.replace(ctx.event, recording_url=url))


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param("/Accounts/{account}/Calls/CA123", id="a-call"),
        pytest.param("/Accounts/{account}/Recordings", id="the-list"),
        pytest.param("/Accounts/{account}/Recordings/{sid}/Transcriptions", id="below"),
        pytest.param("/Accounts/{account}/Recordings/OTHER-{sid}", id="another-recording"),
        pytest.param("/Accounts/other-account/Recordings/{sid}", id="another-account"),
        pytest.param("/../Accounts/{account}/Recordings/{sid}", id="dot-dot"),
    ],
)
def test_refuses_a_recording_url_that_is_not_this_recording(
    emulator: Emulator, tmp_path: Path, resource: str
) -> None:
    emulator.add_recording(SID)
    url = emulator.api_url + resource.format(account=ACCOUNT, sid=SID)
    with pytest.raises(ActionError, match="is not recording .* refused") as info:
        store.run({"to": f"file://{tmp_path}/r.wav"}, _event_url(emulator, url))
    assert info.value.permanent
    assert emulator.requests == [], "nothing is fetched with the account's credentials"
    assert stored_files(tmp_path) == []


@pytest.mark.parametrize("suffix", ["", ".wav", ".mp3"])
def test_accepts_the_recording_url_bare_or_with_an_extension(
    emulator: Emulator, tmp_path: Path, suffix: str
) -> None:
    emulator.add_recording(SID)
    ctx = _event_url(emulator, emulator.recording_url(SID) + suffix)
    outputs = store.run({"to": f"file://{tmp_path}/r.wav"}, ctx)
    assert outputs["bytes"] == len(audio(1.0))


def test_errors_are_one_clear_line(emulator: Emulator, tmp_path: Path) -> None:
    emulator.add_recording(SID)
    (tmp_path / "afile").write_text("not a directory")
    with pytest.raises(ActionError) as info:
        store.run({"to": f"file://{tmp_path}/afile/r.wav"}, step_context(emulator, SID))
    assert str(info.value).startswith(f"cannot store at file://{tmp_path}/afile/r.wav: ")
    assert "Errno" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("to", "problem"),
    [
        pytest.param("file:///srv/r.wav", None, id="file"),
        pytest.param("/srv/r.wav", None, id="plain-path"),
        pytest.param("s3://bucket/r.wav", None, id="s3"),
        pytest.param("memory://r.wav", None, id="memory"),
        pytest.param("simplecache::s3://bucket/r.wav", None, id="chained"),
        pytest.param("<params.proto>://bucket/r.wav", None, id="templated-protocol"),
        pytest.param("nosuchproto://x/r.wav", "'nosuchproto' is unknown to fsspec", id="unknown"),
        pytest.param("simplecache::nope://b/r.wav", "'nope' is unknown to fsspec", id="chain-bad"),
        pytest.param("gs://bucket/r.wav", "'gs' needs a package that is not installed", id="gs"),
    ],
)
def test_check_finds_storage_protocols_that_cannot_work(to: str, problem: str | None) -> None:
    problems = store.check({"to": to})
    if problem is None:
        assert problems == []
    else:
        (found,) = problems
        assert problem in found
