"""A stored session read back: its segments from the index (or from the segment files alone when the
index is damaged), and a read-only memory over them for `onlooker ask`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from memory.config import MemoryConfig
from memory.embed import TextEmbedder
from memory.index import SegmentIndex
from memory.manager import HierarchicalMemory
from memory.segments import Segment, SegmentFileError, read_segment_file
from model.backend import Backend
from model.chunk import Chunk

log = logging.getLogger("onlooker.memory")


def open_stored(backend: Backend, config: MemoryConfig, segments: list[Segment], sink: Chunk, *,
                embedder: TextEmbedder | None = None, label: str = "") -> HierarchicalMemory:
    """A read-only memory over a stored session: the sink on the device, every segment on disk."""
    mem = HierarchicalMemory(backend, config, embedder=embedder, label=label)
    mem.set_sink(sink)
    for seg in sorted(segments, key=lambda x: x.t0):
        if seg.embedding is None and mem.embedder is not None:
            seg.embedding = mem.embedder.encode([seg.text])[0]
        mem.segments.append(seg)
    if mem.segments and config.positions == "original":
        last = max(mem.segments, key=lambda x: x.orig_pos)
        mem.next_pos = mem.stream_pos = last.orig_pos + last.pos_span
    return mem


def segments_from_index(index: SegmentIndex, kv_shape: tuple[int, int, int]) -> list[Segment]:
    """The segments of a stored session as its index describes them (KV left on disk)."""
    out = []
    for row in index.rows():
        rep, emb = SegmentIndex.row_tensors(row)
        seg = Segment(int(row["id"]), row["t0"], row["t1"], row["text"] or "", int(row["num_tokens"] or 0),
                      int(row["pos_start"] or 0), int(row["orig_pos"] or 0), int(row["pos_span"] or 0),
                      rep if rep is not None else torch.zeros(kv_shape), None, None,
                      Path(row["kv_file"]) if row.get("kv_file") else None, emb, int(row["id"]))
        if seg.file is None:
            log.warning("session %s: segment %d [%.1f-%.1f s] has no KV on disk (%s); its text is still searchable",
                        index.session_id, seg.seg_id, seg.t0, seg.t1, row.get("tier") or "never written")
        out.append(seg)
    return out


def segments_from_files(kv_dir: Path) -> tuple[list[Segment], list[str]]:
    """The segments of a stored session read from its segment files alone (when the index is damaged).
    Returns (segments, problems)."""
    segs, problems = [], []
    for path in sorted(kv_dir.glob("segment-*.safetensors")):
        try:
            seg = read_segment_file(path)
        except SegmentFileError as e:
            problems.append(str(e))
            continue
        seg.extra.pop("kv", None)          # read again when placed; keeps RAM flat
        segs.append(seg)
    return segs, problems
