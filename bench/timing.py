"""`onlooker bench timing`: do standing instructions fire once, on time, for each scripted event?

Synthetic streams (lite backend, CPU): a sign whose word changes every 6-15 s (now and then to
STOP) and people who come and go (0 <-> 1-2 people for 10-30 s). The streams go in as the lite
perceiver's observations (one per change, sampled at 1 s), scripted so the ground truth is exact and
no OCR time is spent. Changes happen at any moment; the stream is sampled once a second, so
seeing a change takes up to a second of stream time. Two standing instructions:

    'the sign says "STOP"'   events: the sign turns to STOP
    'a person appears'       events: the people count goes from 0 to 1 or more

An alert counts when it comes within `tolerance` seconds of stream time after an unmatched event of
its instruction; other alerts are false positives. Configurations, in one run:

    onlooker        Watcher: P(yes) probe on the cached context + perception evidence, hysteresis, cool-down
    probe-only      the same probe without perception evidence (what the model alone can tell)
    fixed-interval  baseline: after every segment, ask the model the yes/no question and decode the answer;
                    alert when the answer turns to yes
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from assistant.events import Alert, ObservationEvent, StreamEnded
from assistant.runtime import Runtime
from bench.common import BenchError, write_rows
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.observation import Observation
from reasoning import prompts
from reasoning.answerer import AnswerJob
from reasoning.config import ReasoningConfig
from reasoning.timing import TimingConfig

CONDITIONS = ['the sign says "STOP"', "a person appears"]
WORDS = ["APPLE", "RIVER", "CANDLE", "FOREST", "PIANO", "MANGO", "ROCKET", "TIGER", "SILVER", "OCEAN", "GARDEN",
         "BRIDGE", "LEMON", "CASTLE", "WINDOW", "DRAGON"]


@dataclass
class Stream:
    observations: list[Observation]              # one per change, typed as perception gives them
    events: dict[str, list[float]]               # condition -> event times
    duration: float


def make_stream(seed: int, duration: float = 300.0) -> Stream:
    rng = random.Random(seed)
    sign: list[tuple[float, str]] = []
    t, prev = 0.0, None
    while t < duration:
        word = "STOP" if prev != "STOP" and rng.random() < 0.2 else rng.choice([w for w in WORDS if w != prev])
        sign.append((t, word))
        prev = word
        t += rng.uniform(6, 15)          # changes fall between samples: seeing one takes up to a second
    people: list[tuple[float, int]] = []
    t, n = 0.0, 0
    while t < duration:
        people.append((t, n))
        t += rng.uniform(10, 30)
        n = 0 if n else rng.randint(1, 2)

    def at(series, s):
        cur = series[0][1]
        for ts, v in series:
            if ts <= s:
                cur = v
        return cur

    obs: list[Observation] = []
    for s in range(int(duration)):
        o = Observation(float(s), at(sign, s), people=at(people, s))
        if not o.same_as(obs[-1] if obs else None):
            obs.append(o)
    events = {CONDITIONS[0]: [ts for i, (ts, w) in enumerate(sign) if w == "STOP" and ts < duration],
              CONDITIONS[1]: [ts for i, (ts, c) in enumerate(people) if c > 0 and (i == 0 or people[i - 1][1] == 0)]}
    return Stream(obs, events, duration)


def score(alerts: list[tuple[str, float]], events: dict[str, list[float]], tolerance: float) -> dict:
    tp, fp, delays = 0, 0, []
    for cond, evs in events.items():
        unmatched = sorted(evs)
        for t in sorted(a for c, a in alerts if c == cond):
            hit = next((e for e in unmatched if e <= t <= e + tolerance), None)
            if hit is None:
                fp += 1
            else:
                unmatched.remove(hit)
                tp += 1
                delays.append(t - hit)
    n_events = sum(len(e) for e in events.values())
    fn = n_events - tp
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / n_events if n_events else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f1, "delays": delays}


def run_watcher(backend, stream: Stream, evidence: bool) -> tuple[list[tuple[str, float]], float]:
    out: list = []
    timing = TimingConfig(evidence_weight=0.7 if evidence else 0.0)
    mem = HierarchicalMemory(backend, MemoryConfig(window_tokens=512, use_embeddings=False))
    rt = Runtime(backend, mem, ReasoningConfig(), out.append, watches=CONDITIONS, timing=timing)
    for o in stream.observations:
        rt.submit(ObservationEvent(o))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    probe = statistics.median(rt.stats.probe_ms) if rt.stats.probe_ms else 0.0
    return [(a.condition, a.t) for a in out if isinstance(a, Alert)], probe


def run_fixed_interval(backend, stream: Stream) -> tuple[list[tuple[str, float]], float]:
    mem = HierarchicalMemory(backend, MemoryConfig(window_tokens=512, use_embeddings=False))
    mem.set_sink(prompts.system_chunk(backend))
    alerts, last_yes, times = [], dict.fromkeys(CONDITIONS, False), []
    for o in stream.observations:
        t = o.t
        mem.append(prompts.observation_chunk(backend, o))
        start = time.monotonic()
        for cond in CONDITIONS:
            job = AnswerJob(backend, mem.context(), prompts.probe_chunk(backend, t, cond), 3)
            while not job.done:
                job.step(3)
            yes = job.text.strip().lower().startswith("yes")
            if yes and not last_yes[cond]:
                alerts.append((cond, t))
            last_yes[cond] = yes
        times.append((time.monotonic() - start) * 1000)
    return alerts, statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench timing", description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=3, help="synthetic streams")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of stream each")
    p.add_argument("--tolerance", type=float, default=3.0, help="seconds after an event an alert may come")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--configs", help="comma-separated subset of onlooker,probe-only,fixed-interval")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return run_timing_bench(p.parse_args(argv))


def run_timing_bench(args) -> int:
    from assistant.store import default_cache_dir
    from model.causal_lm import load_lite_backend
    backend = load_lite_backend(default_cache_dir())
    streams = [make_stream(args.seed + i, args.duration) for i in range(args.streams)]
    n_events = sum(len(v) for s in streams for v in s.events.values())
    header = (f"bench timing: SmolLM2-135M-Instruct (CPU), {args.streams} synthetic streams x {args.duration:g} s, "
              f"{n_events} scripted events, instructions {CONDITIONS}, tolerance {args.tolerance:g} s, "
              f"seed {args.seed}")
    print(header, file=sys.stderr)
    configs = {"onlooker": lambda s: run_watcher(backend, s, True),
               "probe-only": lambda s: run_watcher(backend, s, False),
               "fixed-interval": lambda s: run_fixed_interval(backend, s)}
    names = [c.strip() for c in args.configs.split(",")] if args.configs else list(configs)
    rows = []
    for name in names:
        if name not in configs:
            raise BenchError(f"unknown configuration {name!r}; choose from {', '.join(configs)}")
        total = {"tp": 0, "fp": 0, "fn": 0, "delays": []}
        probe_ms, wall = [], time.monotonic()
        for s in tqdm(streams, desc=name, unit="stream", file=sys.stderr, leave=False):
            alerts, ms = configs[name](s)
            sc = score(alerts, s.events, args.tolerance)
            for k in ("tp", "fp", "fn"):
                total[k] += sc[k]
            total["delays"] += sc["delays"]
            probe_ms.append(ms)
        tp, fp, fn = total["tp"], total["fp"], total["fn"]
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        d = total["delays"]
        rows.append({"config": name, "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0,
                     "tp": tp, "fp": fp, "fn": fn, "delay_mean_s": statistics.mean(d) if d else None,
                     "delay_median_s": statistics.median(d) if d else None,
                     "check_ms_median": statistics.median(probe_ms), "wall_s": time.monotonic() - wall})
        print(f"  {name}: F1 {rows[-1]['f1']:.2f}", file=sys.stderr)
    print(format_table(header, rows))
    write_rows(args.out, header, rows)
    return 0


def format_table(header: str, rows: list[dict]) -> str:
    def s(v) -> str:
        return "-" if v is None else f"{v:.2f}"

    lines = [header, "", "| config | precision | recall | F1 | alerts right / false / missed | delay mean s | "
             "delay median s | check per chunk ms (median) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1']:.2f} | {r['tp']} / "
                     f"{r['fp']} / {r['fn']} | {s(r['delay_mean_s'])} | {s(r['delay_median_s'])} | "
                     f"{r['check_ms_median']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
