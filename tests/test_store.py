"""The store action: real audio from the emulator to local files and to S3 (moto server)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import fsspec
import jsonschema
import pytest
from emulator import Emulator, audio, step_context

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
