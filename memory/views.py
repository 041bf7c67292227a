"""What the hierarchical memory hands out: the result of an append, and a context view to answer from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from memory.retrieval import Retrieval
from memory.segments import Segment


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
