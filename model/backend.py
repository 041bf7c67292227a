"""The one backend interface shared by the lite (text) and VLM backends.

A backend turns pieces of stream into position-independent `Chunk`s (model.chunk) and prefills a chunk
into a KV cache at a position offset the memory chooses. Earlier context is never recomputed: `prefill`
only runs the new tokens against the cache. Answers are decoded one token at a time on top of a cache
the memory hands out. Because all keys are rotated by position, moving a cached chunk by `delta`
positions is a rotation of its keys by `delta * inv_freq` (onlooker_kernels.rope_shift), the same for RoPE and
for M-RoPE when all three axes move together.

The backend knows no prompts and no cache internals: callers pass the text, and the cache is whatever
object the model's forward accepts as `past_key_values`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import DynamicCache

from model.chunk import Chunk, VideoBlock, text_positions


class BackendError(RuntimeError):
    """Model cannot be used (missing, unknown family, wrong device); message is one user-facing line."""


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
    def language_model(self) -> Any:
        """The decoder stack (has `.layers[i].self_attn.{q,k}_proj` and `.config`)."""

    @property
    def kv_shape(self) -> tuple[int, int, int]:
        """(layers, kv heads, head dim) of the KV cache."""
        return self.num_layers, self.num_kv_heads, self.head_dim

    def kv_bytes_per_token(self) -> int:
        dtype = next(self.language_model().parameters()).dtype
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * torch.finfo(dtype).bits // 8

    # -- chunks -------------------------------------------------------------------------------
    @torch.inference_mode()
    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> input embeddings on the model's device (to join chunks given as embeddings)."""
        return self.model.get_input_embeddings()(ids.to(self.device, non_blocking=True))

    def text_chunk(self, kind: str, text: str, t0: float, t1: float) -> Chunk:
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        n = int(ids.shape[0])
        return Chunk(kind, t0, t1, text, text_positions(n, self.num_position_axes), n, input_ids=ids)

    def frame_chunk(self, image, t: float) -> Chunk:
        raise BackendError(f"{self.name} does not take frames; it reads text observations")

    def block_closer(self, block: VideoBlock) -> Chunk:
        """The chunk that ends an open video block (model.qwen_vl); backends without video blocks have none."""
        raise BackendError(f"{self.name} lays out no video blocks")

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

    def prefill_keys(self, chunk: Chunk, cache: DynamicCache, offset: int,
                     sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`prefill`, plus the sum over the chunk's tokens of each layer's keys before RoPE, (L, Hkv, D) float32:
        the raw material of a segment's representative key (position-independent, so it stays valid
        however the segment is moved later). It stays on the model's device: a copy to the host here would wait
        for the prefill to finish at every chunk (a host sync); sealing moves the mean to the host once.
        With `sizes` (the token counts of consecutive pieces of the chunk), one sum per piece: (P, L, Hkv, D)."""
        with self.capture("k_proj") as outs:
            logits = self.prefill(chunk, cache, offset)
        keys = [o.reshape(-1, self.num_kv_heads, self.head_dim).float() for o in outs]
        if sizes is None:
            return logits, torch.stack([k.sum(0) for k in keys])
        return logits, torch.stack([torch.stack([p.sum(0) for p in k.split(sizes)]) for k in keys], dim=1)

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


def no_cudnn_attention(device: str) -> None:
    """On a GPU, turn PyTorch's cuDNN SDPA backend off (flash and memory-efficient attention stay). cuDNN builds
    and keeps an execution plan for every new pair of sequence lengths, and a stream makes new pairs without
    end (token drop, a window that fills and seals, retrieved segments). `bench soak` on one H100, 7B shape:
    host RSS grew 2785 -> 4308 MB over stream-hours 1 to 4 with it on (the C heap in use, not Python objects),
    and 2051 -> 2075 MB over hours 0.75 to 2 with it off."""
    if device.startswith("cuda"):
        torch.backends.cuda.enable_cudnn_sdp(False)


def launching_thread(device: str | torch.device) -> None:
    """Call on the thread that launches the model's kernels. On a GPU, that thread's own CPU tensor work (positions,
    indices, small copies) runs on one thread instead of torch's pool of one per core: a pool waits for its slowest
    thread at every parallel region, so one busy core anywhere on the box (the perceivers beside the model, any
    other process) held up each region, and ingest ran at 0.53x on one H200 with 16 cores; with one thread it runs
    at 1.0-1.14x of the pool's speed on an idle box, busy core or not (`python -m bench.ingest_contention`).
    With OpenMP (Linux builds) a thread that has already run torch CPU work keeps its pool; threads that start
    theirs later take one thread too. On the GPU path nothing else leans on torch's pool: the perceivers run in
    their own process and speech recognition on CTranslate2's threads."""
    if str(device).startswith("cuda"):
        torch.set_num_threads(1)


def host_copy(t: torch.Tensor) -> torch.Tensor:
    """`t` on the host without waiting for the device: from a GPU into pinned memory, non-blocking (record a CUDA
    event after it and wait on that before reading it; memory.landing, perception.visual); else `t.cpu()`."""
    if t.is_cuda:
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
    return t.cpu()
