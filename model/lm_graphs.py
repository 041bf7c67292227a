"""The lean LM forward's per-layer work as CUDA graphs at bucketed token counts (piecewise, as vLLM does).

A stream prefill is a few hundred tokens; on the H200 the 7B's prefill was bound by launching its ~25 kernels
per layer from Python (py-spy: the FastLM forward took half of the ingest wall while the GPU idled half the
time). Each layer's `layer_in` (norm, q/k/v projection, q/k norm, RoPE) and `layer_out` (output projection,
residual, MLP) only mix values within a token's row, so they can run on a fixed number of rows: the tokens are
copied into the first `n` rows of a static buffer of the next bucket size, the graph runs on all rows, and only
the first `n` rows are read back. The attention and the cache update (a growing `DynamicCache`, sliced and
spliced by the memory) stay eager, between the two graphs of each layer.

Graphs of every bucket share one memory pool: their temporaries die inside each replay, and their inputs and
outputs live in buffers allocated outside the pool, so replays in any order never overlap on one stream.
Captured lazily, a bucket at a time (all layers), in thread-local capture mode (the perception thread may pin
memory meanwhile). tests/unit/test_cuda.py checks the graphs against the eager forward on the 7B/8B widths.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

BUCKETS = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
# the default: questions and decode steps only. On the H200 (7B, an hour of stream) graphing every bucket cut TTFT
# 78 -> 55 ms but did not speed ingest (149.6 vs 157.4 frames/s eager) and held 33 GB more GPU memory: the graphs
# keep each capture's temporaries (docs/benchmarks.md)
SMALL = (16, 32, 64)


class Bucket:
    """Static buffers and the captured graphs of every layer for one padded token count."""

    def __init__(self, fast: Any, rows: int, like: torch.Tensor, pool) -> None:
        layer_in, layer_out = fast.layer_fns         # model.fast_lm's, handed over (fast_lm imports this module)
        hq, hkv, d = fast.num_heads, fast.num_kv_heads, fast.head_dim
        dev, dt = like.device, like.dtype
        hidden = int(like.shape[-1])
        self.x = torch.zeros(rows, hidden, device=dev, dtype=dt)
        self.cos = torch.zeros(rows, 1, d, device=dev, dtype=dt)
        self.sin = torch.zeros(rows, 1, d, device=dev, dtype=dt)
        self.att = torch.zeros(rows, hq * d, device=dev, dtype=dt)
        self.qkv = torch.zeros(rows, hq + 2 * hkv, d, device=dev, dtype=dt)
        self.qk = torch.zeros(rows, hq + hkv, d, device=dev, dtype=dt)
        eps = fast.eps

        def run_in(layer) -> None:
            w_in, w_qkv, b_qkv, qk_norm = layer[:4]
            qkv, qk = layer_in(self.x, w_in, w_qkv, b_qkv, qk_norm, self.cos, self.sin, eps, hq, hkv, d)
            self.qkv.copy_(qkv)
            self.qk.copy_(qk)

        def run_out(layer) -> None:
            o_proj, w_post, w_gu, down = layer[4:]
            self.x.copy_(layer_out(self.x, self.att, o_proj.weight, w_post, w_gu, down.weight, eps))

        self.graphs_in: list[Callable[[], None]] = []
        self.graphs_out: list[Callable[[], None]] = []
        if pool is None:                         # no capture (the CPU, tests): the same calls on the same buffers
            for layer in fast.layers:
                self.graphs_in.append(functools.partial(run_in, layer))
                self.graphs_out.append(functools.partial(run_out, layer))
            return
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):
            run_in(fast.layers[0])               # warm-up: cuBLAS picks its kernels and workspace outside capture
            run_out(fast.layers[0])
            for layer in fast.layers:
                for fn, out in ((run_in, self.graphs_in), (run_out, self.graphs_out)):
                    g = torch.cuda.CUDAGraph()
                    g.capture_begin(pool=pool, capture_error_mode="thread_local")
                    try:
                        fn(layer)
                    finally:
                        g.capture_end()
                    out.append(g.replay)
            self.x.zero_()
        torch.cuda.current_stream(dev).wait_stream(side)

    def load(self, embeds: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n = int(embeds.shape[0])
        self.x[:n].copy_(embeds)
        self.cos[:n].copy_(cos)
        self.sin[:n].copy_(sin)
        return self.x[:n]

    def layer_in(self, li: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.graphs_in[li]()
        return self.qkv[:n], self.qk[:n]

    def layer_out(self, li: int, att: torch.Tensor) -> torch.Tensor:
        """`att` (n, Hq, D): the layer's attention output for the first n rows."""
        n = int(att.shape[0])
        self.att[:n].view(n, *att.shape[1:]).copy_(att)
        self.graphs_out[li]()
        return self.x[:n]


class LayerGraphs:
    """A FastLM's layers as CUDA graphs, one `Bucket` per padded token count in use."""

    def __init__(self, fast: Any, buckets: tuple[int, ...] = BUCKETS, capture: bool = True) -> None:
        self.fast = fast
        self.buckets = buckets
        self.capture = capture                   # False: the buffers and padding without graphs (tests on a CPU)
        self.pool: Any = None
        self._made: dict[tuple[int, torch.dtype, torch.device], Bucket] = {}

    def rows_for(self, n: int) -> int | None:
        """The bucket `n` tokens run in (None: larger than every bucket, run eagerly)."""
        return next((b for b in self.buckets if b >= n), None)

    def bucket_for(self, n: int, embeds: torch.Tensor) -> Bucket | None:
        rows = self.rows_for(n)
        if rows is None or (self.capture and (not embeds.is_cuda or torch.cuda.is_current_stream_capturing())):
            return None
        key = (rows, embeds.dtype, embeds.device)
        made = self._made.get(key)
        if made is None:
            if self.pool is None and self.capture:
                self.pool = torch.cuda.graph_pool_handle()
            made = self._made[key] = Bucket(self.fast, rows, embeds, self.pool)
        return made

    def capture_all(self, like: torch.Tensor) -> int:
        """Capture every bucket now for tokens like `like` (device, dtype, width) instead of at first use (a live
        stream or a benchmark should not pay for a capture mid-run). Returns the buckets held."""
        for rows in self.buckets:
            self.bucket_for(rows, like)
        return len(self._made)
