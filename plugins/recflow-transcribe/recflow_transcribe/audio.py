"""Turning a recording into what speech engines want: 16 kHz mono 16-bit PCM.

Providers send WAV at 8 kHz, 16-bit, one or two channels. When `ffmpeg`
(else `sox`) is on PATH it decodes and resamples, with a proper
band-limiting filter, and takes any format it knows (mu-law WAV, MP3).
Without them, plain PCM WAV (8, 16, 24 or 32 bits, any rate and number of
channels) is converted here in pure Python: channels averaged, the rate
changed by linear interpolation. Both stream a block at a time, so memory
stays flat however long the call.

Known shortcoming: linear interpolation leaves faint images of the speech
above 4 kHz when it upsamples telephone audio, and pocketsphinx recognises
noticeably fewer words from it than from ffmpeg's or sox's output; install
one of them where transcripts matter.
"""

from __future__ import annotations

import array
import logging
import shutil
import subprocess
import sys
import wave
from collections.abc import Iterator

from recflow import ActionError

logger = logging.getLogger(__name__)

RATE = 16000
BLOCK_FRAMES = 16000  # one second of input at the providers' 8 kHz, two at 16 kHz


def pcm16k(path: str, *, tools: bool = True) -> Iterator[bytes]:
    """Yield the audio file at `path` as 16 kHz mono signed 16-bit little-endian.

    `tools=False` skips ffmpeg and sox. Raises a permanent `ActionError`
    when the file is not audio that can be decoded: trying again would
    give the same answer.
    """
    tool = _tool() if tools else None
    if tool is not None:
        yield from _decode_with_tool(path, tool)
        return
    try:
        with wave.open(path, "rb") as reader:
            if reader.getcomptype() != "NONE" or reader.getsampwidth() not in (1, 2, 3, 4):
                raise ActionError(_undecodable(reader.getcompname()), permanent=True)
            yield from _convert(reader)
    except (wave.Error, EOFError) as exc:
        raise ActionError(_undecodable(str(exc)), permanent=True) from None


def _undecodable(why: str) -> str:
    return (
        f"the recording is not plain PCM WAV ({why}) and neither ffmpeg nor sox is"
        " installed to decode it"
    )


def _tool() -> str | None:
    for name in ("ffmpeg", "sox"):
        if shutil.which(name):
            return name
    return None


def _convert(reader: wave.Wave_read) -> Iterator[bytes]:
    width, channels = reader.getsampwidth(), reader.getnchannels()
    resample = _Resampler(reader.getframerate(), RATE)
    while True:
        frames = reader.readframes(BLOCK_FRAMES)
        if not frames:
            break
        mono = _mono(_samples(frames, width), channels)
        out = resample(mono)
        if sys.byteorder == "big":
            out.byteswap()
        if out:
            yield out.tobytes()


def _samples(frames: bytes, width: int) -> array.array[int]:
    """Signed 16-bit samples from little-endian PCM of `width` bytes."""
    if width == 2:
        samples = array.array("h", frames)
        if sys.byteorder == "big":
            samples.byteswap()
        return samples
    if width == 1:  # 8-bit WAV is unsigned
        return array.array("h", ((b - 128) << 8 for b in frames))
    # 24 and 32 bits: keep the two most significant bytes of each sample.
    usable = len(frames) - len(frames) % width
    return array.array(
        "h",
        (
            int.from_bytes(frames[i + width - 2 : i + width], "little", signed=True)
            for i in range(0, usable, width)
        ),
    )


def _mono(samples: array.array[int], channels: int) -> array.array[int]:
    if channels == 1:
        return samples
    usable = len(samples) - len(samples) % channels
    return array.array(
        "h",
        (sum(samples[i : i + channels]) // channels for i in range(0, usable, channels)),
    )


class _Resampler:
    """Linear interpolation from `src` to `dst` Hz, fed one block at a time.

    The last input sample of each block is kept, so that the output is the
    same however the input is cut into blocks.
    """

    def __init__(self, src: int, dst: int) -> None:
        self.step = src / dst
        self.same = src == dst
        self.pos = 0.0  # where the next output sample lies, in input samples
        self.last: int | None = None

    def __call__(self, samples: array.array[int]) -> array.array[int]:
        if self.same or not samples:
            return samples
        buf = samples if self.last is None else array.array("h", [self.last]) + samples
        out = array.array("h")
        pos, step, end = self.pos, self.step, len(buf) - 1
        while pos < end:
            i = int(pos)
            a = buf[i]
            out.append(int(a + (buf[i + 1] - a) * (pos - i)))
            pos += step
        self.pos = pos - end
        self.last = buf[end]
        return out


def _decode_with_tool(path: str, tool: str) -> Iterator[bytes]:
    """Decode and resample with ffmpeg or sox, streaming their output."""
    if tool == "ffmpeg":
        command = [
            "ffmpeg", "-nostdin", "-loglevel", "error", "-i", path,
            "-f", "s16le", "-ac", "1", "-ar", str(RATE), "-",
        ]  # fmt: skip
    else:
        command = ["sox", "-q", "-V1", path, "-t", "raw", "-e", "signed", "-b", "16"]
        command += ["-c", "1", "-r", str(RATE), "-L", "-"]
    logger.debug("decoding %s with %s", path, tool)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while chunk := proc.stdout.read(BLOCK_FRAMES * 2):
            yield chunk
        error = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            first = error.splitlines()[-1] if error else f"exit status {proc.returncode}"
            raise ActionError(
                f"the recording could not be decoded by {tool}: {first}", permanent=True
            )
