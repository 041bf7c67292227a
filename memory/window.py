"""Memory v0: attention sink + recent window, on the device.

    cache:  [ sink (system prompt) ][ chunk 0 ][ chunk 1 ] ... [ chunk k ]
                                     ^ oldest, evicted first      ^ newest

`append` prefills a chunk on top of the cache (earlier context is never recomputed). When the
window passes its token budget, whole chunks are evicted oldest-first; the sink is never evicted.
With `reposition`, the kept window's keys are rotated back by the evicted chunks' position span
(StreamingLLM-style), so positions stay contiguous and bounded however long the stream runs.
Every eviction is returned to the caller (and counted), never dropped silently.

`context()` hands out a fork of the cache (shared tensors, no copy) that an answer decodes on,
so ingest can go on appending while an answer is still being decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from memory.config import MemoryConfig
from reasoning.backends.base import Backend, Chunk, fork_cache, rope_shift


@dataclass
class ChunkRecord:
    kind: str
    t0: float
    t1: float
    text: str
    num_tokens: int
    pos_start: int          # absolute position of the chunk's first token in the current cache
    pos_span: int


@dataclass
class AppendResult:
    logits: torch.Tensor                                   # next-token logits after the chunk, (vocab,)
    evicted: list[ChunkRecord] = field(default_factory=list)


@dataclass
class ContextView:
    cache: DynamicCache      # fork: the caller may grow it freely
    next_pos: int            # position of the next token
    num_tokens: int


class SinkWindowMemory:
    def __init__(self, backend: Backend, config: MemoryConfig) -> None:
        self.backend = backend
        self.config = config
        self.cache = DynamicCache()
        self.sink: ChunkRecord | None = None
        self.window: list[ChunkRecord] = []
        self.next_pos = 0
        self.num_evicted_chunks = 0
        self.num_evicted_tokens = 0

    @property
    def sink_tokens(self) -> int:
        return self.sink.num_tokens if self.sink else 0

    @property
    def window_tokens(self) -> int:
        return sum(r.num_tokens for r in self.window)

    @property
    def num_tokens(self) -> int:
        return self.cache.get_seq_length()

    def device_bytes(self) -> int:
        return self.backend.kv_bytes(self.cache)

    def _prefill(self, chunk: Chunk) -> tuple[ChunkRecord, torch.Tensor]:
        logits = self.backend.prefill(chunk, self.cache, self.next_pos)
        rec = ChunkRecord(chunk.kind, chunk.t0, chunk.t1, chunk.text, chunk.num_tokens, self.next_pos,
                          chunk.pos_span)
        self.next_pos += chunk.pos_span
        return rec, logits

    def set_sink(self, chunk: Chunk) -> torch.Tensor:
        if self.sink is not None:
            raise RuntimeError("sink already set")
        self.sink, logits = self._prefill(chunk)
        return logits

    def append(self, chunk: Chunk) -> AppendResult:
        if self.sink is None:
            raise RuntimeError("set_sink() first")
        rec, logits = self._prefill(chunk)
        self.window.append(rec)
        return AppendResult(logits, self._evict())

    def _evict(self) -> list[ChunkRecord]:
        evicted: list[ChunkRecord] = []
        # keep at least the newest chunk, even if it alone is over budget
        while len(self.window) > 1 and self.window_tokens > self.config.window_tokens:
            evicted.append(self.window.pop(0))
        if not evicted:
            return evicted
        num_tokens = sum(r.num_tokens for r in evicted)
        pos_delta = sum(r.pos_span for r in evicted)
        s = self.sink_tokens
        for layer in self.cache.layers:
            # (1, kv_heads, tokens, head_dim)
            kept_k = layer.keys[:, :, s + num_tokens:]
            if self.config.reposition:
                kept_k = rope_shift(kept_k, -pos_delta, self.backend.inv_freq)
            layer.keys = torch.cat([layer.keys[:, :, :s], kept_k], dim=2)
            layer.values = torch.cat([layer.values[:, :, :s], layer.values[:, :, s + num_tokens:]], dim=2)
        if self.config.reposition:
            for r in self.window:
                r.pos_start -= pos_delta
            self.next_pos -= pos_delta
        self.num_evicted_chunks += len(evicted)
        self.num_evicted_tokens += num_tokens
        return evicted

    def context(self) -> ContextView:
        return ContextView(fork_cache(self.cache), self.next_pos, self.num_tokens)
