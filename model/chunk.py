"""A piece of stream as the language model sees it: a position-independent `Chunk`.

A chunk carries `position_ids` relative to its own start, shaped (P, n) with P = 1 for standard RoPE
and P = 3 for M-RoPE (time, height, width). `pos_span` is how far the next chunk starts after this one
(for text it equals n; for an image it is smaller than its token count). The memory picks the offset a
chunk is prefilled at; this module knows nothing about caches or prompts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(eq=False)
class VideoBlock:
    """A run of frame pairs laid out as one video (Qwen2.5-VL): temporal positions step with real stream time
    inside it. Open until a chunk closes it (`<|vision_end|>`); any other content closes it first."""
    t0: float                              # stream time of its first pair
    grid: tuple[int, int]                  # merged grid (h, w) of every pair in it
    pairs: int = 0
    t1: float = 0.0                        # stream time of its last frame so far
    closed: bool = False


@dataclass
class Chunk:
    kind: str                              # "system" | "observation" | "frame" | "question" | "probe" | "decode"
    t0: float                              # stream time span it covers, seconds
    t1: float
    text: str                              # human-readable content (index, logs)
    position_ids: torch.Tensor             # (P, n) relative to the chunk start
    pos_span: int                          # next chunk starts this many positions later
    input_ids: torch.Tensor | None = None  # (n,)
    inputs_embeds: torch.Tensor | None = None  # (n, hidden)
    # Qwen3-VL deepstack: features added to the first LM layers' hidden states at the visual tokens
    visual_mask: torch.Tensor | None = None    # (n,) bool
    deepstack: list[torch.Tensor] | None = None  # per deepstack layer (visual tokens, hidden)
    # video blocks: `continues` = its tokens belong to the block the previous chunk left open (it never starts a
    # segment); `block` = the block this chunk leaves open (None when it leaves nothing open)
    continues: bool = False
    block: VideoBlock | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.position_ids.shape[-1])


def text_positions(n: int, num_axes: int) -> torch.Tensor:
    return torch.arange(n).unsqueeze(0).expand(num_axes, n).clone()  # (P, n)


def format_time(t: float) -> str:
    """Stream seconds as m:ss (h:mm:ss past an hour): the form of every time marker the model reads."""
    s = int(t)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


FRAME_PLACEHOLDER = re.compile(r"\[\d+(?::\d{2}){1,2}\] <frame [^>]*>\s*")   # a frame chunk's text


def without_frames(text: str) -> str:
    """A segment's text less its frame placeholders ("[0:12] <frame 38/64 tokens>"): the words in it."""
    return FRAME_PLACEHOLDER.sub("", text).strip()


def concat_chunks(chunks: list[Chunk], embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Chunk:
    """Several chunks as one (one prefill call): positions shifted by the running span. `embed` turns
    input_ids into embeddings for chunks without inputs_embeds when any chunk has them."""
    if len(chunks) == 1:
        return chunks[0]
    pos, off = [], 0
    for c in chunks:
        pos.append(c.position_ids + off)
        off += c.pos_span
    embeds = None
    if any(c.inputs_embeds is not None for c in chunks):
        assert embed is not None
        parts = []
        for c in chunks:
            if c.inputs_embeds is not None:
                parts.append(c.inputs_embeds)
            else:
                assert c.input_ids is not None
                parts.append(embed(c.input_ids))
        embeds = torch.cat(parts)
    ids = None
    if all(c.input_ids is not None for c in chunks):
        ids = torch.cat([c.input_ids for c in chunks if c.input_ids is not None])
    mask = deep = None
    stacks = [c.deepstack for c in chunks if c.deepstack is not None]
    if stacks:
        mask = torch.cat([c.visual_mask if c.visual_mask is not None else torch.zeros(c.num_tokens, dtype=torch.bool)
                          for c in chunks])
        deep = [torch.cat([s[i] for s in stacks]) for i in range(len(stacks[0]))]
    kinds = {c.kind for c in chunks}
    return Chunk(kinds.pop() if len(kinds) == 1 else "mixed", chunks[0].t0, chunks[-1].t1,
                 " ".join(c.text for c in chunks), torch.cat(pos, dim=1), off, input_ids=ids, inputs_embeds=embeds,
                 visual_mask=mask, deepstack=deep, continues=chunks[0].continues, block=chunks[-1].block)
