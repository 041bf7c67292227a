"""The torch reference of every op in `kernels.ops`, importable without Triton (the CPU path uses these).
The int8 reference is the memory's own quantization (`memory.segments`), so the two cannot drift apart."""

from __future__ import annotations

import torch

from memory.segments import dequantize_int8 as dequantize_int8_ref
from memory.segments import quantize_int8 as quantize_int8_ref

__all__ = ["token_drop_ref", "segment_scores_ref", "rope_table", "gather_rope_ref", "quantize_int8_ref",
           "dequantize_int8_ref"]


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
