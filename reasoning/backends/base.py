"""The one backend interface shared by the lite (text) and VLM backends.

A backend turns pieces of stream into position-independent `Chunk`s and prefills a chunk into a
KV cache at a position offset the memory chooses. Earlier context is never recomputed: `prefill`
only runs the new tokens against the cache. Answers are decoded one token at a time on top of a
cache the memory hands out.

Positions: a chunk carries `position_ids` relative to its own start, shaped (P, n) with P = 1 for
standard RoPE and P = 3 for M-RoPE (time, height, width). `pos_span` is how far the next chunk
starts after this one (for text it equals n; for an image it is smaller than its token count).
Because all keys are rotated by position, moving a cached chunk by `delta` positions is a
rotation of its keys by `delta * inv_freq` (`rope_shift`), the same for RoPE and for M-RoPE when
all three axes move together.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from reasoning import prompts


class BackendError(RuntimeError):
    """Model cannot be used (missing, unknown family, wrong device); message is one user-facing line."""


@dataclass
class Chunk:
    kind: str                              # "system" | "observation" | "frame" | "question"
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

    @property
    def num_tokens(self) -> int:
        return int(self.position_ids.shape[-1])


def concat_chunks(chunks: list[Chunk], embed=None) -> Chunk:
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
        embeds = torch.cat([c.inputs_embeds if c.inputs_embeds is not None else embed(c.input_ids) for c in chunks])
    ids = None
    if all(c.input_ids is not None for c in chunks):
        ids = torch.cat([c.input_ids for c in chunks])
    mask = deep = None
    if any(c.deepstack is not None for c in chunks):
        mask = torch.cat([c.visual_mask if c.visual_mask is not None else torch.zeros(c.num_tokens, dtype=torch.bool)
                          for c in chunks])
        layers = len(next(c.deepstack for c in chunks if c.deepstack is not None))
        deep = [torch.cat([c.deepstack[i] for c in chunks if c.deepstack is not None]) for i in range(layers)]
    kinds = {c.kind for c in chunks}
    return Chunk(kinds.pop() if len(kinds) == 1 else "mixed", chunks[0].t0, chunks[-1].t1,
                 " ".join(c.text for c in chunks), torch.cat(pos, dim=1), off, input_ids=ids, inputs_embeds=embeds,
                 visual_mask=mask, deepstack=deep)


def text_positions(n: int, num_axes: int) -> torch.Tensor:
    return torch.arange(n).unsqueeze(0).expand(num_axes, n).clone()  # (P, n)


def fork_cache(cache: DynamicCache) -> DynamicCache:
    """A new cache sharing the same tensors: free, because DynamicLayer.update concatenates into a new
    tensor rather than writing in place, so later appends to either cache never touch the other."""
    new = DynamicCache()
    for layer in cache.layers:
        nl = DynamicLayer()
        if layer.is_initialized:
            nl.lazy_initialization(layer.keys, layer.values)
            nl.keys, nl.values = layer.keys, layer.values
        new.layers.append(nl)
    return new


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_shift(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate RoPE'd keys (..., tokens, head_dim) as if their positions moved by `delta`."""
    angle = delta * inv_freq.to(torch.float64)                     # (head_dim/2,)
    emb = torch.cat((angle, angle), dim=-1)
    cos = emb.cos().to(keys.dtype)
    sin = emb.sin().to(keys.dtype)
    return keys * cos + rotate_half(keys) * sin


class Backend(ABC):
    """Owned by the runtime thread; no method is thread-safe."""

    name: str
    device: torch.device
    num_position_axes: int                 # 1 (RoPE) or 3 (M-RoPE)
    accepts_frames: bool                   # True: frames go in as visual tokens; False: lite text observations

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        eos = {tokenizer.convert_tokens_to_ids("<|im_end|>")}
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.eos_token_ids = {int(e) for e in eos if e is not None and e >= 0}
        cfg = self.language_model().config
        self.num_layers = int(cfg.num_hidden_layers)
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.num_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads)

    @abstractmethod
    def language_model(self) -> nn.Module:
        """The decoder stack (has `.layers[i].self_attn.{q,k}_proj` and `.config`)."""

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim) of the KV cache."""
        return self.num_layers, self.num_kv_heads, self.head_dim

    def kv_bytes_per_token(self) -> int:
        dtype = next(self.language_model().parameters()).dtype
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8

    # -- chunks -------------------------------------------------------------------------------
    def text_chunk(self, kind: str, text: str, t0: float, t1: float) -> Chunk:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        n = int(ids.shape[0])
        return Chunk(kind, t0, t1, text, text_positions(n, self.num_position_axes), n, input_ids=ids)

    def system_chunk(self, system: str = prompts.SYSTEM_PROMPT) -> Chunk:
        return self.text_chunk("system", prompts.sink_text(system), 0.0, 0.0)

    def observation_chunk(self, t: float, text: str) -> Chunk:
        return self.text_chunk("observation", prompts.observation_text(t, text), t, t)

    def question_chunk(self, t: float, question: str, latest: tuple[float, str] | None = None,
                       recalled: list[tuple[float, str]] | None = None) -> Chunk:
        return self.text_chunk("question", prompts.question_text(t, question, latest, recalled), t, t)

    def frame_chunk(self, image, t: float) -> Chunk:
        raise BackendError(f"{self.name} does not take frames; it reads text observations")

    # -- compute ------------------------------------------------------------------------------
    @property
    @abstractmethod
    def inv_freq(self) -> torch.Tensor:
        """RoPE inverse frequencies of the language model, (head_dim/2,)."""

    @abstractmethod
    def prefill(self, chunk: Chunk, cache: DynamicCache, offset: int) -> torch.Tensor:
        """Run the chunk's tokens at positions `offset + chunk.position_ids` on top of `cache`
        (which grows by chunk.num_tokens); return the next-token logits, (vocab,) float32."""

    @contextmanager
    def capture(self, proj: str) -> Iterator[list[torch.Tensor]]:
        """Collect the output of every layer's attention `proj` ("q_proj" / "k_proj"): the queries or
        keys before RoPE, in layer order, for the forward passes run inside the block."""
        outs: list[torch.Tensor] = []
        hooks = [getattr(layer.self_attn, proj).register_forward_hook(lambda _m, _i, out: outs.append(out.detach()))
                 for layer in self.language_model().layers]
        try:
            yield outs
        finally:
            for h in hooks:
                h.remove()

    def prefill_keys(self, chunk: Chunk, cache: DynamicCache, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`prefill`, plus the sum over the chunk's tokens of each layer's keys before RoPE, (L, Hkv, D) float32:
        the raw material of a segment's representative key (position-independent, so it stays valid
        however the segment is moved later)."""
        with self.capture("k_proj") as outs:
            logits = self.prefill(chunk, cache, offset)
        key_sum = torch.stack([o.reshape(-1, self.num_kv_heads, self.head_dim).float().sum(0) for o in outs])
        return logits, key_sum.cpu()

    def question_query(self, chunk: Chunk, cache: DynamicCache, offset: int) -> torch.Tensor:
        """The question's queries before RoPE, averaged over its tokens and over the query heads that share
        a KV head: (L, Hkv, D) float32. Prefills `chunk` into `cache` (pass a fork)."""
        with self.capture("q_proj") as outs:
            self.prefill(chunk, cache, offset)
        g = self.num_heads // self.num_kv_heads
        q = torch.stack([o.reshape(-1, self.num_kv_heads, g, self.head_dim).float().mean(dim=(0, 2)) for o in outs])
        return q.cpu()

    def decode(self, token_id: int, cache: DynamicCache, position: int) -> torch.Tensor:
        ids = torch.tensor([token_id])
        chunk = Chunk("decode", 0.0, 0.0, "", text_positions(1, self.num_position_axes), 1, input_ids=ids)
        return self.prefill(chunk, cache, position)

    def detokenize(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def kv_bytes(self, cache: DynamicCache) -> int:
        return sum(layer.keys.numel() * layer.keys.element_size() * 2
                   for layer in cache.layers if layer.is_initialized)
