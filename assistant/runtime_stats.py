"""The runtime's counters and the session summary built from them (plain data, no threads)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from memory.manager import HierarchicalMemory
from perception.visual import VisualStream
from reasoning.captions import CaptionStats

T = TypeVar("T")


@dataclass
class RuntimeStats:
    frames_sampled: int = 0        # stream events seen (one per sampled frame)
    observations: int = 0          # chunks ingested into memory
    repeats: int = 0               # sampled frames whose observation repeated the previous one
    segments_sealed: int = 0
    questions: int = 0
    ingest_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)
    max_ingest_wait_ms: float = 0.0   # longest a stream event waited in the inbox behind other work
    max_ingest_stall_answering_ms: float = 0.0   # the same, for events that arrived while an answer was decoding
    alerts: int = 0
    transcripts: int = 0
    barge_ins: int = 0
    probe_ms: list[float] = field(default_factory=list)
    visual_s: float = 0.0          # seconds in the visual stream (vision tower, token drop; the VLM path)

    def timed(self, name: str, fn: Callable[..., T], *args) -> T:
        """`fn(*args)`, its wall time added to the float counter `name`."""
        start = time.monotonic()
        try:
            return fn(*args)
        finally:
            setattr(self, name, getattr(self, name) + time.monotonic() - start)


def _med(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 1) if xs else None


def memory_summary(memory: HierarchicalMemory) -> dict:
    st = memory.stats
    return {"tokens_in_memory": memory.num_tokens, "device_kv_bytes": memory.device_bytes(),
            "device_peak_kv_bytes": st.device_peak_bytes, "host_kv_bytes": st.host_bytes,
            "disk_kv_bytes": st.disk_bytes, "segments_spilled": st.segments_spilled,
            "segments_dropped": st.segments_dropped, "segment_read_errors": st.segment_read_errors,
            "tokens_pruned": st.tokens_pruned, "oom_window_shrinks": st.oom_shrinks,
            "storage_error": st.storage_error,
            # where the runtime thread's time went besides the model: writing segment files and index rows, and
            # embedding texts (segments' and questions'; bench.recording reports them); checkpoint files are written on
            # memory.landing's helper threads off a GPU
            "segment_write_s": round(st.write_s, 3), "checkpoint_write_s": round(st.checkpoint_write_s, 3),
            "index_write_s": round(st.index_s, 3), "landing_wait_s": round(memory.landing.wait_s, 3),
            "embed_s": round(memory.embedder.seconds, 3) if memory.embedder is not None else None}


def visual_summary(visual: VisualStream) -> dict:
    st = visual.stats
    return {"visual_groups": st.groups, "vit_groups": st.vit_groups, "vit_reused_groups": st.reused_groups,
            "visual_tokens_kept_pct": round(100 * st.kept_fraction, 1), "mask_wait_s": round(st.mask_wait_s, 3)}


def caption_summary(c: CaptionStats, stream_t: float) -> dict:
    hours = stream_t / 3600
    return {"captions": c.written, "captions_skipped": c.skipped,
            "caption_s_per_stream_hour": round(c.decode_ms / 1000 / hours, 1) if hours > 0 else None}


def runtime_summary(s: RuntimeStats, memory: HierarchicalMemory, visual: VisualStream | None, stream_t: float,
                    inbox_dropped: int, captions: CaptionStats | None = None) -> dict:
    return {
        **({} if captions is None else caption_summary(captions, stream_t)),
        "frames_sampled": s.frames_sampled,
        "observations": s.observations,
        "repeats_skipped": s.repeats,
        "segments_sealed": s.segments_sealed,
        **memory_summary(memory),
        **({} if visual is None else visual_summary(visual)),
        "questions": s.questions,
        "ttft_ms_median": _med(s.ttft_ms),
        "ttft_ms_max": round(max(s.ttft_ms), 1) if s.ttft_ms else None,
        "answer_ms_median": _med(s.answer_ms),
        "ingest_ms_median": _med(s.ingest_ms),
        "ingest_s": round(sum(s.ingest_ms) / 1000, 3), "visual_s": round(s.visual_s, 3),
        "max_ingest_wait_ms": round(s.max_ingest_wait_ms, 1),
        "max_ingest_stall_answering_ms": round(s.max_ingest_stall_answering_ms, 1),
        "frames_dropped_behind": inbox_dropped,
        "alerts": s.alerts, "probe_ms_median": _med(s.probe_ms), "transcripts": s.transcripts,
        "barge_ins": s.barge_ins,
        "stream_t": round(stream_t, 3),
    }
