"""What the hierarchical memory hands out: the result of an append, and a context view to answer from (and the
sealed segments placed into one); and the prefill of appended chunks behind an append."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from memory import kv_cache
from memory.retrieval import Retrieval
from memory.segments import Segment, SegmentFileError
from model.chunk import Chunk, concat_chunks

log = logging.getLogger("onlooker.memory")


@dataclass
class AppendResult:
    logits: torch.Tensor                                   # next-token logits after the chunk, (vocab,)
    sealed: list[Segment] = field(default_factory=list)


@dataclass
class ContextView:
    cache: DynamicCache      # the caller may grow it freely
    next_pos: int            # position of the next token
    num_tokens: int
    retrieval: Retrieval | None = None
    placed: list[Segment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)          # e.g. segments whose KV could not be read


def place_segments(mem: Any, segments: list[Segment], pos: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]],
                                                                     list[Segment], list[str], int]:
    """`segments` in time order, read back onto the model's device and rotated to where they go in a context view
    of `mem` (a memory.manager.HierarchicalMemory): one after another from position `pos` ("contiguous"), or where
    they were ingested ("original"). One whose KV cannot be read is left out, counted and noted.
    -> (keys and values of each placed segment, the placed segments, notes, the position after them)."""
    contiguous = mem.config.positions == "contiguous"
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = []
    placed: list[Segment] = []
    notes: list[str] = []
    dtype = kv_cache.cache_dtype(mem.cache)
    for seg in sorted(segments, key=lambda x: x.t0):
        try:
            k, v = mem.store.load_kv(seg, mem.backend.device, dtype)
        except SegmentFileError as e:
            mem.stats.segment_read_errors += 1
            notes.append(f"{mem.label}: segment {seg.seg_id} [{seg.t0:.1f}-{seg.t1:.1f} s]: {e}; answering without it")
            log.warning("%s", notes[-1])
            continue
        target = pos if contiguous else seg.orig_pos
        if target != seg.pos_start:
            k = mem._rotate(k, target - seg.pos_start)
        pieces.append((k, v))
        placed.append(seg)
        pos += seg.pos_span
    return pieces, placed, notes, pos


def prefill_or_shrink(mem: Any, seq: list[Chunk]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Prefill the chunks as one on top of `mem`'s cache (a memory.manager.HierarchicalMemory) -> logits after the
    last, and each chunk's key sum; if the device runs out of memory, undo the partial append, halve the window
    (sealing what no longer fits), log it and try again, until the window cannot shrink further."""
    chunk = concat_chunks(seq, mem.backend.embed_ids)
    while True:
        lengths = kv_cache.layer_lengths(mem.cache)
        try:
            if len(seq) == 1:
                logits, key_sum = mem.backend.prefill_keys(chunk, mem.cache, mem.next_pos)
                return logits, [key_sum]
            logits, key_sums = mem.backend.prefill_keys(chunk, mem.cache, mem.next_pos, [c.num_tokens for c in seq])
            return logits, list(key_sums.unbind(0))
        except torch.OutOfMemoryError:
            kv_cache.truncate(mem.cache, lengths)
            if not mem.config.shrink_on_oom or mem.window_budget <= 16 or len(mem.window) <= 1:
                raise
            mem.stats.oom_shrinks += 1
            log.warning("%s: out of device memory; shrinking the window from %d tokens", mem.label, mem.window_budget)
            mem.shrink_window(mem.window_budget // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
