"""onlooker bench soak: hours of stream through the real pipeline, fast, with the process's resources sampled.

A synthetic stream (`synthetic:soak-<H>h`: the long scene's sign, a new word every 10 s, shapes moving) is
replayed as fast as processing allows through the same session a user runs (source -> perception ->
memory -> runtime -> index and segment files on disk), with one question about the past every stream-hour.
Every `--sample-min` stream-minutes it records: the process's RSS (and its perceiver child's), threads, open
files, device memory (CUDA), the memory's host and disk bytes, and the session folder's real size on disk.

Flat means (printed as a verdict): RSS grows under 5% from the first stream-hour (a shorter run: its first
third) to the end, read off a least-squares line through the open session's samples (one sample swings by
+-10% with the allocator's trims, so first-to-last would measure noise); threads and open
files do not grow; device memory is flat; the session folder grows at a steady rate (its growth in the last
quarter of the run within 25% of its mean rate after the first hour), the GB per stream-hour reported.

    python -m bench.soak --hours 8 --fps 0.1 --out-dir soak-lite              # lite on the CPU
    python -m bench.soak --size 7b --device cuda --hours 4 --fps 0.5 --tokenizer DIR --out-dir soak-7b
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchError, write_rows
from bench.ingest_shapes import SIZES


def _status_kb(pid: int | str, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.stat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_mb() -> dict:
    """Where RSS goes: CPU tensors reachable from Python, Python objects, and glibc's heap (in use vs free but
    kept, which is fragmentation), so that a growing RSS can be told apart."""
    import gc
    import warnings

    import torch
    objs = gc.get_objects()
    with warnings.catch_warnings():                  # isinstance on deprecated module proxies warns
        warnings.simplefilter("ignore")
        cpu = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in objs
               if isinstance(t, torch.Tensor) and t.device.type == "cpu" and not t.is_meta}
    row = {"cpu_tensor_mb": sum(cpu.values()) / 2**20, "py_objects": len(objs)}
    try:
        info = ctypes.CDLL("libc.so.6").mallinfo2
        info.restype = _MallInfo2
        m = info()
        row.update(malloc_used_mb=(m.uordblks + m.hblkhd) / 2**20, malloc_free_mb=m.fordblks / 2**20)
    except (OSError, AttributeError):
        pass
    return row


class Sampler:
    """Called with every event the session emits (on the runtime thread); samples on stream-minute marks."""

    def __init__(self, every_min: float, session_dir_of, progress) -> None:
        self.every_s = every_min * 60.0
        self.next_t = 0.0
        self.rows: list[dict] = []
        self.session = None
        self.session_dir_of = session_dir_of
        self.progress = progress
        self.start = time.perf_counter()

    def __call__(self, event) -> None:
        s = self.session
        if s is None:
            return
        t = s.runtime.stream_t
        if t >= self.next_t:
            self.sample(t)
            self.next_t += self.every_s
        if type(event).__name__ == "Answer":
            self.rows[-1].setdefault("answers", []).append({"t": event.t, "text": event.text,
                                                            "ttft_ms": getattr(event, "ttft_ms", None)})

    def sample(self, t: float) -> None:
        s = self.session
        import torch
        children = mp.active_children()
        ms = s.runtime.memory.stats
        row = {"stream_h": t / 3600.0, "wall_s": time.perf_counter() - self.start,
               "rss_mb": _status_kb("self", "VmRSS") / 1024,
               "child_rss_mb": sum(_status_kb(c.pid, "VmRSS") for c in children) / 1024,
               "threads": _status_kb("self", "Threads"), "open_files": len(os.listdir("/proc/self/fd")),
               "device_mb": torch.cuda.memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
               "host_mb": ms.host_bytes / 2**20, "disk_mb_accounted": ms.disk_bytes / 2**20,
               "folder_mb": folder_bytes(self.session_dir_of(s)) / 2**20,
               "segments": ms.segments_sealed + len(s.runtime.memory.window), **heap_mb()}
        self.rows.append(row)
        self.progress(row)


def rss_trend(rows: list[dict]) -> tuple[float, float]:
    """RSS at the first and the last row's stream time on the least-squares line through the rows."""
    xs, ys = [r["stream_h"] for r in rows], [r["rss_mb"] for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return my + slope * (xs[0] - mx), my + slope * (xs[-1] - mx)


def verdict(rows: list[dict]) -> tuple[list[str], dict]:
    """The flatness checks of the module docstring, as lines, and the figures they rest on."""
    base_h = min(1.0, rows[-1]["stream_h"] / 3)      # the first hour warms up (a shorter run: its first third)
    after = [r for r in rows if r["stream_h"] >= base_h - 1e-9] or rows
    first, last = after[0], rows[-1]
    span_h = last["stream_h"] - first["stream_h"]
    rss_start, rss_end = rss_trend([r for r in after if not r.get("closed")] or after)
    rss_growth = (rss_end - rss_start) / max(rss_start, 1e-9)
    rate = (last["folder_mb"] - first["folder_mb"]) / 1024 / span_h if span_h > 0 else 0.0
    quarter = [r for r in rows if r["stream_h"] >= last["stream_h"] - max(span_h / 4, 1e-9)]
    q_span = quarter[-1]["stream_h"] - quarter[0]["stream_h"]
    q_rate = (quarter[-1]["folder_mb"] - quarter[0]["folder_mb"]) / 1024 / q_span if q_span > 0 else 0.0
    dev = [r["device_mb"] for r in after]
    figs = {"rss_growth_after_1h": rss_growth, "gb_per_stream_hour": rate, "gb_per_stream_hour_last_quarter": q_rate,
            "threads": (first["threads"], max(r["threads"] for r in after)),
            "open_files": (first["open_files"], max(r["open_files"] for r in after)),
            "device_mb": (min(dev), max(dev))}
    ok = {"rss": rss_growth < 0.05,
          "threads": figs["threads"][1] <= figs["threads"][0],
          "open_files": figs["open_files"][1] <= figs["open_files"][0],
          "device": max(dev) - min(dev) <= max(64.0, 0.02 * max(dev)),
          "disk": rate == 0 or abs(q_rate - rate) <= 0.25 * rate}
    peak = max(r["rss_mb"] for r in after)
    lines = [f"RSS trend {rss_start:.0f} MB at {first['stream_h']:.1f} h -> {rss_end:.0f} MB at the end "
             f"({100 * rss_growth:+.1f}%; samples {first['rss_mb']:.0f} -> {last['rss_mb']:.0f}, peak {peak:.0f}): "
             f"{'flat' if ok['rss'] else 'GROWS'}",
             f"threads {figs['threads'][0]} -> at most {figs['threads'][1]}, open files {figs['open_files'][0]} -> "
             f"at most {figs['open_files'][1]}: {'flat' if ok['threads'] and ok['open_files'] else 'GROWS'}",
             f"device memory {min(dev):.0f}-{max(dev):.0f} MB: {'flat' if ok['device'] else 'GROWS'}",
             f"session folder {rate:.3f} GB per stream-hour after the first hour, {q_rate:.3f} in the last "
             f"quarter: {'steady' if ok['disk'] else 'NOT STEADY'}"]
    figs["ok"] = all(ok.values())
    return lines, figs


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Four panels (RSS, session folder, threads and open files, device memory) against stream hours, drawn
    with OpenCV (no plotting library needed)."""
    import cv2
    import numpy as np
    W, H, pad = 1200, 800, 60
    img = np.full((H, W, 3), 255, np.uint8)
    cv2.putText(img, title[:110], (20, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    panels = [("RSS MB (process, perceiver child dashed)", ["rss_mb", "child_rss_mb"]),
              ("session folder MB on disk", ["folder_mb"]), ("threads, open files (dashed)", ["threads", "open_files"]),
              ("device memory MB", ["device_mb"])]
    xs = [r["stream_h"] for r in rows]
    xmax = max(xs[-1], 1e-6)
    for i, (name, keys) in enumerate(panels):
        x0, y0 = pad + (i % 2) * (W // 2), 50 + (i // 2) * ((H - 50) // 2)
        w, h = W // 2 - pad - 20, (H - 50) // 2 - pad
        vals = [r[k] for k in keys for r in rows]
        vmax = max(max(vals) * 1.1, 1.0)
        cv2.rectangle(img, (x0, y0), (x0 + w, y0 + h), (0, 0, 0), 1)
        cv2.putText(img, name, (x0, y0 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, f"{vmax:.0f}", (x0 - 55, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, "0", (x0 - 15, y0 + h), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{xmax:.1f} stream-h", (x0 + w - 90, y0 + h + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (0, 0, 0), 1)
        for j, k in enumerate(keys):
            pts = [(x0 + int(w * x / xmax), y0 + h - int(h * r[k] / vmax)) for x, r in zip(xs, rows)]
            colour = (200, 60, 30) if j == 0 else (30, 120, 220)
            for a, b in zip(pts, pts[1:]):
                if j == 0 or (a[0] // 6) % 2 == 0:
                    cv2.line(img, a, b, colour, 2, cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench soak", description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=8.0, help="stream hours (default 8)")
    p.add_argument("--fps", type=float, default=0.1, help="frames sampled per stream second (default 0.1)")
    p.add_argument("--sample-min", type=float, default=10.0, help="sample every this many stream-minutes")
    p.add_argument("--model", default="lite", help="lite (default) or a model directory")
    p.add_argument("--size", choices=list(SIZES), help="instead of --model: a Qwen2.5-VL-7B, "
                   "Qwen3-VL-8B or tiny shape, random weights")
    p.add_argument("--tokenizer", help="with --size: a ChatML tokenizer directory (default: the lite model's)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--window", type=int, help="recent window in tokens (default: the config's)")
    p.add_argument("--int8", action="store_true", help="quantize sealed segments to int8")
    p.add_argument("--host-mb", type=float, help="sealed segments in RAM before they spill (default: the config's)")
    p.add_argument("--disk-mb", type=float, help="segment files before the oldest KV is dropped (default: the "
                   "config's)")
    p.add_argument("--out-dir", default="soak-out", help="where soak.jsonl and soak.png go (default soak-out)")
    p.add_argument("--data-dir", help="where the session is stored (default: a temporary folder, removed)")
    args = p.parse_args(argv)
    if not 0 < args.hours <= 1000 or not 0 < args.fps <= 30 or args.sample_min <= 0:
        raise BenchError("--hours must be in (0, 1000], --fps in (0, 30], --sample-min > 0")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="onlooker-soak-") as tmp:
        return run_soak(args, out, Path(args.data_dir or tmp))


def run_soak(args, out: Path, data_dir: Path) -> int:
    import torch

    from assistant.config import AssistantConfig
    from assistant.session import open_session
    from assistant.store import SessionStore
    backend = None
    if args.size:
        from bench.ingest import build_backend, default_tokenizer
        backend = build_backend(args.size, args.device, Path(args.tokenizer) if args.tokenizer else default_tokenizer())
    cfg = AssistantConfig(source=f"synthetic:soak-{args.hours:g}h", model=args.model, device=args.device,
                          headless=True, audio=False, data_dir=str(data_dir))
    cfg.perception.sample_fps = args.fps
    cfg.perception.realtime = False
    cfg.perception.beside_vlm = "latest"          # perception never holds back the model's ingest
    cfg.memory.quantize = args.int8
    if args.window:
        cfg.memory.window_tokens = args.window
    if args.host_mb is not None:
        cfg.memory.host_mb = args.host_mb
    if args.disk_mb is not None:
        cfg.memory.disk_mb = args.disk_mb
    cfg.validate()
    asks = [(h * 3600.0 + 1.0, "What did the sign say 30 minutes ago?") for h in range(1, int(args.hours) + 1)
            if h * 3600.0 + 1.0 < args.hours * 3600.0]
    store = SessionStore(data_dir)

    partial = out / "soak.partial.jsonl"             # row by row: a run cut short still leaves its samples
    partial.unlink(missing_ok=True)

    def progress(row: dict) -> None:
        with open(partial, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"  {row['stream_h']:.2f} h  wall {row['wall_s']:.0f} s  RSS {row['rss_mb']:.0f} MB  folder "
              f"{row['folder_mb']:.0f} MB  threads {row['threads']}  files {row['open_files']}  host KV "
              f"{row['host_mb']:.0f} MB  CPU tensors {row['cpu_tensor_mb']:.0f} MB  malloc used "
              f"{row.get('malloc_used_mb', 0):.0f} free {row.get('malloc_free_mb', 0):.0f} MB", file=sys.stderr)

    sampler = Sampler(args.sample_min, lambda s: store.session_dir(s.session_id), progress)
    session = open_session(cfg, asks, sampler, store=store, backend=backend)
    sampler.session = session
    result = session.run()
    summary = session.close(result).fields
    sampler.sample(session.runtime.stream_t)
    sampler.rows[-1]["closed"] = True                # after close: not part of the running session's trend
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or "cpu")
    # ONLOOKER_COMMIT names the commit where .git is not the tree's own (a copy sent to another machine)
    commit = os.environ.get("ONLOOKER_COMMIT") or subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
        cwd=Path(__file__).resolve().parents[1]).stdout.strip() or "unknown"
    header = (f"bench soak: {session.backend.name}, {args.hours:g} stream-hours at {args.fps:g} frames/s, "
              f"{device} ({os.cpu_count()} cores), commit {commit}, torch {torch.__version__}, "
              f"{time.strftime('%Y-%m-%d')}")
    lines, figs = verdict(sampler.rows)
    print(format_table(header, sampler.rows))
    print()
    print("\n".join(lines))
    print(f"wall {summary['wall_s']:.0f} s for {args.hours:g} stream-hours; answers "
          f"{sum(len(r.get('answers', [])) for r in sampler.rows)}; error {summary.get('error')}")
    write_rows(str(out / "soak.jsonl"), header, sampler.rows + [{"verdict": lines, **figs, "summary": summary}])
    plot(sampler.rows, out / "soak.png", header)
    print(f"rows: {out / 'soak.jsonl'}, plot: {out / 'soak.png'}", file=sys.stderr)
    return 0 if figs["ok"] and not summary.get("error") else 1


def format_table(header: str, rows: list[dict]) -> str:
    lines = [header, "", "| stream h | wall s | RSS MB | perceiver MB | threads | open files | device MB | "
             "host MB | session folder MB | segments | CPU tensors MB | malloc free MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stream_h']:.2f} | {r['wall_s']:.0f} | {r['rss_mb']:.0f} | {r['child_rss_mb']:.0f} | "
                     f"{r['threads']} | {r['open_files']} | {r['device_mb']:.0f} | {r['host_mb']:.0f} | "
                     f"{r['folder_mb']:.1f} | {r['segments']} | {r.get('cpu_tensor_mb', 0):.0f} | "
                     f"{r.get('malloc_free_mb', 0):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
