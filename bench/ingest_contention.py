"""Why does perception beside the model slow saturated GPU ingest? The same model and stream, one run, with:

    alone             nothing beside the model (bench ingest's `onlooker`)
    perception        the lite perceivers in their child process, as the runtime runs them (`onlooker+perception`)
    burn1, burn2      one or two child processes spinning a pure-Python loop: CPU load with no perceiving
    alone-split       nothing beside, the launching thread kept off the last two CPUs (and their siblings)
    perception-split  the perceivers' child on those two CPUs, the launching thread on the others
    burn2-split       the two spinning children on those two CPUs, the launching thread on the others
    alone-pin1        nothing beside, the launching thread on CPU 0 alone
    perception-2fps   the perceivers at most 2 frames per wall second (what a live 2-fps stream asks of them)
    *-t1              the same with torch's CPU pool at one thread on the launching thread (what the runtime and
                      bench ingest now do on a GPU: model.backend.launching_thread); the others keep the pool

    python -m bench.ingest_contention [--repeat 2] [--max-wall-s 25] [--variants ...] [--tokenizer DIR]

Variants are interleaved (A B C A B C) so drift of the machine falls on all alike. Besides frames/s the table
gives the launching thread's own CPU time per frame: if it rises with a load beside, that thread runs slower
(shared cores, caches); if only the wall time rises, it waits (descheduled, or on a lock).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import write_rows
from bench.ingest import build_backend, default_tokenizer, run_config
from bench.ingest_beside import Beside, Burner, pin
from bench.ingest_feed import MEDIA, Prepared, load_frames
from bench.ingest_shapes import SIZES

VARIANTS = ("alone", "perception", "burn1", "burn2", "alone-split", "perception-split", "burn2-split", "alone-pin1",
            "perception-2fps", "alone-t1", "perception-t1", "burn1-t1")


def siblings(cpu: int) -> set[int]:
    """The logical CPUs sharing a core with `cpu` (itself alone when the topology is not exposed)."""
    path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
    try:
        out: set[int] = set()
        for part in path.read_text().strip().split(","):
            a, _, b = part.partition("-")
            out.update(range(int(a), int(b or a) + 1))
        return out
    except (OSError, ValueError):
        return {cpu}


def split_cpus() -> tuple[list[int], list[int]]:
    """(the last two CPUs, every CPU sharing no core with them)."""
    cpus = sorted(os.sched_getaffinity(0))
    far = cpus[-2:]
    near_far = set().union(*(siblings(c) for c in far))
    return far, [c for c in cpus if c not in near_far]


def plan(variant: str, far: list[int], main: list[int]):
    """(bench ingest's config name, a factory for what runs beside, the launching thread's CPUs)."""
    variant = variant.removesuffix("-t1")
    split = variant.endswith("-split")
    base = variant.removesuffix("-split").removesuffix("-pin1")
    if variant == "alone-pin1":
        return "onlooker", None, main[:1] or [0]
    beside = {"alone": None,
              "perception": lambda: Beside(cpus=far if split else None),
              "perception-2fps": lambda: Beside(max_fps=2.0),
              "burn1": lambda: Burner(1, cpus=far if split else None),
              "burn2": lambda: Burner(2, cpus=far if split else None)}[base]
    return ("onlooker+perception" if base.startswith("perception") else "onlooker"), beside, (main if split else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--max-wall-s", type=float, default=25.0, help="time cap per run")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--tokenizer")
    p.add_argument("--device", default="cuda")
    p.add_argument("--size", default="7b", choices=list(SIZES))
    p.add_argument("--out")
    args = p.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",")]
    for v in variants:
        if v not in VARIANTS:
            print(f"error: unknown variant {v!r} ({', '.join(VARIANTS)})", file=sys.stderr)
            return 2
    tok = Path(args.tokenizer) if args.tokenizer else default_tokenizer()
    media = sorted(MEDIA.glob("*.mp4"))
    frames, _ = load_frames(media, 2.0)
    backend = build_backend(args.size, args.device, tok)
    prepared = Prepared(backend, frames, args.device.startswith("cuda"))   # before the clock: only what is

    def feed() -> Prepared:                                                 # beside the model differs
        return prepared
    vit = sum(q.numel() for q in backend.model.model.visual.parameters())
    lm = backend.language_model()
    counts = (vit, sum(q.numel() for q in lm.parameters()) - lm.embed_tokens.weight.numel())
    far, main_cpus = split_cpus()
    every = sorted(os.sched_getaffinity(0))
    threads = torch.get_num_threads()
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    header = (f"bench ingest_contention: {backend.name}, {gpu}, {len(every)} CPUs "
              f"({platform.processor() or platform.machine()}, kernel {platform.release()}), "
              f"split: beside on {far}, launching thread on {len(main_cpus)} CPUs; cap {args.max_wall_s:g} s per run; "
              f"torch {torch.__version__}")
    print(header, file=sys.stderr)
    common = dict(minutes=args.minutes, fps=2.0, device=args.device, window=4096, batch=4, wall_cap_s=60,
                  param_counts=counts, frames=frames)
    run_config("window", backend, feed, **{**common, "minutes": 16 / 60})      # warm-up, not recorded
    rows = []
    for _ in range(args.repeat):
        for v in variants:
            name, factory, cpus = plan(v, far, main_cpus)
            pin(cpus)
            torch.set_num_threads(1 if v.endswith("-t1") else threads)
            try:
                row = run_config(name, backend, feed, max_wall_s=args.max_wall_s, beside_factory=factory, **common)
            finally:
                pin(every)
                torch.set_num_threads(threads)
            row["variant"] = v
            rows.append(row)
            print(f"  {v}: {row['frames_per_s']:.1f} frames/s, launching thread "
                  f"{1000 * row['main_cpu_s'] / max(1, row['frames']):.1f} ms CPU per frame", file=sys.stderr)
    print(header + "\n\n" + table(rows, variants))
    write_rows(args.out, header, rows)
    return 0


def table(rows: list[dict], variants: list[str]) -> str:
    base = float(np.median([r["frames_per_s"] for r in rows if r["variant"] == "alone"] or [np.nan]))
    lines = ["| variant | frames/s per run | median | vs alone | launching thread CPU ms per frame | its CPU share "
             "of the wall | perceived (skipped) |", "|---|---|---|---|---|---|---|"]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        fps = [r["frames_per_s"] for r in rs]
        med = float(np.median(fps))
        cpu_ms = float(np.median([1000 * r["main_cpu_s"] / max(1, r["frames"]) for r in rs]))
        share = float(np.median([r["main_cpu_s"] / r["wall_s"] for r in rs]))
        seen = "-" if rs[0].get("perceived") is None else \
            f"{sum(r['perceived'] for r in rs)} ({sum(r['perception_skipped'] for r in rs)})"
        lines.append(f"| {v} | {' / '.join(f'{x:.1f}' for x in fps)} | {med:.1f} | {med / base:.2f}x | "
                     f"{cpu_ms:.1f} | {100 * share:.0f}% | {seen} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
