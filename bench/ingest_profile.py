"""`bench ingest --profile`: where a configuration's ingest time goes, from torch's profiler.

Runs the configuration for a short stream under torch.profiler (CPU and CUDA activity) and prints: the wall
time, the GPU's busy time (the union of its kernels' intervals: how much of the wall the GPU works), and the top
operators by their own CPU time and by their own GPU time, with a row per user-annotated region
(`record_function` names such as `visual.encode` and `memory.append` where the code marks them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch


def _busy_s(events) -> float:
    """Seconds in which at least one GPU kernel ran (overlapping kernels counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events
                   if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA)
    busy, end = 0.0, -1.0
    for s, e in spans:
        if s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return busy / 1e6


def _regions() -> list[tuple[Any, str]]:
    """The steps of ingest, wrapped in record_function while profiling (the product code is not annotated)."""
    from memory import views
    from memory.manager import HierarchicalMemory
    from memory.segment_store import SegmentStore
    from model.qwen_vl import QwenVLBackend
    from perception.visual import VisualStream
    return [(VisualStream, "push_group"), (VisualStream, "_encode"), (QwenVLBackend, "encode_patches"),
            (HierarchicalMemory, "append"), (views, "prefill_or_shrink"), (HierarchicalMemory, "_evict"),
            (HierarchicalMemory, "_seal"), (HierarchicalMemory, "_checkpoint"), (SegmentStore, "add"),
            (SegmentStore, "checkpoint")]


@contextlib.contextmanager
def _annotated(regions: list[tuple[Any, str]]):
    saved = [(cls, attr, cls.__dict__[attr]) for cls, attr in regions]
    for cls, attr, fn in saved:
        def wrapped(*a, _fn=fn, _label=f"onlooker:{cls.__name__}.{attr}", **k):
            with torch.profiler.record_function(_label):
                return _fn(*a, **k)
        setattr(cls, attr, wrapped)
    try:
        yield
    finally:
        for cls, attr, fn in saved:
            setattr(cls, attr, fn)


def profile(name: str, run: Callable[[], dict], top: int = 20) -> str:
    """Run `run()` (one configuration over a short stream) under the profiler; a markdown summary."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with _annotated(_regions()), torch_profile(activities=acts) as prof:
        t = time.perf_counter()
        row = run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
    events = prof.events()
    busy = _busy_s(events) if torch.cuda.is_available() else 0.0
    lines = [f"### profile: {name}, {row['frames']} frames in {wall:.1f} s under the profiler "
             f"({row['frames'] / wall:.1f} frames/s); GPU busy {busy:.1f} s = {100 * busy / wall:.0f}% of the wall",
             ""]
    avg = prof.key_averages()
    lines += ["Steps of ingest (inclusive: a step contains the ones it calls):", "",
              "| step | calls | CPU ms | share of wall | GPU ms of its kernels |", "|---|---|---|---|---|"]
    for a in sorted((a for a in avg if a.key.startswith("onlooker:")), key=lambda a: -a.cpu_time_total):
        lines.append(f"| {a.key[9:]} | {a.count} | {a.cpu_time_total / 1e3:.0f} | "
                     f"{100 * a.cpu_time_total / 1e6 / wall:.0f}% | {getattr(a, 'device_time_total', 0) / 1e3:.0f} |")
    lines.append("")
    for key, label in (("self_cpu_time_total", "own CPU time"), ("self_device_time_total", "own GPU time")):
        if key == "self_device_time_total" and not torch.cuda.is_available():
            continue
        lines += [f"Top {top} by {label}:", "", "| operator | calls | own CPU ms | own GPU ms |", "|---|---|---|---|"]
        for a in sorted(avg, key=lambda a: getattr(a, key, 0), reverse=True)[:top]:
            lines.append(f"| {a.key[:70]} | {a.count} | {a.self_cpu_time_total / 1e3:.0f} | "
                         f"{getattr(a, 'self_device_time_total', 0) / 1e3:.0f} |")
        lines.append("")
    return "\n".join(lines)
