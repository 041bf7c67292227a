"""`onlooker eval --speech`: spoken questions from three voices, some over background noise, through VAD, Whisper,
the answer and the voice out; word error rate, answered share, right answers and end of speech -> first audio.

Held out: the words are SPOKEN_WORDS (all of the "eval" split, picked for being speakable; the sign scenes' eval
words include fragments like "PUNG"), the sentences are TEMPLATES (none used by `bench speech`, the tests or
the wake-word rule, which was written against the piper joe voice's hearing of `bench speech`'s QUESTIONS), and
two of the three voices (espeak-ng en-us and en-gb+f3) never spoke to the assistant before. Every third utterance
has noise mixed in (white noise and a 100 Hz hum, 10 dB under the speech).

Before the questions the memory ingests a board that showed the words in order, one every 8 s; the right
answer of each question follows from that (scored with bench.eval_suite.correct).
"""

from __future__ import annotations

import random
import re
import statistics
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench import eval_suite as suite

SPOKEN_WORDS = ["AVOCADO", "BANANA", "BATHTUB", "BEDROOM", "BONSAI", "CEMENT", "CHAIR", "COTTON", "CRICKET",
                "ENGINE", "FERRY", "GATEWAY", "ICEBERG", "JEWELS", "MARBLE", "MELODY", "MERCURY", "PEARL",
                "RABBITS", "RAISINS"]
NOW = ["Onlooker, which word is on the board right now?", "Onlooker, what does the board say at the moment?",
       "Onlooker, read me the board as it is now.", "Onlooker, tell me the word on the board now.",
       "Onlooker, what is written on the board now?", "Onlooker, which word does the board show?"]
TEMPLATES = [
    ("now", "{now}"),
    ("past_content", "Onlooker, was {w} ever written on the board?"),
    ("when", "Onlooker, when did the board show {w}?"),
    ("before_after", "Onlooker, which word came after {w} on the board?"),
    ("past_time", "Onlooker, what was on the board {ago} seconds ago?"),
    ("past_content", "Onlooker, did you see the word {w} on the board?"),
]
VOICES = ["piper joe", "espeak-ng en-us", "espeak-ng en-gb+f3"]
PERIOD = 8.0                                          # seconds each word stays on the board


def board() -> list[tuple[float, str]]:
    """(time, word) of the board the memory saw: the first 12 spoken words, one every PERIOD s."""
    return [(PERIOD * i, w) for i, w in enumerate(SPOKEN_WORDS[:12])]


def asked_at() -> float:
    """The stream time the spoken questions are asked at: just before the last word leaves the board."""
    return board()[-1][0] + PERIOD - 1.0


def utterances(now: float) -> list[tuple[str, str, suite.Ask]]:
    """(voice, sentence, what a right answer says): 12 distinct sentences per voice, 36 in all."""
    rng = random.Random(2026)
    shown = board()
    out: list[tuple[str, str, suite.Ask]] = []
    for v, voice in enumerate(VOICES):
        for k in range(12):
            kind, template = TEMPLATES[k % len(TEMPLATES)]
            ask = sentence(kind, template, k, v, rng, shown, now)
            while any(ask.question == said for _, said, _ in out):      # every sentence once
                ask = sentence(kind, template, k, v, rng, shown, now)
            out.append((voice, ask.question, ask))
    return out


def sentence(kind: str, template: str, k: int, v: int, rng: random.Random, shown: list[tuple[float, str]],
             now: float) -> suite.Ask:
    """One spoken question; a word answer that also names another word of the board is wrong, as in the suite."""
    ask = _sentence(kind, template, k, v, rng, shown, now)
    words = tuple(sorted({w for _, w in shown}))
    return replace(ask, others=words) if kind in suite.WORD_KINDS else ask


def _sentence(kind: str, template: str, k: int, v: int, rng: random.Random, shown: list[tuple[float, str]],
              now: float) -> suite.Ask:
    i = rng.randrange(1, len(shown) - 2)
    t0, w = shown[i]
    if kind == "now":
        return suite.Ask(now, kind, NOW[k // len(TEMPLATES) + 2 * v], shown[-1][1])     # 2 per voice, 6 in all
    if kind == "past_content":
        absent = k in (5, 7)                          # per voice two words shown, two never shown
        w = SPOKEN_WORDS[12 + rng.randrange(8)] if absent else w
        return suite.Ask(now, kind, template.format(w=w.lower()), "no" if absent else "yes", subject=w)
    if kind == "when":
        return suite.Ask(now, kind, template.format(w=w.lower()), f"{t0:g}-{t0 + PERIOD:g}")
    if kind == "before_after":
        return suite.Ask(now, kind, template.format(w=w.lower()), shown[i + 1][1])
    return suite.Ask(now, kind, template.format(ago=int(now - (t0 + PERIOD / 2))), w)


def speak(voice: str, text: str, synth) -> np.ndarray:
    """16 kHz float audio of `text` in `voice`."""
    from assistant.speech_out import OUT_RATE
    from perception.audio import decode_file, resample

    if voice == "piper joe":
        return resample(synth.synth(text), OUT_RATE)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "s.wav"
        subprocess.run(["espeak-ng", "-v", voice.split()[1], "-w", str(path), text], check=True, capture_output=True)
        return decode_file(path)


def with_noise(speech: np.ndarray, rng: np.random.Generator, snr_db: float = 10.0) -> np.ndarray:
    t = np.arange(len(speech)) / 16000
    noise = rng.normal(0, 1, len(speech)).astype(np.float32) + np.sin(2 * np.pi * 100 * t).astype(np.float32)
    p_s, p_n = float(np.mean(speech ** 2)) or 1e-9, float(np.mean(noise ** 2))
    return (speech + noise * np.sqrt(p_s / p_n / 10 ** (snr_db / 10))).astype(np.float32)


def wer(said: str, heard: str) -> tuple[int, int]:
    """(word edits, words said) between the sentence and what ASR heard, case and punctuation ignored."""
    a, b = re.findall(r"[a-z0-9']+", said.lower()), re.findall(r"[a-z0-9']+", heard.lower())
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[len(b)], len(a)


def run_speech(min_silence_ms: int = 300) -> tuple[list[dict], list[list[str]]]:
    from assistant.speech_out import Synthesizer
    from assistant.store import default_cache_dir
    from bench.speech import respond
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    from model.causal_lm import load_lite_backend
    from perception.audio import SAMPLE_RATE
    from perception.observation import Observation
    from perception.speech import Transcriber, whisper_dir
    from reasoning import prompts

    backend = load_lite_backend(default_cache_dir())
    transcriber = Transcriber(whisper_dir(default_cache_dir()))
    synth = Synthesizer()
    mem = HierarchicalMemory(backend, MemoryConfig(use_embeddings=False))
    mem.set_sink(prompts.system_chunk(backend))
    for t, w in board():
        mem.append(prompts.observation_chunk(backend, Observation(t, w)))
    now = asked_at()
    rng = np.random.default_rng(7)
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))          # warm-up, not measured
    rows = []
    for n, (voice, text, ask) in enumerate(utterances(now)):
        speech = speak(voice, text, synth)
        noisy = n % 3 == 2
        if noisy:
            speech = with_noise(speech, rng)
        lead = np.zeros(SAMPLE_RATE // 2, np.float32)
        audio = np.concatenate([lead, speech, np.zeros(2 * SAMPLE_RATE, np.float32)])
        row = respond(audio, (len(lead) + len(speech)) / SAMPLE_RATE, backend, mem, now, transcriber, synth,
                      min_silence_ms)
        edits, words = wer(text, row.get("heard", ""))
        rows.append({"voice": voice, "noise": noisy, "said": text, "kind": ask.kind, "want": ask.want, **row,
                     "edits": edits, "words": words,
                     "right": "error" not in row and row["answered"] and suite.correct(ask, row["answer"])})
    return rows, speech_table(rows)


def rescore_speech(rows: list[dict]) -> list[dict]:
    """Judge saved rows by today's rules (the questions are rebuilt from the same seed, matched by sentence)."""
    asks = {said: ask for _, said, ask in utterances(asked_at())}
    for r in rows:
        ask = asks.get(r["said"])
        if ask is None:
            raise ValueError(f"no such spoken question in this version: {r['said']!r}")
        r["right"] = "error" not in r and r["answered"] and suite.correct(ask, r["answer"])
    return rows


def speech_table(rows: list[dict]) -> list[list[str]]:
    cells = []
    groups = [(v, [r for r in rows if r["voice"] == v]) for v in VOICES]
    groups += [("with noise", [r for r in rows if r["noise"]]), ("all", rows)]
    for name, rs in groups:
        ok = [r for r in rs if "error" not in r]
        edits, words = sum(r["edits"] for r in rs), sum(r["words"] for r in rs)
        right = sum(r["right"] for r in rs)
        lo, hi = suite.wilson(right, len(rs))
        total = statistics.median(r["total_ms"] for r in ok) if ok else None
        cells.append([name, str(len(rs)), f"{edits / max(words, 1):.1%}",
                      f"{sum(r['answered'] for r in ok)}/{len(rs)}", f"{right}/{len(rs)} [{lo:.0%}-{hi:.0%}]",
                      f"{total:.0f}" if total is not None else "-"])
    return cells


SPEECH_COLUMNS = ["voice", "utterances", "word error rate", "answered (addressed)", "right [95%]",
                  "end of speech -> first audio ms (median)"]
