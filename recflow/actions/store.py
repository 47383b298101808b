"""The `store` action: stream the recording to any fsspec URL.

The audio goes from the provider to storage in chunks, never whole in
memory. It is written under a temporary name beside the target
(`.<name>.part-<random>`) and moved into place only once the whole body
arrived and its length checked out, so a broken transfer never leaves a
partial object under the final name. The sha256 is computed on the way.

Re-running the step is cheap on storage: when an object of the same size
and sha256 is already at the target, it is left untouched and the outputs
are the same as the first time.

It stores only the event's own recording: a RecordingUrl that is not
`{api_url}/Accounts/{account}/Recordings/{sid}` is refused (see
`recflow.recording`). `recflow check` runs `check` on each store
step: a protocol fsspec does not know, or whose package is not installed,
is reported before any callback arrives.

Known shortcoming: that comparison reads the existing object back when the
sizes match, which for a large object in a remote store costs a download.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import fsspec

from recflow.context import StepContext
from recflow.errors import ActionError
from recflow.hookspecs import hookimpl
from recflow.plugins import ActionSpec
from recflow.recording import check_recording_url
from recflow.secrets import Redactor

CHUNK_SIZE = 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PROTOCOL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
# s3fs buffers one block per open file; its 50 MiB default costs far more
# memory than a recording is worth. 5 MiB is S3's smallest multipart part.
S3_BLOCK_SIZE = 5 * 1024 * 1024
# Object stores have no directories to create (s3fs would create a bucket).
_NO_DIRECTORIES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"}

SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["to"],
    "properties": {
        "to": {"type": "string", "minLength": 1, "description": "fsspec URL of the object"},
        "format": {"enum": ["wav", "mp3"], "default": "wav"},
        "storage_options": {"type": "object", "description": "passed to fsspec as is"},
    },
}


def run(params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Store the recording at `params["to"]`; outputs url, bytes, sha256, content_type."""
    to = str(params["to"])
    fmt = params.get("format") or "wav"
    check_recording_url(ctx)
    _check_target(to)
    options = dict(params.get("storage_options") or {})
    try:
        fs, path = fsspec.core.url_to_fs(to, **options)
    except (ImportError, ValueError, TypeError) as exc:
        raise ActionError(
            f"cannot use storage {_public(to)}: {_reason(exc)}", permanent=True
        ) from None
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    parent = posixpath.dirname(path)
    temp = posixpath.join(parent, f".{posixpath.basename(path)}.part-{secrets.token_hex(6)}")
    redactor = Redactor(ctx.secrets)

    try:
        if not protocols & _NO_DIRECTORIES:
            fs.makedirs(parent, exist_ok=True)
        with ctx.open_media(fmt) as media:
            size, digest = _write(fs, temp, media, protocols)
            content_type = media.content_type
        if fs.size(temp) != size:
            raise ActionError(f"stored size of {_public(to)} differs from the bytes sent")
        outputs = {
            "url": _public(to),
            "bytes": size,
            "sha256": digest,
            "content_type": content_type,
            "format": fmt,
        }
        if _same_object(fs, path, size, digest):
            _remove(fs, temp)
            ctx.logger.info(
                "store: %s already holds recording %s (%d bytes), left as is",
                redactor.mask(outputs["url"]),
                ctx.event.recording_sid,
                size,
            )
            return outputs
        fs.mv(temp, path)
    except ActionError:
        _remove(fs, temp)
        raise
    except FileNotFoundError as exc:
        _remove(fs, temp)
        raise ActionError(
            f"cannot store at {_public(to)}: no such bucket or directory ({_reason(exc)})",
            permanent=True,
        ) from None
    except PermissionError as exc:
        _remove(fs, temp)
        raise ActionError(
            f"cannot store at {_public(to)}: access denied ({_reason(exc)})", permanent=True
        ) from None
    except OSError as exc:
        _remove(fs, temp)
        raise ActionError(f"cannot store at {_public(to)}: {_reason(exc)}") from None

    ctx.logger.info(
        "store: recording %s stored at %s (%d bytes, sha256 %s)",
        ctx.event.recording_sid,
        redactor.mask(outputs["url"]),
        size,
        digest[:12],
    )
    return outputs


def _write(fs: Any, temp: str, media: Any, protocols: set[str]) -> tuple[int, str]:
    """Stream `media` into `temp`; (bytes, sha256). Abandons the upload on failure."""
    options = {"block_size": S3_BLOCK_SIZE} if protocols & {"s3", "s3a"} else {}
    handle = fs.open(temp, "wb", **options)
    sha = hashlib.sha256()
    size = 0
    try:
        for chunk in media.iter_bytes(CHUNK_SIZE):
            handle.write(chunk)
            sha.update(chunk)
            size += len(chunk)
    except BaseException:
        _abandon(handle)
        raise
    handle.close()
    return size, sha.hexdigest()


def _abandon(handle: Any) -> None:
    """Drop a half-written file without committing it where the store allows."""
    if isinstance(handle, fsspec.spec.AbstractBufferedFile):
        # Closing a buffered (object store) file uploads what it holds;
        # discard aborts the multipart upload instead.
        handle.discard()
        handle.closed = True
    else:
        handle.close()


def _same_object(fs: Any, path: str, size: int, digest: str) -> bool:
    try:
        fs.invalidate_cache(posixpath.dirname(path))
        if not fs.exists(path) or fs.size(path) != size:
            return False
        sha = hashlib.sha256()
        with fs.open(path, "rb") as existing:
            while chunk := existing.read(CHUNK_SIZE):
                sha.update(chunk)
        return sha.hexdigest() == digest
    except FileNotFoundError:
        return False


def _remove(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path)
    except OSError:
        # The temporary name is ours and hidden; a leftover is harmless.
        pass


def _check_target(to: str) -> None:
    """Refuse a rendered target that could leave the place the config named.

    Checked on everything after the scheme, since fsspec keeps `?` and `#`
    in local paths and object keys (urlsplit would hide a `..` behind
    them), and on its percent-decoded forms, since some stores decode
    keys. A `//` inside the path is how a value holding an absolute path
    shows up (`/data/{{ v }}` with `v` = `/etc/x`): refused too.
    """
    rest = to.partition("://")[2] if "://" in to else to
    forms = {rest}
    for _ in range(3):
        rest = unquote(rest)
        forms.add(rest)
    for form in forms:
        if _CONTROL.search(form):
            raise ActionError("store target contains a control character", permanent=True)
        if "\\" in form:
            raise ActionError(f"store target {_public(to)} contains a backslash", permanent=True)
        if ".." in form.split("/"):
            raise ActionError(f"store target {_public(to)} escapes its root (..)", permanent=True)
        if "//" in form.lstrip("/"):
            raise ActionError(
                f"store target {_public(to)} has an empty path segment (//)", permanent=True
            )
    path = urlsplit(to).path if "://" in to else to
    if path.endswith("/"):
        raise ActionError(f"store target {_public(to)} names a directory", permanent=True)


def check(params: Mapping[str, Any]) -> list[str]:
    """Problems with a rendered `to` that only a store attempt would otherwise find.

    Each protocol of the URL (`s3`, or each link of `simplecache::s3://...`)
    must be one fsspec knows and can load here. A protocol that a template
    wrote (it renders as a placeholder such as `<params.x>`) is not judged.
    """
    to = str(params.get("to") or "")
    links = to.split("::")
    protocols = [link.partition("://")[0] if "://" in link else link for link in links[:-1]]
    if "://" in links[-1]:
        protocols.append(links[-1].partition("://")[0])
    problems = []
    for protocol in protocols:
        if not _PROTOCOL.fullmatch(protocol):
            continue
        try:
            fsspec.get_filesystem_class(protocol)
        except ValueError:
            problems.append(
                f"to: storage protocol {protocol!r} is unknown to fsspec;"
                " known ones include file, s3, gs, az, sftp, memory"
            )
        except ImportError as exc:
            problems.append(
                f"to: storage protocol {protocol!r} needs a package that is not"
                f" installed: {_reason(exc)}"
            )
    return problems


def _reason(exc: BaseException) -> str:
    """A one-line reason for `exc`, without Python's `[Errno N]` decoration."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return " ".join(str(exc).split()) or type(exc).__name__


def _public(url: str) -> str:
    """The URL without a password, as it may appear in outputs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].split(":")[0]
    return parts._replace(netloc=f"{user}@{netloc[2]}").geturl()


@hookimpl
def register_actions(register: Any) -> None:
    register(
        ActionSpec(
            name="store",
            run=run,
            schema=SCHEMA,
            outputs=("url", "bytes", "sha256", "content_type", "format"),
            description="stream the recording to a file, S3 or any fsspec URL",
            check=check,
        )
    )
