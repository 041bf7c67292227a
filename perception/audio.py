"""Audio in: the microphone (sounddevice), the audio track of a video file (PyAV), wav/flac files.

Everything comes out as 16 kHz mono float32 blocks of 512 samples (what silero-vad takes), each
stamped with the stream time of its first sample. Without PortAudio (the system library
libportaudio2) or without an input device, `open_audio` raises AudioUnavailable with one line that
says so; the caller runs on without audio.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("onlooker.audio")

SAMPLE_RATE = 16000
BLOCK = 512                      # 32 ms
DEAD_AFTER_S = 3.0               # a running input stream with no block for this long has lost its device


class AudioUnavailable(RuntimeError):
    """No audio from this source; the message is one user-facing line."""


@dataclass(slots=True)
class AudioBlock:
    samples: np.ndarray          # (BLOCK,) float32 in [-1, 1]
    t: float                     # stream time of the first sample, seconds


def _sounddevice():
    try:
        import sounddevice as sd
    except OSError as e:          # the module imports, then fails to find libportaudio
        raise AudioUnavailable(f"audio is off: PortAudio is not installed ({e}); on Debian/Ubuntu: "
                               f"apt-get install libportaudio2") from None
    except ImportError:
        raise AudioUnavailable("audio is off: the sounddevice package is not installed") from None
    return sd


def list_devices() -> str:
    sd = _sounddevice()
    lines = []
    for i, d in enumerate(sd.query_devices()):
        kinds = [k for k, n in (("in", d["max_input_channels"]), ("out", d["max_output_channels"])) if n > 0]
        lines.append(f"{i:>3}  {'/'.join(kinds):<6}  {d['name']}  ({int(d['default_samplerate'])} Hz)")
    return "\n".join(lines) if lines else "no audio devices"


def decode_file(path: str | Path) -> np.ndarray:
    """The whole audio track of a wav/flac/video file as 16 kHz mono float32."""
    path = Path(path)
    if not path.exists():
        raise AudioUnavailable(f"{path}: no such file")
    try:
        import av
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioUnavailable(f"{path}: no audio track")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            out = []
            for frame in container.decode(audio=0):
                for f in resampler.resample(frame):
                    out.append(f.to_ndarray().reshape(-1))
            for f in resampler.resample(None):
                out.append(f.to_ndarray().reshape(-1))
    except AudioUnavailable:
        raise
    except Exception as e:
        raise AudioUnavailable(f"{path}: cannot read its audio ({type(e).__name__}: {e})") from None
    return np.concatenate(out).astype(np.float32) if out else np.zeros(0, np.float32)


def resample(x: np.ndarray, sr: int, to: int = SAMPLE_RATE) -> np.ndarray:
    """Linear-interpolation resampling of mono float audio (speech, not music: good enough for Whisper)."""
    if sr == to or len(x) == 0:
        return x.astype(np.float32)
    n = int(len(x) * to / sr)
    return np.interp(np.linspace(0, len(x) - 1, n), np.arange(len(x)), x).astype(np.float32)


def blocks(samples: np.ndarray, t0: float = 0.0) -> Iterator[AudioBlock]:
    n = len(samples) // BLOCK
    for i in range(n):
        yield AudioBlock(samples[i * BLOCK:(i + 1) * BLOCK], t0 + i * BLOCK / SAMPLE_RATE)


class Microphone:
    """sounddevice input at 16 kHz mono; blocks arrive on a queue from PortAudio's thread."""

    def __init__(self, device: int | str | None = None) -> None:
        sd = _sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except Exception as e:
            raise AudioUnavailable(f"audio is off: no input device {device if device is not None else ''} "
                                   f"({e}); run `onlooker devices`") from None
        self.name = info["name"]
        self.queue: queue.Queue[np.ndarray] = queue.Queue(maxsize=256)
        self.dropped = 0
        self._n = 0
        self._last = time.monotonic()
        self.stream = sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", blocksize=BLOCK,
                                     device=device, callback=self._callback)

    def _callback(self, indata, frames, time_info, status) -> None:
        try:
            self.queue.put_nowait(indata[:, 0].copy())
        except queue.Full:
            self.dropped += 1

    def __enter__(self) -> Microphone:
        self.stream.start()
        self._last = time.monotonic()
        return self

    def __exit__(self, *exc) -> None:
        try:                      # a device that vanished may refuse to stop: it is gone either way
            self.stream.stop()
            self.stream.close()
        except Exception as e:
            log.debug("closing the microphone: %s", e)

    def read(self, timeout: float = 1.0) -> AudioBlock | None:
        """The next block, or None when none came within `timeout`. Raises AudioUnavailable when the device is
        gone: its stream stopped, or a running stream delivered nothing (not even silence) for DEAD_AFTER_S."""
        try:
            x = self.queue.get(timeout=timeout)
        except queue.Empty:
            if not self.stream.active or time.monotonic() - self._last > DEAD_AFTER_S:
                raise AudioUnavailable(f"the microphone ({self.name}) stopped delivering audio (unplugged or "
                                       f"taken by another program)") from None
            return None
        self._last = time.monotonic()
        block = AudioBlock(x, self._n * BLOCK / SAMPLE_RATE)
        self._n += 1
        return block
