"""A lean forward of the VLM's language model for the stream's prefills and decode steps.

The same arithmetic as transformers' Qwen2.5-VL / Qwen3-VL text decoder (`language_model(inputs_embeds=...,
position_ids=..., past_key_values=cache)`), in fewer kernels and without its per-layer Python: a stream prefill
is a few hundred tokens against a window of thousands, and on a GPU transformers' forward is bound by launching
~80 small kernels per layer (stop 22's profile), not by arithmetic. On one H200, 7B shape, ingest ran 1.44x
transformers' forward with it (docs/benchmarks.md). Here, per layer:

- q, k and v in one matmul, gate and up in another: the projections' weights become views into one fused
  weight per layer (`fuse_projections`; no extra memory, transformers' modules keep working on the views);
- M-RoPE's cos/sin computed once per forward (the model's own rotary module) and applied to q and k together;
- attention with a lower-right causal bias (`torch.nn.attention.bias.causal_lower_right`): no mask tensor,
  flash or memory-efficient attention on a GPU, key/value heads shared by their query heads (GQA) without copies
  where the kernel allows;
- the final norm only on the last token (only its logits are used);
- the keys (or queries) before RoPE summed over the tokens inline, for the memory's segment keys and the
  question probe, instead of forward hooks.

The cache is updated through the public `Cache.update(keys, values, layer)`, so forks and the memory's splicing
behave exactly as with transformers' forward. tests/unit/test_fast_lm.py checks equality with transformers'
forward on tiny configs of both families (positions, past cache, deepstack, decode steps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

if TYPE_CHECKING:
    from model.lm_graphs import LayerGraphs


def fuse_projections(lm) -> None:
    """Make each layer's q/k/v projection weights (and biases) views into one fused tensor, and gate/up likewise.
    Idempotent. Call after the model is on its device (moving it later would undo the sharing)."""
    for layer in lm.layers:
        a, m = layer.self_attn, layer.mlp
        if getattr(layer, "_onlooker_fused", False):
            continue
        _fuse([a.q_proj, a.k_proj, a.v_proj], "weight")
        if a.q_proj.bias is not None:
            _fuse([a.q_proj, a.k_proj, a.v_proj], "bias")
        _fuse([m.gate_proj, m.up_proj], "weight")
        layer._onlooker_fused = True


def _fuse(mods, attr: str) -> None:
    with torch.no_grad():
        fused = torch.cat([getattr(mod, attr).detach() for mod in mods])
        start = 0
        for mod in mods:
            p = getattr(mod, attr)
            n = p.shape[0]
            p.data = fused[start:start + n]
            start += n


def fused_weight(mods, attr: str) -> torch.Tensor:
    """The fused tensor the projections' `attr` are views into (`fuse_projections`), as one (sum of rows, ...)."""
    first = getattr(mods[0], attr)
    rows = sum(getattr(m, attr).shape[0] for m in mods)
    return first.as_strided((rows, *first.shape[1:]), first.stride(), first.storage_offset())


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' Qwen RMSNorm: normalised in float32 and scaled by the weight. With one weight vector this is
    torch's fused kernel (one launch instead of four, rounded once instead of twice: transformers casts back
    before scaling); Qwen3's per-head q/k weights (one row per head) scale after the norm."""
    if weight.dim() == 1 and weight.dtype == x.dtype:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, expand: bool | None = None
           ) -> torch.Tensor:
    """(1, Hq, n, D) queries against (1, Hkv, N, D) keys/values, the n queries being the last n of the N: causal,
    aligned at the lower right. GQA without expanding the keys where the kernel takes it (flash on a GPU, the
    math kernel on the CPU); on a GPU without flash, keys and values are expanded for memory-efficient attention.
    `expand`: whether to expand, when the caller already knows (`needs_expand`; it is the same for every layer)."""
    n, total = q.shape[2], k.shape[2]
    if n == 1:
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
    bias = causal_lower_right(n, total)
    if expand is None:
        expand = needs_expand(q, k, v)
    if expand:
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=True)


def needs_expand(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether `attend` expands the shared key/value heads: on a GPU where flash attention cannot take these."""
    return q.device.type == "cuda" and not _flash_ok(q, k, v)


def _flash_ok(q, k, v) -> bool:
    from torch.backends.cuda import SDPAParams, can_use_flash_attention
    return bool(can_use_flash_attention(SDPAParams(q, k, v, None, 0.0, True, True)))


class FastLM:
    """The decoder stack of a Qwen2.5-VL (`qwen2_5_vl`) or Qwen3-VL (`qwen3_vl`) model, run lean."""

    def __init__(self, lm) -> None:
        cfg = lm.config
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise ValueError(f"FastLM supports SiLU MLPs, not {cfg.hidden_act}")
        self.lm = lm
        self.num_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim ** -0.5
        self.compiled = False
        self._compiled: tuple | None = None
        self.graphs: LayerGraphs | None = None
        self.layer_fns = (layer_in, layer_out)      # what model.lm_graphs captures
        fuse_projections(lm)
        self.layers = []
        for layer in lm.layers:
            a, m = layer.self_attn, layer.mlp
            qk_norm = None
            if a.o_proj.bias is not None or m.down_proj.bias is not None:
                raise ValueError("FastLM expects no bias on o_proj and down_proj")
            if hasattr(a, "q_norm"):          # Qwen3: RMSNorm over each head's dims, q and k weights side by side
                qk_norm = torch.cat([a.q_norm.weight.expand(self.num_heads, -1),
                                     a.k_norm.weight.expand(self.num_kv_heads, -1)])
            qkv = [a.q_proj, a.k_proj, a.v_proj]
            bias = fused_weight(qkv, "bias") if a.q_proj.bias is not None else None
            self.layers.append((layer.input_layernorm.weight, fused_weight(qkv, "weight"), bias, qk_norm, a.o_proj,
                                layer.post_attention_layernorm.weight, fused_weight([m.gate_proj, m.up_proj], "weight"),
                                m.down_proj))

    def compile(self, on: bool = True) -> None:
        """Run each layer's elementwise work and projections (`layer_in`, `layer_out`) under torch.compile with
        dynamic token counts: the norms, RoPE, SiLU and residual adds fuse into a few kernels. The attention and the
        cache stay eager. On a GPU; the first calls compile (seconds)."""
        if on and self._compiled is None:
            self._compiled = (torch.compile(layer_in, dynamic=True), torch.compile(layer_out, dynamic=True))
        self.compiled = on

    def use_graphs(self, on: bool = True, capture: bool = True, buckets: tuple[int, ...] | None = None) -> None:
        """Replay each layer's `layer_in` and `layer_out` as CUDA graphs captured at bucketed token counts
        (model/lm_graphs.py); the attention and the cache stay eager. On a GPU; a bucket's graphs are captured at
        its first use; `buckets` default to model.lm_graphs.SMALL (questions and decode steps; larger prefills run
        eagerly). Off: the eager kernels. Ignored while compiled. `capture=False` keeps the static buffers and
        the padding but calls the layers directly (tests on a CPU)."""
        if on and (self.graphs is None or (buckets is not None and self.graphs.buckets != buckets)):
            from model.lm_graphs import SMALL, LayerGraphs
            self.graphs = LayerGraphs(self, buckets=buckets or SMALL, capture=capture)
        elif not on:
            self.graphs = None

    @torch.inference_mode()
    def forward(self, embeds: torch.Tensor, position_ids: torch.Tensor, cache, *,
                visual_mask: torch.Tensor | None = None, deepstack: list[torch.Tensor] | None = None,
                collect: str | None = None, pieces: tuple[torch.Tensor, int] | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`embeds` (n, hidden) at M-RoPE `position_ids` (3, 1, n) on top of `cache` (grows by n).

        Returns the final hidden state of the last token (hidden,) after the model's norm, and with `collect`, one
        (Hkv, D) float32 per layer: "keys" -> the layer's k_proj output summed over the tokens; "queries" -> its
        q_proj output averaged over the tokens and over the query heads sharing a KV head (stack them outside
        inference mode to get a tensor that can be updated in place). `pieces` with "keys": each token's piece
        of the chunk (n,) on the device, and how many there are (P); the sums are then (P, Hkv, D), one per piece."""
        hq, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        run_in, run_out = self._compiled if self.compiled and self._compiled else (layer_in, layer_out)
        n = int(embeds.shape[0])
        cos, sin = self.lm.rotary_emb(embeds.unsqueeze(0), position_ids)  # (1, n, D) each
        cos, sin = cos[0].unsqueeze(1), sin[0].unsqueeze(1)               # (n, 1, D): over heads
        idx = None
        if deepstack is not None and visual_mask is not None:
            idx = visual_mask.nonzero().squeeze(1).to(embeds.device, non_blocking=True)
        graphs = self.graphs.bucket_for(n, embeds) if self.graphs is not None and not self.compiled else None
        x = embeds if graphs is None else graphs.load(embeds, cos, sin)
        keys = None
        if collect == "keys":                    # each layer's keys before RoPE, summed after the last layer
            keys = embeds.new_empty(len(self.layers), n, hkv, d)
        sums, expand = [], None
        for li, (w_in, w_qkv, b_qkv, qk_norm, o_proj, w_post, w_gu, down) in enumerate(self.layers):
            if graphs is None:
                qkv, qk = run_in(x, w_in, w_qkv, b_qkv, qk_norm, cos, sin, self.eps, hq, hkv, d)
            else:
                qkv, qk = graphs.layer_in(li, n)
            if keys is not None:
                keys[li].copy_(qkv[:, hq:hq + hkv])
            elif collect == "queries":
                sums.append(qkv[:, :hq].float().reshape(n, hkv, hq // hkv, d).mean(dim=(0, 2)))
            q, k, v = heads(qkv, qk, hq, hkv)
            k, v = cache.update(k, v, li)
            if expand is None and n > 1:         # the same for every layer: checked once per forward
                expand = needs_expand(q, k, v)
            att = attend(q, k, v, self.scale, expand)[0].transpose(0, 1)         # (n, Hq, D)
            if graphs is None:
                x = run_out(x, att.reshape(n, -1), o_proj.weight, w_post, w_gu, down.weight, self.eps)
            else:
                x = graphs.layer_out(li, att)
            if idx is not None and deepstack is not None and li < len(deepstack):
                x.index_add_(0, idx, deepstack[li].to(x.device, x.dtype))
        if keys is not None and pieces is not None:
            sums = list(keys.new_zeros(len(self.layers), pieces[1], hkv, d, dtype=torch.float32).index_add_(
                1, pieces[0], keys.float()).unbind(0))
        elif keys is not None:
            sums = list(keys.float().sum(1).unbind(0))
        last = rms_norm(x[n - 1], self.lm.norm.weight, self.eps)
        return last, sums


def layer_in(x: torch.Tensor, w_in: torch.Tensor, w_qkv: torch.Tensor, b_qkv: torch.Tensor | None,
             qk_norm: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, eps: float, hq: int, hkv: int,
             d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer up to its attention: the projections (n, Hq + 2 Hkv, D) before any norm or RoPE, and the queries
    and keys (n, Hq + Hkv, D) after them (`heads` makes attention's views)."""
    n = x.shape[0]
    qkv = F.linear(rms_norm(x, w_in, eps), w_qkv, b_qkv).view(n, hq + 2 * hkv, d)
    qk = qkv[:, :hq + hkv]
    if qk_norm is not None:
        qk = rms_norm(qk, qk_norm, eps)
    return qkv, qk * cos + rotate_half(qk) * sin


def heads(qkv: torch.Tensor, qk: torch.Tensor, hq: int, hkv: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q (1, Hq, n, D), k and v (1, Hkv, n, D) as attention takes them: views of `layer_in`'s outputs."""
    return (qk[:, :hq].transpose(0, 1).unsqueeze(0), qk[:, hq:].transpose(0, 1).unsqueeze(0),
            qkv[:, hq + hkv:].transpose(0, 1).unsqueeze(0))


def layer_out(x: torch.Tensor, att: torch.Tensor, w_o: torch.Tensor, w_post: torch.Tensor, w_gu: torch.Tensor,
              w_down: torch.Tensor, eps: float) -> torch.Tensor:
    """A layer after its attention, on (n, hidden) rows and the attention output as (n, Hq * D): output
    projection, residual, MLP (SiLU-gated), residual."""
    x = x + F.linear(att, w_o)
    gu = F.linear(rms_norm(x, w_post, eps), w_gu)
    inter = gu.shape[-1] // 2
    return x + F.linear(F.silu(gu[..., :inter]) * gu[..., inter:], w_down)
