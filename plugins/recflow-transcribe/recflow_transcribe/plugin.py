"""The `transcribe` action: the recording's words, offline, for later steps.

A rule step such as::

    - id: transcript
      action: transcribe
      with:
        to: "file:///var/recordings/{{ event.recording_sid }}.txt"

fetches the recording as WAV (or reads `audio:`, e.g. the URL an earlier
`store` step wrote, to avoid a second download), converts it to 16 kHz mono
(see `recflow_transcribe.audio`), runs the engine (pocketsphinx unless
`engine:` names another, see `recflow_transcribe.engines`) and outputs
`text`, `words` (each with `start` and `end` in seconds) and `engine`.
With `to:`, the transcript is also written there (JSON when the name ends
in `.json`, else the text) and `url` is output too.

The audio goes through a temporary file, not memory, so a long call costs
disk rather than RAM.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import fsspec

from recflow import ActionError, hookimpl
from recflow.context import StepContext
from recflow.plugins import ActionSpec
from recflow_transcribe import audio
from recflow_transcribe.engines import DEFAULT_ENGINE, engine_names, load_engine

CHUNK_SIZE = 1024 * 1024


def schema() -> dict[str, Any]:
    """The JSON Schema of the step's `with:`; engines are those installed now."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "engine": {"enum": engine_names(), "default": DEFAULT_ENGINE},
            "engine_options": {
                "type": "object",
                "description": "keyword arguments for the engine (pocketsphinx: hmm, lm, dict)",
            },
            "audio": {
                "type": "string",
                "minLength": 1,
                "description": "fsspec URL of the audio; default: fetch the recording",
            },
            "to": {
                "type": "string",
                "minLength": 1,
                "description": "fsspec URL to write the transcript to (.json: with words)",
            },
            "storage_options": {
                "type": "object",
                "description": "passed to fsspec for `audio` and `to`",
            },
        },
    }


def transcribe(params: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
    """Transcribe the recording; outputs text, words, engine, and url with `to`."""
    name = params.get("engine") or DEFAULT_ENGINE
    engine = load_engine(name, dict(params.get("engine_options") or {}))
    options = dict(params.get("storage_options") or {})
    with tempfile.TemporaryDirectory(prefix="recflow-transcribe-") as tmp:
        path = os.path.join(tmp, "audio")
        _fetch(params.get("audio"), options, ctx, path)
        transcript = engine.transcribe(audio.pcm16k(path), audio.RATE)
    outputs: dict[str, Any] = {
        "text": transcript["text"],
        "words": list(transcript["words"]),
        "engine": name,
    }
    if params.get("to"):
        outputs["url"] = _write(str(params["to"]), options, outputs, ctx)
    ctx.logger.info(
        "transcribed recording %s with %s: %d words",
        ctx.event.recording_sid,
        name,
        len(outputs["words"]),
    )
    return outputs


def _fetch(source: str | None, options: dict[str, Any], ctx: StepContext, path: str) -> None:
    """Copy the audio to `path`: from `source` if given, else from the provider."""
    with open(path, "wb") as out:
        if source is None:
            with ctx.open_media("wav") as media:
                for chunk in media.iter_bytes():
                    out.write(chunk)
            return
        try:
            with fsspec.open(source, "rb", **options) as stream:
                shutil.copyfileobj(stream, out, CHUNK_SIZE)
        except FileNotFoundError:
            # An earlier step's object that is not there will not appear by waiting.
            raise ActionError(f"audio not found: {_public(source)}", permanent=True) from None
        except OSError as exc:
            raise ActionError(f"cannot read audio {_public(source)}: {exc}") from None


def _write(to: str, options: dict[str, Any], outputs: dict[str, Any], ctx: StepContext) -> str:
    if to.lower().endswith(".json"):
        document = dict(outputs, recording_sid=ctx.event.recording_sid)
        body = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    else:
        body = outputs["text"] + "\n"
    try:
        fs, path = fsspec.core.url_to_fs(to, **options)
        parent = path.rsplit("/", 1)[0]
        protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
        if protocols & {"file", "local"}:  # object stores have no directories to make
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "w", encoding="utf-8") as out:
            out.write(body)
    except (ImportError, ValueError, TypeError) as exc:
        raise ActionError(
            f"cannot write transcript to {_public(to)}: {exc}", permanent=True
        ) from None
    except OSError as exc:
        raise ActionError(f"cannot write transcript to {_public(to)}: {exc}") from None
    return _public(to)


def _public(url: str) -> str:
    """`url` without credentials: it goes into outputs, the journal and logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


@hookimpl
def register_actions(register: Any) -> None:
    register(
        ActionSpec(
            name="transcribe",
            run=transcribe,
            schema=schema(),
            outputs=("text", "words", "engine", "url"),
            description="transcribe the recording offline (pocketsphinx, or another engine)",
        )
    )
