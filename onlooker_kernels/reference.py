"""The torch reference of every op in `onlooker_kernels.ops`, importable without Triton (the CPU path uses these).
This is the one home of each reference: the memory's int8 and RoPE shift on the CPU are these functions,
so a kernel and the code it replaces cannot drift apart. Imports no other project package."""

from __future__ import annotations

import torch

__all__ = ["token_drop_ref", "segment_scores_ref", "rope_table", "gather_rope_ref", "quantize_int8_ref",
           "dequantize_int8_ref", "rope_shift_ref", "rotate_half"]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_shift_ref(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate RoPE'd keys (..., tokens, head_dim) as if their positions moved by `delta`."""
    angle = delta * inv_freq.to(torch.float64)                     # (head_dim/2,)
    emb = torch.cat((angle, angle), dim=-1)
    cos = emb.cos().to(keys.dtype)
    sin = emb.sin().to(keys.dtype)
    return keys * cos + rotate_half(keys) * sin


def quantize_int8_ref(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row of the last dim: x ~ q * scale (fp16 scales)."""
    scale = x.float().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    q = torch.round(x.float() / scale).clamp_(-127, 127).to(torch.int8)
    return q, scale.to(torch.float16)


def dequantize_int8_ref(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def token_drop_ref(cur: torch.Tensor, ref: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep mask (n,) bool: cosine(cur[i], ref[i]) < threshold."""
    return torch.nn.functional.cosine_similarity(cur.float(), ref.float(), dim=-1) < threshold


def segment_scores_ref(rep: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """rep (S, K), q (K,) -> (S,) float32."""
    return rep.float() @ q.float()


def rope_table(deltas: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (S, D/2) float32 for each segment's position delta, computed in float64 (a delta of
    thousands of positions needs it) once per segment, not once per row."""
    ang = deltas.double()[:, None] * inv_freq.double()[None, :]
    return ang.cos().float().contiguous(), ang.sin().float().contiguous()


def gather_rope_ref(keys: torch.Tensor, rows: torch.Tensor, seg: torch.Tensor, deltas: torch.Tensor,
                    inv_freq: torch.Tensor) -> torch.Tensor:
    """keys (N, D); rows (M,) indices into keys; seg (M,) which segment each row belongs to; deltas (S,)
    the position shift of each segment. Returns (M, D): the gathered keys, rotated."""
    cos, sin = rope_table(deltas, inv_freq)
    x = keys[rows].float()
    c, s = cos[seg], sin[seg]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1).to(keys.dtype)
