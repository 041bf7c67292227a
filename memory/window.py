"""The recent window's bookkeeping: which chunks sit where in the device cache, grouped into segments.

A `WindowSegment` is a run of chunks (a few seconds of stream) still on the device; sealing turns it
into a `memory.segments.Segment` off the device. Positions: `pos_start` is where a chunk's first token
sits now (it moves when the window is re-positioned); `orig_pos` where its segment was first ingested.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ChunkRecord:
    kind: str
    t0: float
    t1: float
    text: str
    num_tokens: int
    pos_start: int          # position of the chunk's first token in the device cache (moves on re-positioning)
    pos_span: int


@dataclass(eq=False)
class WindowSegment:
    chunks: list[ChunkRecord]
    key_sum: torch.Tensor                 # (L, Hkv, D) sum of pre-RoPE keys
    orig_pos: int
    embedding: torch.Tensor | None = None
    notes: list[str] = field(default_factory=list)      # words about it from beside the model (perception, captions)
    checkpoint: Any = None                # memory.segments.Segment sent to disk when it closed (stored sessions)

    @property
    def t0(self) -> float:
        return self.chunks[0].t0

    @property
    def t1(self) -> float:
        return self.chunks[-1].t1

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    @property
    def pos_start(self) -> int:
        return self.chunks[0].pos_start

    @property
    def pos_span(self) -> int:
        return sum(c.pos_span for c in self.chunks)

    @property
    def text(self) -> str:
        return " ".join([c.text.strip() for c in self.chunks if c.text.strip()] + self.notes)

    @property
    def rep_key(self) -> torch.Tensor:
        return self.key_sum / max(1, self.num_tokens)
