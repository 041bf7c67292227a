"""Sealed segments: the KV of a run of chunks that left the recent window, and how it is stored.

A segment's KV is held as two stacked tensors, keys and values, shaped (L, Hkv, n, D) on the host.
Sealing may compress it:
  - pruning keeps the `keep_ratio` tokens with the largest value norm, or the values farthest from the
    segment's mean value (`prune_by`; averaged over layers and heads); the kept tokens keep their positions,
    so a pruned segment leaves gaps, never shifts;
  - int8 quantization per (layer, head, token) row: absmax scale over the head dim, fp16 scales; or int4 per
    group of INT4_GROUP values along the head dim (two values per byte, an fp16 scale per group: 4.5 bits a value).
Spilled segments are one safetensors file each, written to a temporary name and renamed, so a crash
never leaves a half-written file under the real name. The file's metadata repeats the segment's
times and text, so a session can be read back even if its index is damaged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import onlooker_kernels as kernels
from onlooker_kernels.reference import dequantize_int8_ref, quantize_int8_ref


class SegmentFileError(RuntimeError):
    """A spilled segment file is missing or unreadable; the message names the file."""


@dataclass
class SegmentKV:
    keys: torch.Tensor                        # (L, Hkv, k, D): float, or int8 when quantized
    values: torch.Tensor
    key_scale: torch.Tensor | None = None     # (L, Hkv, k, 1) fp16 when quantized; (L, Hkv, k, D / 32) for int4
    value_scale: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32        # dtype to restore on dequantization
    bits: int = 8                             # 8: int8 keys/values; 4: uint8 holding two int4 each, (L, Hkv, k, D/2)

    @property
    def quantized(self) -> bool:
        return self.key_scale is not None

    @property
    def nbytes(self) -> int:
        ts = [self.keys, self.values, self.key_scale, self.value_scale]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)

    def dequantized(self, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values on `device` in `dtype` (default: the dtype they were sealed from); quantized ones cross
        over quantized and expand there."""
        dtype = dtype or self.dtype
        ahead = torch.device(device).type != "cpu"        # host -> device copies need not wait for the device
        if not self.quantized:
            return self.keys.to(device, dtype, non_blocking=ahead), self.values.to(device, dtype, non_blocking=ahead)
        assert self.key_scale is not None and self.value_scale is not None
        expand = kernels.dequantize_int8 if self.bits == 8 else dequantize_int4
        k, v = self.keys.to(device, non_blocking=ahead), self.values.to(device, non_blocking=ahead)
        ks, vs = self.key_scale.to(device, non_blocking=ahead), self.value_scale.to(device, non_blocking=ahead)
        return expand(k, ks, dtype), expand(v, vs, dtype)


quantize_int8 = quantize_int8_ref          # one implementation: kernels.reference
dequantize_int8 = dequantize_int8_ref
INT4_GROUP = 32


def quantize_int4(x: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per group of `group` values of the last dim: x ~ q * scale, q in [-7, 7] stored as q + 8,
    two to a byte (low nibble first). -> (uint8 (..., D/2), fp16 scales (..., D/group)). A head dim smaller
    than `group` is one group."""
    xs = x.float().unflatten(-1, (-1, min(group, x.shape[-1])))
    scale = (xs.abs().amax(-1, keepdim=True) / 7).clamp_min(1e-8).half()
    q = (torch.round(xs / scale.float()).clamp_(-7, 7) + 8).to(torch.uint8).flatten(-2)
    return q[..., 0::2] | (q[..., 1::2] << 4), scale.squeeze(-1)


def dequantize_int4(packed: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    q = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2).float() - 8       # (..., D)
    return (q.unflatten(-1, (scale.shape[-1], -1)) * scale.float().unsqueeze(-1)).flatten(-2).to(dtype)


def prune_by_value_norm(values: torch.Tensor, keep_ratio: float, by: str = "value_norm") -> torch.Tensor | None:
    """Token offsets to keep, ascending, or None for all. values: (L, Hkv, n, D). `by`: "value_norm" ranks tokens
    by the norm of their values; "novelty" by how far their values lie from the segment's mean value (a token much
    like the rest of its segment, a plain background, goes first). Both averaged over layers and heads."""
    n = values.shape[2]
    k = max(1, round(n * keep_ratio))
    if k >= n:
        return None
    v = values.float()
    if by == "novelty":
        v = v - v.mean(dim=2, keepdim=True)
    score = v.norm(dim=-1).mean(dim=(0, 1))          # (n,)
    return torch.topk(score, k).indices.sort().values


@dataclass
class Segment:
    """One sealed segment. `pos_start` is the position the stored keys are rotated to; `orig_pos` the
    position the segment was first ingested at (they differ once the window has been re-positioned)."""

    seg_id: int
    t0: float
    t1: float
    text: str
    num_tokens: int                       # tokens before pruning
    pos_start: int
    orig_pos: int
    pos_span: int
    rep_key: torch.Tensor                 # (L, Hkv, D) float32 mean key before RoPE
    kept: torch.Tensor | None = None      # offsets kept by pruning (None: all)
    kv: SegmentKV | None = None           # set while in host RAM
    file: Path | None = None              # set once spilled to disk
    embedding: torch.Tensor | None = None  # (E,) float32, normalized; None without an embedder
    index_id: int | None = None           # row id in the session index
    extra: dict = field(default_factory=dict)

    @property
    def kept_tokens(self) -> int:
        return self.num_tokens if self.kept is None else int(self.kept.numel())

    @property
    def tier(self) -> str:
        return "host" if self.kv is not None else ("disk" if self.file is not None else "dropped")

    def meta(self) -> dict:
        return {"t0": self.t0, "t1": self.t1, "text": self.text, "num_tokens": self.num_tokens,
                "pos_start": self.pos_start, "orig_pos": self.orig_pos, "pos_span": self.pos_span,
                "seg_id": self.seg_id}


def squeeze_kv(keys: torch.Tensor, values: torch.Tensor, quantize: bool, bits: int = 8) -> dict[str, torch.Tensor]:
    """A segment's KV as the tensors that go to the host: quantized where they are (only the quantized bytes
    cross), or as they are (on a CPU copied, so that they outlive the cache they were sliced from)."""
    if quantize:
        squeeze = kernels.quantize_int8 if bits == 8 else quantize_int4
        qk, sk = squeeze(keys)
        qv, sv = squeeze(values)
        return {"keys": qk, "values": qv, "key_scale": sk, "value_scale": sv}
    if keys.is_cuda:                    # the copy to the host is the copy
        return {"keys": keys, "values": values}
    return {"keys": keys.clone(), "values": values.clone()}


def compress(keys: torch.Tensor, values: torch.Tensor, keep_ratio: float, quantize: bool, bits: int = 8,
             prune_by: str = "value_norm") -> dict[str, torch.Tensor | None]:
    """What sealing keeps of a segment's KV, where it is: pruned to `keep_ratio` (its offsets under "kept", None
    for all), then `squeeze_kv`."""
    kept = prune_by_value_norm(values, keep_ratio, prune_by) if keep_ratio < 1.0 else None
    if kept is not None:
        kept = kept.to(keys.device)
        keys, values = keys[:, :, kept], values[:, :, kept]
    return {**squeeze_kv(keys, values, quantize, bits), "kept": kept}


def kv_from_parts(parts: dict, dtype: torch.dtype, bits: int = 8) -> SegmentKV:
    """The SegmentKV of `squeeze_kv`'s tensors once they are on the host."""
    return SegmentKV(parts["keys"], parts["values"], parts.get("key_scale"), parts.get("value_scale"), dtype,
                     bits if parts.get("key_scale") is not None else 8)


_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16)}


def write_segment_file(path: Path, seg: Segment) -> int:
    """Write the segment's KV (and what is needed to place it) to `path` atomically; returns bytes."""
    assert seg.kv is not None
    kv = seg.kv
    tensors = {"keys": kv.keys.contiguous(), "values": kv.values.contiguous(), "rep_key": seg.rep_key.contiguous()}
    if kv.quantized:
        assert kv.key_scale is not None and kv.value_scale is not None
        tensors["key_scale"] = kv.key_scale.contiguous()
        tensors["value_scale"] = kv.value_scale.contiguous()
    if seg.kept is not None:
        tensors["kept"] = seg.kept.to(torch.int64).contiguous()
    meta = {"segment": json.dumps(seg.meta()), "dtype": str(kv.dtype), "bits": str(kv.bits)}
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path.stat().st_size


def read_segment_kv(path: Path) -> SegmentKV:
    if not path.exists():
        raise SegmentFileError(f"segment file {path} is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            dtype = _DTYPES.get((f.metadata() or {}).get("dtype", ""), torch.float32)
            bits = int((f.metadata() or {}).get("bits", "8"))
            kv = SegmentKV(f.get_tensor("keys"), f.get_tensor("values"),
                           f.get_tensor("key_scale") if "key_scale" in names else None,
                           f.get_tensor("value_scale") if "value_scale" in names else None, dtype, bits)
    except Exception as e:  # OSError, or safetensors' own SafetensorError for a damaged header
        raise SegmentFileError(f"segment file {path} is unreadable ({type(e).__name__}: {e})") from None
    return kv


def read_segment_file(path: Path) -> Segment:
    """A whole segment back from its file alone (used when the index cannot be read)."""
    kv = read_segment_kv(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["segment"])
            rep_key = f.get_tensor("rep_key")
            kept = f.get_tensor("kept") if "kept" in set(f.keys()) else None
    except Exception as e:
        raise SegmentFileError(f"segment file {path} is unreadable ({type(e).__name__}: {e})") from None
    seg = Segment(meta["seg_id"], meta["t0"], meta["t1"], meta["text"], meta["num_tokens"], meta["pos_start"],
                  meta["orig_pos"], meta["pos_span"], rep_key, kept, None, path)
    seg.extra["kv"] = kv
    return seg
