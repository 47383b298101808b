"""The built-in engine: CMU pocketsphinx, offline, with the English model of its wheel.

The audio is cut into utterances by pocketsphinx's own voice activity
detector and each is decoded alone, so an hour-long call does not grow one
huge search. Known shortcoming: its accuracy on telephone audio is modest
(the wheel's model is trained on 16 kHz speech, and 8 kHz calls lack the
upper half of its band); pick another engine where the words matter.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Iterator
from typing import Any

from recflow_transcribe.engines import Transcript, Word

# Pocketsphinx marks alternative pronunciations as "word(2)".
_VARIANT = re.compile(r"\(\d+\)$")
FRAMES_PER_SECOND = 100


class PocketsphinxEngine:
    """Transcribes with pocketsphinx; `hmm`, `lm`, `dict` point at other models."""

    def __init__(self, *, hmm: str | None = None, lm: str | None = None, dict: str | None = None):
        self.config: builtins.dict[str, Any] = {
            key: value
            for key, value in (("hmm", hmm), ("lm", lm), ("dict", dict))
            if value is not None
        }

    def transcribe(self, pcm: Iterable[bytes], rate: int) -> Transcript:
        from pocketsphinx import Decoder, Endpointer

        decoder = Decoder(samprate=rate, loglevel="FATAL", **self.config)
        endpointer = Endpointer(sample_rate=rate)
        words: list[Word] = []
        utterance: list[bytes] = []
        start = 0.0
        for frame in _frames(pcm, endpointer.frame_bytes):
            was_in_speech = endpointer.in_speech
            if len(frame) < endpointer.frame_bytes:
                speech = endpointer.end_stream(frame)
            else:
                speech = endpointer.process(frame)
            if speech is None:
                continue
            if not was_in_speech:
                start = endpointer.speech_start
            utterance.append(speech)
            if not endpointer.in_speech:
                # Decoding a whole utterance at once lets pocketsphinx normalise
                # it as a batch, which recognises markedly more words than live.
                decoder.start_utt()
                decoder.process_raw(b"".join(utterance), full_utt=True)
                decoder.end_utt()
                words.extend(_words(decoder, start))
                utterance.clear()
        return {"text": " ".join(w["word"] for w in words), "words": words}


def _words(decoder: Any, offset: float) -> list[Word]:
    words: list[Word] = []
    for seg in decoder.seg():
        word = seg.word
        if word.startswith(("<", "[", "+")):  # silence, noise and filler marks
            continue
        words.append(
            {
                "word": _VARIANT.sub("", word),
                "start": round(offset + seg.start_frame / FRAMES_PER_SECOND, 2),
                "end": round(offset + (seg.end_frame + 1) / FRAMES_PER_SECOND, 2),
            }
        )
    return words


def _frames(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Re-cut `chunks` into frames of exactly `size` bytes; the last may be shorter."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        whole = len(pending) - len(pending) % size
        for i in range(0, whole, size):
            yield pending[i : i + size]
        pending = pending[whole:]
    # The final, shorter frame flushes the detector, which refuses an empty one.
    yield pending or bytes(2)
