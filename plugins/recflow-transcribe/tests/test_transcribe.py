"""recflow-transcribe on its own: audio conversion, engines, the action's errors.

Audio is made with Python's wave module (tones whose frequency the tests
can count) and with espeak-ng (speech) when it is installed.
"""

from __future__ import annotations

import logging
import math
import shutil
import struct
import subprocess
import wave
from pathlib import Path
from typing import Any

import pytest
from recflow_transcribe import audio, engines
from recflow_transcribe.plugin import transcribe

from recflow import ActionError
from recflow.config import ProviderConfig
from recflow.context import StepContext
from recflow.event import Event

TOOLS = [
    pytest.param(False, id="pure-python"),
    pytest.param(
        True,
        id="ffmpeg-or-sox",
        marks=pytest.mark.skipif(
            not (shutil.which("ffmpeg") or shutil.which("sox")), reason="no ffmpeg or sox"
        ),
    ),
]


def _tone(path: Path, *, rate: int, width: int, channels: int, seconds: float = 1.0) -> Path:
    """A 500 Hz tone in the given PCM format, on every channel."""
    frames = bytearray()
    peak = 2 ** (8 * width - 1) - 1
    for i in range(int(rate * seconds)):
        value = int(0.5 * peak * math.sin(2 * math.pi * 500 * i / rate))
        if width == 1:
            sample = bytes([value + 128])
        else:
            sample = value.to_bytes(width, "little", signed=True)
        frames += sample * channels
    with wave.open(str(path), "wb") as writer:
        writer.setnchannels(channels)
        writer.setsampwidth(width)
        writer.setframerate(rate)
        writer.writeframes(bytes(frames))
    return path


def _crossings(pcm: bytes) -> int:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))


@pytest.mark.parametrize("tools", TOOLS)
@pytest.mark.parametrize(
    ("rate", "width", "channels"),
    [
        pytest.param(8000, 2, 1, id="provider-8k-mono"),
        pytest.param(8000, 2, 2, id="dual-channel"),
        pytest.param(16000, 2, 1, id="already-16k"),
        pytest.param(44100, 2, 1, id="44k"),
        pytest.param(8000, 1, 1, id="8-bit"),
        pytest.param(22050, 3, 1, id="24-bit"),
        pytest.param(11025, 4, 2, id="32-bit-stereo"),
    ],
)
def test_pcm16k_keeps_length_and_pitch(
    tmp_path: Path, tools: bool, rate: int, width: int, channels: int
) -> None:
    path = _tone(tmp_path / "tone.wav", rate=rate, width=width, channels=channels)
    pcm = b"".join(audio.pcm16k(str(path), tools=tools))
    seconds = len(pcm) / 2 / audio.RATE
    assert abs(seconds - 1.0) < 0.01
    # A 500 Hz tone crosses zero 1000 times a second, whatever the format was.
    assert abs(_crossings(pcm) - 1000) <= 10


def test_resampling_does_not_depend_on_how_the_input_is_cut(tmp_path: Path) -> None:
    path = _tone(tmp_path / "tone.wav", rate=8000, width=2, channels=1, seconds=0.5)
    whole = b"".join(audio.pcm16k(str(path), tools=False))
    original = audio.BLOCK_FRAMES
    try:
        audio.BLOCK_FRAMES = 333
        cut = b"".join(audio.pcm16k(str(path), tools=False))
    finally:
        audio.BLOCK_FRAMES = original
    assert cut == whole


@pytest.mark.parametrize("tools", TOOLS)
def test_what_is_not_audio_fails_for_good(tmp_path: Path, tools: bool) -> None:
    path = tmp_path / "error.wav"
    path.write_text('{"code": 20404, "message": "not found"}')
    with pytest.raises(ActionError) as caught:
        b"".join(audio.pcm16k(str(path), tools=tools))
    assert caught.value.permanent
    assert "could not be decoded" in str(caught.value) or "not plain PCM WAV" in str(caught.value)


class _Echo:
    """An engine that returns what it was built with and how much audio it got."""

    def __init__(self, **options: Any) -> None:
        self.options = options

    def transcribe(self, pcm: Any, rate: int) -> engines.Transcript:
        size = sum(len(chunk) for chunk in pcm)
        text = f"{size // 2 // rate} {self.options.get('say', '')}".strip()
        return {"text": text, "words": [{"word": text, "start": 0.0, "end": 1.0}]}


def _context(tmp_path: Path) -> StepContext:
    provider = ProviderConfig(
        name="main",
        kind="signalwire",
        account_sid="AC1",
        api_token="token",  # noqa: S106 (a dummy: nothing is fetched)
        signing_keys=("key",),
        api_url="http://127.0.0.1:9/api/laml/2010-04-01",
    )
    event = Event(
        account_sid="AC1",
        call_sid="CA1",
        recording_sid="RE1",
        recording_url="http://127.0.0.1:9/api/laml/2010-04-01/Accounts/AC1/Recordings/RE1",
        status="completed",
    )
    return StepContext(
        event=event,
        rule="r",
        step_index=1,
        step_id="words",
        attempt=1,
        steps={},
        previous=(),
        provider=provider,
        logger=logging.getLogger("test"),
    )


def test_a_registered_engine_gets_16k_audio_and_its_options(tmp_path: Path) -> None:
    engines.register_engine("echo", _Echo)
    stored = _tone(tmp_path / "call.wav", rate=8000, width=2, channels=1, seconds=2.0)
    target = tmp_path / "call.txt"
    params = {
        "engine": "echo",
        "engine_options": {"say": "seconds"},
        "audio": stored.as_uri(),
        "to": target.as_uri(),
    }
    outputs = transcribe(params, _context(tmp_path))
    assert outputs == {
        "text": "2 seconds",
        "words": [{"word": "2 seconds", "start": 0.0, "end": 1.0}],
        "engine": "echo",
        "url": target.as_uri(),
    }
    assert target.read_text() == "2 seconds\n"
    assert "echo" in engines.engine_names()


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        pytest.param({"engine": "nonesuch"}, "unknown transcribe engine 'nonesuch'", id="engine"),
        pytest.param(
            {"engine": "echo", "engine_options": {"say": "x", "colour": 1}},
            "engine 'echo' refused engine_options",
            id="options",
        ),
        pytest.param({"audio": "file:///nonexistent/call.wav"}, "audio not found", id="audio"),
    ],
)
def test_mistakes_fail_the_step_for_good(
    tmp_path: Path, params: dict[str, Any], complaint: str
) -> None:
    engines.register_engine("echo", lambda say="": _Echo(say=say))
    with pytest.raises(ActionError) as caught:
        transcribe({"engine": "echo", **params}, _context(tmp_path))
    assert caught.value.permanent
    assert complaint in str(caught.value)


@pytest.mark.skipif(
    not (shutil.which("espeak-ng") and shutil.which("sox")), reason="espeak-ng and sox"
)
def test_pocketsphinx_hears_telephone_speech(tmp_path: Path) -> None:
    wide, call = tmp_path / "wide.wav", tmp_path / "call.wav"
    text = "one two three four five. please call me back tomorrow."
    subprocess.run(["espeak-ng", "-v", "en-us+klatt2", "-s", "130", "-w", wide, text], check=True)
    subprocess.run(["sox", "-G", wide, "-r", "8000", "-c", "1", "-b", "16", call], check=True)
    json_target = tmp_path / "call.json"
    outputs = transcribe({"audio": call.as_uri(), "to": json_target.as_uri()}, _context(tmp_path))
    heard = set(outputs["text"].split())
    expected = {"one", "two", "three", "four", "five", "call", "back", "tomorrow"}
    assert len(heard & expected) >= 5, outputs["text"]
    assert outputs["engine"] == "pocketsphinx"
    assert '"recording_sid": "RE1"' in json_target.read_text()
