"""`onlooker bench memory`: questions about the past of a long stream, answered from three memories.

The stream: a sign whose word changes every 6-12 s (words drawn from the model's own vocabulary,
upper-cased, all distinct), one lite observation per change, far longer than the window. At the end
of the stream, questions about past moments, of four kinds:

    at      "What did the sign read at 12:34?"                  -> the word then
    ago     "What did the sign read 7 minutes and 5 seconds ago?" -> the word then
    when    "When did the sign read MANGO?"                      -> a time inside MANGO's interval
    before  "What did the sign read just before MANGO?"         -> the word before

Configurations, all on the same model, stream and questions:
    full          every observation's KV on the device, no eviction (the upper bound on memory use)
    window        sink + recent window only (StreamingVLM-style)
    text          the hierarchy's retrieval and the same restated text beside the question, no retrieved KV
                  placed (the fair baseline: the same help as the hierarchy, without its KV)
    hierarchy     sink + retrieved segments + window, the default settings (host tier spills to disk)
    ...           variants: original positions, int8 + pruning, no restated text (KV only)

`full` and `window` have no retrieval and so nothing to restate: they get the plain question. The hierarchy
and `text` get the same retrieval and restated text; the margin between them is what the KV adds. Prints one
table; `--out` writes JSON lines. Answer quality on held-out scenes through the whole pipeline is
`onlooker eval`.
"""

from __future__ import annotations

import argparse
import logging
import platform
import random
import re
import statistics
import sys
import time
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from bench.common import BenchError, write_rows
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from reasoning import prompts
from reasoning.answerer import answer_job
from reasoning.prompts import format_time

log = logging.getLogger("onlooker.bench")


@dataclass
class Probe:
    kind: str
    question: str
    target: int            # index of the observation the question is about
    expect_word: str | None
    expect_span: tuple[float, float] | None = None


def stream_words(tokenizer, n: int, rng: random.Random) -> list[str]:
    vocab = [t[1:] for t in tokenizer.get_vocab() if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower()
             and 5 <= len(t) - 1 <= 8]
    vocab = sorted(set(vocab))
    return [w.upper() for w in rng.sample(vocab, n)]


def make_stream(tokenizer, n: int, seed: int) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    words = stream_words(tokenizer, n, rng)
    t, out = 2.0, []
    for w in words:
        out.append((t, w))
        t += rng.randint(6, 12)
    return out


def observation(word: str) -> str:
    return f'Text on screen: "{word}".'


def make_probes(stream: list[tuple[float, str]], now: float, n: int, seed: int) -> list[Probe]:
    rng = random.Random(seed + 1)
    ends = [stream[i + 1][0] for i in range(len(stream) - 1)] + [now]
    probes = []
    kinds = ["at", "at", "ago", "when", "before"]
    for j in range(n):
        kind = kinds[j % len(kinds)]
        i = rng.randrange(1 if kind == "before" else 0, len(stream) - 1)
        t0, word = stream[i]
        t1 = ends[i]
        inside = rng.randint(int(t0), int(t1) - 1)
        if kind == "at":
            probes.append(Probe(kind, f"What did the sign read at {format_time(inside)}?", i, word))
        elif kind == "ago":
            d = int(now - inside)
            m, s = divmod(d, 60)
            ago = f"{m} minutes and {s} seconds ago" if m else f"{s} seconds ago"
            probes.append(Probe(kind, f"What did the sign read {ago}?", i, word))
        elif kind == "when":
            probes.append(Probe(kind, f"When did the sign read {word}?", i, None, (t0, t1)))
        else:
            probes.append(Probe(kind, f"What did the sign read just before {stream[i + 1][1]}?", i, word))
    return probes


_CLOCK = re.compile(r"\b(?:(\d+):)?(\d{1,2}):(\d{2})\b")


def correct(probe: Probe, answer: str) -> bool:
    if probe.expect_word is not None:
        return probe.expect_word.lower() in answer.lower()
    assert probe.expect_span is not None
    t0, t1 = probe.expect_span
    for h, m, s in _CLOCK.findall(answer):
        t = int(h or 0) * 3600 + int(m) * 60 + int(s)
        if t0 - 1 <= t <= t1:
            return True
    return False


def configurations(window: int) -> dict[str, MemoryConfig]:
    hier = MemoryConfig(window_tokens=window, host_mb=64.0)
    return {
        "full": MemoryConfig(window_tokens=1_000_000, retrieval=False),
        "window": MemoryConfig(window_tokens=window, retrieval=False),
        "text": replace(hier, place_kv=False),
        "hierarchy": hier,
        "hierarchy-original-pos": replace(hier, positions="original"),
        "hierarchy-int8-keep0.75": replace(hier, quantize=True, keep_ratio=0.75),
        "hierarchy-kv-only": replace(hier, restate=False),
    }


def run_config(name: str, cfg: MemoryConfig, backend, embedder, stream, probes, now: float,
               max_new_tokens: int) -> dict:
    mem = HierarchicalMemory(backend, cfg, embedder=embedder if cfg.retrieval else None, label=name)
    mem.set_sink(prompts.system_chunk(backend))
    t_start = time.monotonic()
    for t, w in tqdm(stream, desc=f"{name}: ingest", unit="obs", file=sys.stderr, leave=False):
        mem.append(prompts.text_observation_chunk(backend, t, observation(w)))
    ingest_s = time.monotonic() - t_start
    resident_device = mem.device_bytes()
    hits, recalled_hits, ttft, total = [], [], [], []
    by_kind: dict[str, list[bool]] = {}
    signal_hits: dict[str, list[bool]] = {}
    for p in tqdm(probes, desc=f"{name}: questions", unit="q", file=sys.stderr, leave=False):
        asked = time.monotonic()
        view = mem.context(p.question, now) if cfg.retrieval else mem.context()
        r = view.retrieval
        job = answer_job(backend, view, p.question, now, latest=None, restate=cfg.restate,
                         max_new_tokens=max_new_tokens, asked_at=asked)
        job.run()
        ok = correct(p, job.text)
        hits.append(ok)
        by_kind.setdefault(p.kind, []).append(ok)
        ttft.append(job.ttft_ms or 0.0)
        total.append(job.total_ms or 0.0)
        if r is not None:
            target_t = stream[p.target][0]
            recalled_hits.append(any(abs(c.t0 - target_t) < 1e-6 for c in r.recalled))
            if p.kind == "when":
                for sig, ranking in r.scores.items():
                    top = [k for k in ranking[:3]]
                    keys = {c.key: c.t0 for c in mem.candidates()}
                    signal_hits.setdefault(sig, []).append(any(abs(keys[k] - target_t) < 1e-6 for k in top))
    st = mem.stats
    stream_h = now / 3600
    row = {
        "config": name,
        "accuracy": sum(hits) / len(hits),
        "by_kind": {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()},
        "retrieval_hit": (sum(recalled_hits) / len(recalled_hits)) if recalled_hits else None,
        "signal_hit_at_3_when": {k: round(sum(v) / len(v), 3) for k, v in signal_hits.items()},
        "device_kv_mb": max(resident_device, st.device_peak_bytes) / 2**20,
        "device_resident_mb": resident_device / 2**20,
        "host_mb": st.host_bytes / 2**20,
        "disk_mb": st.disk_bytes / 2**20,
        "host_mb_per_stream_h": st.host_bytes / 2**20 / stream_h,
        "disk_mb_per_stream_h": st.disk_bytes / 2**20 / stream_h,
        "segments_sealed": st.segments_sealed,
        "segments_spilled": st.segments_spilled,
        "tokens_pruned": st.tokens_pruned,
        "ttft_ms_median": statistics.median(ttft),
        "answer_ms_median": statistics.median(total),
        "ingest_s": ingest_s,
    }
    mem.close()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench memory", description=__doc__.splitlines()[0])
    p.add_argument("--observations", type=int, default=320, help="observations in the stream")
    p.add_argument("--questions", type=int, default=120)
    p.add_argument("--window", type=int, default=256, help="recent window in tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=32, help="answer length cap")
    p.add_argument("--configs", help="comma-separated subset of the configurations")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return run_memory_bench(p.parse_args(argv))


def run_memory_bench(args) -> int:
    from assistant.store import default_cache_dir
    from memory.embed import load_embedder
    from model.causal_lm import load_lite_backend

    if args.observations < 20 or args.questions < 1:
        raise BenchError("bench memory needs --observations >= 20 and --questions >= 1")
    torch.manual_seed(args.seed)
    backend = load_lite_backend(default_cache_dir())
    embedder = load_embedder()
    stream = make_stream(backend.tokenizer, args.observations, args.seed)
    now = stream[-1][0] + 8.0
    probes = make_probes(stream, now, args.questions, args.seed)
    configs = configurations(args.window)
    names = [c.strip() for c in args.configs.split(",")] if args.configs else list(configs)
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise BenchError(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(configs)}")
    tokens = sum(prompts.text_observation_chunk(backend, t, observation(w)).num_tokens for t, w in stream)
    header = (f"bench memory: SmolLM2-135M-Instruct (CPU, {torch.get_num_threads()} threads, {platform.machine()}), "
              f"{len(stream)} observations ({tokens} tokens, {format_time(now)} of stream), {len(probes)} questions, "
              f"window {args.window} tokens, seed {args.seed}")
    print(header, file=sys.stderr)
    rows = []
    for name in names:
        rows.append(run_config(name, configs[name], backend, embedder, stream, probes, now, args.max_new_tokens))
        print(f"  {name}: accuracy {rows[-1]['accuracy']:.1%}", file=sys.stderr)
    full = next((r for r in rows if r["config"] == "full"), None)
    win = next((r for r in rows if r["config"] == "window"), None)
    for r in rows:
        r["device_vs_full"] = r["device_kv_mb"] / full["device_kv_mb"] if full else None
        r["accuracy_vs_window"] = (r["accuracy"] / win["accuracy"] if win and win["accuracy"] else None)
    print(format_table(header, rows))
    write_rows(args.out, header, rows)
    return 0


def format_table(header: str, rows: list[dict]) -> str:
    lines = [header, "",
             "| config | accuracy | at / ago / when / before | recalled target | device KV MB (vs full) | host MB | "
             "disk MB | host+disk MB per stream-hour | TTFT ms (median) | answer ms (median) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["by_kind"]
        kinds = " / ".join(f"{k.get(x, 0):.0%}" for x in ("at", "ago", "when", "before"))
        rec = f"{r['retrieval_hit']:.0%}" if r["retrieval_hit"] is not None else "-"
        host, disk, per_h = f"{r['host_mb']:.1f}", f"{r['disk_mb']:.1f}", \
            f"{r['host_mb_per_stream_h'] + r['disk_mb_per_stream_h']:.0f}"
        if r["retrieval_hit"] is None:      # baselines never read what left the device
            host = disk = per_h = "-"
        vs = f" ({r['device_vs_full']:.1%})" if r.get("device_vs_full") is not None else ""
        lines.append(f"| {r['config']} | {r['accuracy']:.1%} | {kinds} | {rec} | {r['device_kv_mb']:.1f}{vs} | "
                     f"{host} | {disk} | {per_h} | {r['ttft_ms_median']:.0f} | "
                     f"{r['answer_ms_median']:.0f} |")
    sig = [r for r in rows if r["signal_hit_at_3_when"]]
    if sig:
        r = sig[0]
        lines.append("")
        lines.append("content signals alone, target in top 3 for 'when' questions (" + r["config"] + "): " +
                     ", ".join(f"{k} {v:.0%}" for k, v in r["signal_hit_at_3_when"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
