"""Speech out: sentences while tokens stream, barge-in on a virtual clock, and the runtime's state change."""

from __future__ import annotations

import time

import numpy as np

from assistant.events import Answer, Interrupted, Question, SpeechStarted, StreamEnded
from assistant.output import to_record
from assistant.runtime import Runtime
from assistant.speech_out import OUT_BLOCK, OUT_RATE, Player, SentenceSplitter, Speaker
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from reasoning.config import ReasoningConfig


def test_sentences_come_out_as_soon_as_they_end():
    s = SentenceSplitter()
    out = []
    for piece in ["The sign ", "reads TIGER. It ", "changed at 3.5 s", "econds. And", " then"]:
        out += s.feed(piece)
    assert out == ["The sign reads TIGER.", "It changed at 3.5 seconds."]
    assert s.flush() == ["And then"]


class VirtualDevice:
    """Pulls 20 ms blocks from a Player, advancing a virtual clock."""

    def __init__(self, player: Player) -> None:
        self.player = player
        self.t = 0.0
        self.blocks: list[tuple[float, float]] = []      # (virtual time, peak)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            out = np.zeros((OUT_BLOCK, 1), np.float32)
            self.player.callback(out, OUT_BLOCK)
            self.blocks.append((self.t, float(np.abs(out).max())))
            self.t += OUT_BLOCK / OUT_RATE


def _tone(seconds: float) -> np.ndarray:
    n = int(seconds * OUT_RATE)
    return (0.3 * np.sin(np.arange(n) * 2 * np.pi * 440 / OUT_RATE)).astype(np.float32)


def test_barge_in_silences_playback_within_one_block():
    p = Player()
    dev = VirtualDevice(p)
    p.enqueue(_tone(2.0))
    dev.tick(25)                                   # 0.5 s of speech
    assert all(peak > 0 for _, peak in dev.blocks)
    stop_at = dev.t
    p.stop()
    dev.tick(10)
    silent = [t for t, peak in dev.blocks if t >= stop_at and peak == 0]
    assert silent and silent[0] - stop_at <= 0.2 and all(peak == 0 for t, peak in dev.blocks if t >= stop_at)


class ToneSynth:
    engine = "test"

    def synth(self, text: str) -> np.ndarray:
        return _tone(1.0)


def test_user_speech_during_playback_interrupts_it(lite_backend):
    """Virtual clock: an answer is being spoken; the user starts talking; playback stops within one 20 ms
    block and the agent goes speaking -> listening."""
    states: list[str] = []
    player = Player()
    dev = VirtualDevice(player)
    speaker = Speaker(ToneSynth(), player, states.append).start()
    out: list = []
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()),
                 ReasoningConfig(max_new_tokens=48, decode_tokens_per_step=2), out.append, speaker=speaker)
    rt.submit(Question(0.0, "Describe a busy street."))
    deadline = time.monotonic() + 60
    while speaker.state != "speaking" and time.monotonic() < deadline:
        rt.step()
        dev.tick()
    dev.tick(5)
    assert speaker.state == "speaking" and any(peak > 0 for _, peak in dev.blocks[-5:])
    rt.submit(SpeechStarted(1.0))
    rt.step()
    barge = dev.t
    dev.tick(10)
    assert all(peak == 0 for t, peak in dev.blocks if t >= barge)
    assert states[-2:] == ["speaking", "listening"] and speaker.state == "listening"
    assert rt.summary()["barge_ins"] == 1
    speaker.close()


def test_user_speech_cancels_the_decode_in_flight(lite_backend):
    out: list = []
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()),
                 ReasoningConfig(max_new_tokens=48, decode_tokens_per_step=1), out.append)
    rt.submit(Question(0.0, "Describe a busy street."))
    rt.step()
    assert rt._job is not None and not rt._job.done
    rt.submit(SpeechStarted(0.5))
    rt.step()
    interrupted = [to_record(e) for e in out if isinstance(e, Interrupted)]
    assert len(interrupted) == 1 and interrupted[0]["t"] == 0.5 and rt._job is None
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    assert not [e for e in out if isinstance(e, Answer)] and rt.summary()["barge_ins"] == 1


def test_espeak_ng_is_the_fallback_voice():
    import shutil

    import pytest

    from assistant.speech_out import Synthesizer
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    synth = Synthesizer.__new__(Synthesizer)       # as if piper were not installed
    synth.voice, synth.engine = None, "espeak-ng"
    audio = synth.synth("Heads up: the sign says stop.")
    assert audio.dtype == np.float32 and len(audio) > OUT_RATE // 2 and float(np.abs(audio).max()) > 0.05
