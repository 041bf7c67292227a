"""Which retrieval signal finds the past moment a content question is about, on tiny-vl's VLM path.

    python -m bench.tiny_vl_retrieval [--seeds 81,82,83,84,85] [--out rows.jsonl]

Per held-out scene (60 s, split "heldout"), the sampled frames (1 fps) go through VisualStream (pairs, token
drop, keyframes) into memory with a 256-token window, so most of the minute is sealed off the device; the lite
perceivers read every sampled frame and their notes join the segments' text, as the runtime's perception beside
the model does. At 0:59, for every sign whose whole showing has been sealed, "When did the sign say WORD?" is
asked of memory's retrieval (no answer is decoded) and each signal's ranking of the candidates is scored: a hit
at k when one of its first k candidates covers a moment the sign was shown. Signals: the model's own query·key
score (the question's pre-RoPE queries against each segment's mean key), word overlap and text embedding on the
segments' text, and their reciprocal-rank fusion (what memory places). The ablation row scores the same
questions with the segments' text emptied (no perception), which leaves the query·key signal alone.
Seeds 81-85 are this benchmark's; no other test or benchmark uses them.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from assistant.store import default_cache_dir
from bench.common import print_table, write_rows
from memory.config import MemoryConfig
from memory.embed import load_embedder
from memory.manager import HierarchicalMemory
from memory.retrieval import RRF_K
from model.loading import load_backend
from perception.config import PerceptionConfig
from perception.lite import LitePerceiver
from perception.sources import VideoFrame
from perception.synthetic import SignScene
from perception.visual import VisualConfig, VisualStream
from reasoning import prompts

ASK_AT = 59.0
SIGNALS = ("model_qk", "text_words", "text_embedding", "fusion")


def fusion(scores: dict[str, list[int]]) -> list[int]:
    """memory.retrieval's reciprocal-rank fusion of the signals' rankings."""
    fused: dict[int, float] = {}
    for ranking in scores.values():
        for r, k in enumerate(ranking):
            fused[k] = fused.get(k, 0.0) + 1.0 / (RRF_K + r + 1)
    return sorted(fused, key=lambda k: -fused[k])


def run_scene(seed: int, backend, embedder, perceiver: LitePerceiver | None) -> list[dict]:
    """One scene through VisualStream and memory; one row per question, each signal's hit rank (or None)."""
    scene = SignScene.random(seed, 60.0, "heldout")
    mem = HierarchicalMemory(backend, MemoryConfig(window_tokens=256), embedder=embedder, label=f"scene-{seed}")
    mem.set_sink(prompts.system_chunk(backend))
    vs = VisualStream(backend, VisualConfig())
    for i in range(int(ASK_AT)):                                  # 1 fps, as the runtime samples
        frame = scene.render(float(i))
        for chunk in vs.push(frame, float(i)):
            mem.append(chunk)
        if perceiver is not None:
            obs = perceiver.process(VideoFrame(frame, float(i), time.time(), i))[0]
            if obs.perceived:
                mem.annotate(obs.t, prompts.perception_note(obs))
    sealed_until = max((s.t1 for s in mem.segments), default=0.0)
    rows = []
    for sign in scene.signs:
        if sign.t1 > sealed_until or sign.t1 - sign.t0 < 2.0:        # only what is wholly off the device
            continue
        view = mem.context(f"When did the sign say {sign.word}?", ASK_AT)
        assert view.retrieval is not None
        spans = {c.key: (c.t0, c.t1) for c in mem.candidates()}
        rankings = dict(view.retrieval.scores)
        rankings["fusion"] = fusion(view.retrieval.scores)
        covering = [k for k, (a, b) in spans.items() if a < sign.t1 and sign.t0 < b]
        row: dict = {"seed": seed, "word": sign.word, "shown": [sign.t0, sign.t1], "candidates": len(spans),
                     "covering": len(covering)}
        for name in SIGNALS:
            ranks = [r for r, k in enumerate(rankings.get(name, [])) if k in covering]
            row[name] = ranks[0] + 1 if ranks else None
        rows.append(row)
    mem.close()
    return rows


def cell(rows: list[dict], name: str, k: int) -> str:
    if name == "chance":                       # a random ranking: P(one of the first k covers the sign), mean
        p = [1.0 - math.comb(r["candidates"] - r["covering"], k) / math.comb(r["candidates"], k) for r in rows]
        return f"{sum(p):.1f}/{len(rows)}"
    return f"{sum(r[name] is not None and r[name] <= k for r in rows)}/{len(rows)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="81,82,83,84,85", help="held-out scene seeds (comma-separated)")
    p.add_argument("--out", help="write the rows as JSON lines here")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        print(f"bad --seeds {args.seeds!r}: expected integers separated by commas", file=sys.stderr)
        return 2
    start = time.perf_counter()
    backend = load_backend("tiny-vl", "cpu", default_cache_dir())
    embedder = load_embedder()
    perceiver = LitePerceiver(PerceptionConfig())
    variants = {"with perception text": perceiver, "no segment text (ablation)": None}
    rows: dict[str, list[dict]] = {}
    for name, perc in variants.items():
        rows[name] = []
        for seed in seeds:
            got = run_scene(seed, backend, embedder, perc)
            rows[name] += [{**r, "variant": name} for r in got]
            print(f"{name}, seed {seed}: {len(got)} questions", file=sys.stderr)
    header = (f"tiny-vl retrieval signals, 'When did the sign say WORD?' at 0:59, 256-token window; "
              f"{len(seeds)} held-out scenes (seeds {args.seeds}); {platform.machine()}, {os.cpu_count()} cores, "
              f"{time.perf_counter() - start:.0f} s")
    write_rows(args.out, header, [r for rs in rows.values() for r in rs])
    table = [[f"{variant}: {name}", cell(rs, name, 1), cell(rs, name, 3)]
             for variant, rs in rows.items() for name in (*SIGNALS, "chance")]
    print_table(header, ["signal", "top-1", "top-3"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
