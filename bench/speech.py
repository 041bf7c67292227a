"""`onlooker bench speech`: from the end of the user's speech to the first sample of the spoken answer.

Spoken questions (each starting with the wake word) are generated with piper (the joe voice) and
padded with silence. For each one, in stream order:

    VAD end    stream time from the true end of speech to the VAD closing the utterance (its silence wait)
    ASR        Whisper base (int8, CPU) on the utterance
    TTFT       the lite model: question prefill on the memory + first token
    1st phrase decoding until the answer's first phrase is complete (the unit the voice speaks)
    TTS        piper synthesizing that phrase: the first audio sample is ready to play

Each stage is measured on this machine's clock; the total is their sum (the pipeline runs them one
after another). The sound device adds its block (20 ms) on top. Prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from bench.common import print_table, write_rows
from reasoning import prompts

QUESTIONS = [
    "Onlooker, what word is on the sign?",
    "Onlooker, what did the sign say a minute ago?",
    "Onlooker, is anyone in the room?",
    "Onlooker, what do you see right now?",
    "Onlooker, when did the sign read TIGER?",
    "Onlooker, how many people were there at the start?",
    "Onlooker, what was written before LEMON?",
    "Onlooker, describe the scene.",
    "Onlooker, what changed in the last ten seconds?",
    "Onlooker, what does the sign say now?",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench speech", description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=20, help="spoken utterances")
    p.add_argument("--min-silence-ms", type=int, default=300, help="silence that ends an utterance")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return run_speech_bench(p.parse_args(argv))


def run_speech_bench(args) -> int:
    from assistant.speech_out import OUT_RATE, Synthesizer
    from assistant.store import default_cache_dir
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    from model.causal_lm import load_lite_backend
    from perception.audio import SAMPLE_RATE, resample
    from perception.observation import Observation
    from perception.speech import Transcriber, whisper_dir

    backend = load_lite_backend(default_cache_dir())
    transcriber = Transcriber(whisper_dir(default_cache_dir()))
    synth = Synthesizer()
    mem = HierarchicalMemory(backend, MemoryConfig(use_embeddings=False))
    mem.set_sink(prompts.system_chunk(backend))
    for i, w in enumerate(["APPLE", "TIGER", "LEMON", "RIVER", "PIANO"]):
        mem.append(prompts.observation_chunk(backend, Observation(8.0 * i, w, people=i % 2)))
    now = 40.0
    rows = []
    questions = (QUESTIONS * ((args.questions + len(QUESTIONS) - 1) // len(QUESTIONS)))[:args.questions]
    transcriber.transcribe(np.zeros(SAMPLE_RATE, np.float32))          # warm-up, not measured
    for text in questions:
        speech16 = resample(synth.synth(text), OUT_RATE)                  # synthesised at OUT_RATE
        lead = np.zeros(SAMPLE_RATE // 2, np.float32)
        audio = np.concatenate([lead, speech16, np.zeros(2 * SAMPLE_RATE, np.float32)])
        row = respond(audio, (len(lead) + len(speech16)) / SAMPLE_RATE, backend, mem, now, transcriber, synth,
                      args.min_silence_ms)
        rows.append({"question": text, **row})
        if "error" not in row:
            print(f"  {row['total_ms']:6.0f} ms  heard {row['heard']!r}", file=sys.stderr)
    ok = [r for r in rows if "error" not in r]
    med = {k: statistics.median(r[k] for r in ok) for k in ("vad_ms", "asr_ms", "ttft_ms", "first_phrase_ms",
                                                            "tts_ms", "total_ms")}
    header = (f"bench speech: {len(rows)} spoken questions (piper joe voice), Whisper base int8, SmolLM2-135M, "
              f"piper TTS ({synth.engine}), CPU, VAD silence {args.min_silence_ms} ms")
    print_table(header, ["stage", "VAD end", "ASR", "TTFT", "first phrase", "TTS first chunk",
                         "end of speech -> first audio"],
                [["median ms"] + [f"{med[k]:.0f}" for k in ("vad_ms", "asr_ms", "ttft_ms", "first_phrase_ms",
                                                           "tts_ms", "total_ms")]])
    p90 = sorted(r["total_ms"] for r in ok)[max(0, int(0.9 * len(ok)) - 1)]
    print(f"\nanswered as addressed to the assistant: {sum(r['answered'] for r in ok)}/{len(ok)} (by name: "
          f"{sum(r['woke'] for r in ok)}); total p90 {p90:.0f} ms; "
          f"utterances missed by the VAD: {len(rows) - len(ok)}")
    write_rows(args.out, header, rows)
    return 0


def respond(audio: np.ndarray, speech_end: float, backend, mem, now: float, transcriber, synth,
            min_silence_ms: int) -> dict:
    """One spoken question (16 kHz audio whose speech ends at `speech_end` s) through VAD, ASR, the answer's
    first phrase and TTS, each stage timed; the row (with "error" when the VAD heard nothing)."""
    from assistant.speech_out import SentenceSplitter
    from perception.audio import SAMPLE_RATE, blocks
    from perception.speech import VadSegmenter, addressed_question, wake_question
    from reasoning.answerer import answer_job

    seg = VadSegmenter(min_silence_ms=min_silence_ms)
    utt, closed_at = None, None
    for b in blocks(audio):
        u = seg.feed(b)
        if u is not None:
            utt, closed_at = u, b.t + len(b.samples) / SAMPLE_RATE
            break
    if utt is None or closed_at is None:
        return {"error": "no utterance detected"}
    vad_ms = max(0.0, closed_at - speech_end) * 1000
    t = time.monotonic()
    heard = transcriber.transcribe(utt.audio)
    asr_ms = (time.monotonic() - t) * 1000
    question = addressed_question(heard) or heard
    t = time.monotonic()
    job = answer_job(backend, mem.context(question, now), question, now, latest=None, restate=mem.config.restate,
                     max_new_tokens=48, asked_at=t)
    splitter = SentenceSplitter()
    first = None
    while not job.done and first is None:
        phrases = splitter.feed(job.step(1))
        if phrases:
            first = phrases[0]
    first = first or (splitter.flush() or [job.text.strip() or "I did not catch that."])[0]
    decode_ms = (time.monotonic() - t) * 1000 - (job.ttft_ms or 0.0)
    job.run()                                        # the rest of the answer, for scoring (not timed)
    t = time.monotonic()
    synth.synth(first)
    tts_ms = (time.monotonic() - t) * 1000
    return {"heard": heard, "woke": wake_question(heard) is not None,
            "answered": addressed_question(heard) is not None, "vad_ms": vad_ms, "asr_ms": asr_ms,
            "ttft_ms": job.ttft_ms, "first_phrase_ms": decode_ms, "tts_ms": tts_ms,
            "total_ms": vad_ms + asr_ms + (job.ttft_ms or 0.0) + decode_ms + tts_ms, "first_phrase": first,
            "answer": job.text.strip()}


if __name__ == "__main__":
    sys.exit(main())
