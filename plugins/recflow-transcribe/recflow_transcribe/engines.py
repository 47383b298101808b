"""Speech-to-text engines, and how another distribution adds one.

An engine is a factory, called with the step's `engine_options:` as
keyword arguments, that returns an object with::

    def transcribe(self, pcm: Iterable[bytes], rate: int) -> Transcript

`pcm` yields signed 16-bit little-endian mono audio at `rate` Hz (always
16000 today). The transcript is a dict with `text` (str) and `words`, a
list of `{"word": str, "start": float, "end": float}` in seconds.

pocketsphinx is built in. Another engine registers under a name, either in
the entry-point group `recflow_transcribe.engines` of its distribution::

    [project.entry-points."recflow_transcribe.engines"]
    whisper = "recflow_whisper:WhisperEngine"

or, when embedding, with `register_engine("whisper", WhisperEngine)`.
A step then picks it with `engine: whisper`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from importlib import metadata
from typing import Any, Protocol, TypedDict

from recflow import ActionError

ENTRY_POINT_GROUP = "recflow_transcribe.engines"
DEFAULT_ENGINE = "pocketsphinx"

_BUILTIN = {"pocketsphinx": "recflow_transcribe.pocketsphinx_engine:PocketsphinxEngine"}
_registered: dict[str, Callable[..., Engine]] = {}


class Word(TypedDict):
    word: str
    start: float
    end: float


class Transcript(TypedDict):
    text: str
    words: list[Word]


class Engine(Protocol):
    """What a factory returns: something that turns PCM into a transcript."""

    def transcribe(self, pcm: Iterable[bytes], rate: int) -> Transcript: ...


def register_engine(name: str, factory: Callable[..., Engine]) -> None:
    """Make `factory` available as `engine: name`, in this process only."""
    _registered[name] = factory


def engine_names() -> list[str]:
    """Every engine a step may name, without importing any of them."""
    names = set(_BUILTIN) | set(_registered)
    names |= {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(names)


def load_engine(name: str, options: dict[str, Any]) -> Engine:
    """Build engine `name` with `options`; a permanent ActionError if it cannot be."""
    factory = _factory(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ActionError(
            f"transcribe engine {name!r} refused engine_options: {exc}", permanent=True
        ) from None


def _factory(name: str) -> Callable[..., Engine]:
    if name in _registered:
        return _registered[name]
    target = _BUILTIN.get(name)
    if target is None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP, name=name):
            try:
                loaded: Callable[..., Engine] = ep.load()
            except Exception as exc:  # a third party's import can raise anything
                raise ActionError(
                    f"transcribe engine {name!r} failed to load: {type(exc).__name__}: {exc}",
                    permanent=True,
                ) from None
            return loaded
        known = ", ".join(engine_names())
        raise ActionError(f"unknown transcribe engine {name!r} (known: {known})", permanent=True)
    module_name, _, attr = target.partition(":")
    factory: Callable[..., Engine] = getattr(importlib.import_module(module_name), attr)
    return factory
