"""An engine for recflow-transcribe that 'hears' how many seconds of audio it got."""

from collections.abc import Iterable
from typing import Any


class TallyEngine:
    def __init__(self, word: str = "second") -> None:
        self.word = word

    def transcribe(self, pcm: Iterable[bytes], rate: int) -> dict[str, Any]:
        seconds = sum(len(chunk) for chunk in pcm) / 2 / rate
        text = f"{seconds:.1f} {self.word}"
        return {"text": text, "words": [{"word": text, "start": 0.0, "end": seconds}]}
