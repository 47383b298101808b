"""`recflow trigger`: a realistic, signed callback against a running server.

What a user runs to try a config without a phone call: it makes real
audio of the asked duration (speech from espeak-ng, or a tone when
espeak-ng is missing), serves it from a throwaway media server that stands
in for the provider's API (bound to the host and port of the provider's
`api_url`, which a config for local trials points at 127.0.0.1), posts a
callback signed the way the provider signs it, and keeps serving until the
recording was fetched (and deleted, when the matching rules delete it) or
a timeout passes.
"""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import tempfile
import wave
from pathlib import Path

SAMPLE_RATE = 8000
SPEECH = (
    "This is a test recording made by recflow trigger. "
    "If you can hear this, the audio was stored and delivered."
)


def make_audio(seconds: float, fmt: str = "wav", *, speech: bool = True) -> bytes:
    """Real audio `seconds` long, as 8 kHz mono WAV or as MP3.

    Speech from espeak-ng padded or cut to length with sox when both are
    installed, else a 440 Hz tone from Python's wave module. MP3 needs
    ffmpeg (or sox with MP3 support).
    """
    wav = None
    if speech and shutil.which("espeak-ng") and shutil.which("sox"):
        wav = _speech(seconds)
    if wav is None:
        wav = tone(seconds)
    if fmt == "wav":
        return wav
    if fmt == "mp3":
        return _to_mp3(wav)
    raise ValueError(f"unknown audio format {fmt!r}")


def tone(seconds: float, frequency: float = 440.0) -> bytes:
    """A sine tone as 16-bit 8 kHz mono WAV, built without any tool."""
    frames = int(seconds * SAMPLE_RATE)
    step = 2 * math.pi * frequency / SAMPLE_RATE
    samples = struct.pack(
        f"<{frames}h", *(int(12000 * math.sin(step * i)) for i in range(frames))
    )
    out = io.BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(SAMPLE_RATE)
        writer.writeframes(samples)
    return out.getvalue()


def _speech(seconds: float) -> bytes | None:
    with tempfile.TemporaryDirectory(prefix="recflow-audio-") as tmp:
        spoken, fitted = Path(tmp, "spoken.wav"), Path(tmp, "fitted.wav")
        try:
            subprocess.run(
                ["espeak-ng", "-w", str(spoken), SPEECH], check=True, capture_output=True
            )
            subprocess.run(
                ["sox", str(spoken), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                 str(fitted), "pad", "0", str(seconds), "trim", "0", str(seconds)],
                check=True,
                capture_output=True,
            )  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        return fitted.read_bytes()


def _to_mp3(wav: bytes) -> bytes:
    with tempfile.TemporaryDirectory(prefix="recflow-audio-") as tmp:
        source, target = Path(tmp, "in.wav"), Path(tmp, "out.mp3")
        source.write_bytes(wav)
        if shutil.which("ffmpeg"):
            command = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(source),
                       "-codec:a", "libmp3lame", "-b:a", "32k", str(target)]  # fmt: skip
        else:
            command = ["sox", str(source), str(target)]
        subprocess.run(command, check=True, capture_output=True)
        return target.read_bytes()
