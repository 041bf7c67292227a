"""Triton kernels for the streaming hot paths, one dispatch function per op, each with a torch reference
(`onlooker_kernels.ops`, `onlooker_kernels.reference`). CUDA tensors go to the Triton kernels when Triton is
importable; everything else goes to the reference, so the CPU path never needs Triton. `rope_shift` is plain torch on
every device: measured faster than its kernel where the memory calls it (its docstring). Two kernels of
`onlooker_kernels.ops` have no dispatcher because nothing on the hot path gains from them: the segment-scoring GEMV
(the memory scores every sealed segment on the host, `memory.slab.KeyBank`: 4 ms for an hour's 900 segments, inside a
TTFT of 52-85 ms on the H200) and gather+RoPE (its device-side delta was 12% of the window loop's wall under py-spy;
`rope_shift` replaced it). `bench kernels` still measures both. `references()` forces the references (tests,
before/after measurements); so does ONLOOKER_NO_KERNELS=1 for a whole process.

Named `onlooker_kernels`, not `kernels`: transformers >= 5.25 depends on Hugging Face's `kernels` package and imports
it when it is installed, so a top-level `kernels` of ours would shadow it and break `import transformers`."""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.weak import WeakIdKeyDictionary

# ONLOOKER_NO_KERNELS=1 sends everything to the references (for before/after measurements)
_HAS_TRITON = importlib.util.find_spec("triton") is not None and os.environ.get("ONLOOKER_NO_KERNELS") != "1"


_FORCE_REFERENCE = False


@contextmanager
def references() -> Iterator[None]:
    """Inside the block every op runs its torch reference, even on CUDA tensors."""
    global _FORCE_REFERENCE
    before, _FORCE_REFERENCE = _FORCE_REFERENCE, True
    try:
        yield
    finally:
        _FORCE_REFERENCE = before


def _use_triton(t: torch.Tensor) -> bool:
    return _HAS_TRITON and t.is_cuda and not _FORCE_REFERENCE


def rope_shift(keys: torch.Tensor, delta: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate RoPE'd keys (..., tokens, head_dim) by a position delta, in float32, rounded once to the keys' dtype.

    The angle table comes from the host (`shift_table`), so nothing here waits on the device: the memory calls
    this for every layer at every eviction, and the earlier path (the gather + RoPE Triton kernel with its delta
    built by `torch.tensor(..., device=...)`) synchronised with the device once per layer; on the H200 that wait
    and the kernel's launch took 12% of the 7B window's ingest wall (py-spy, docs/benchmarks.md)."""
    from onlooker_kernels.reference import rope_shift_ref, rotate_half
    if _FORCE_REFERENCE:
        return rope_shift_ref(keys, delta, inv_freq)
    cos, sin = shift_table(delta, inv_freq, keys.device)
    x = keys.float()
    return (x * cos + rotate_half(x) * sin).to(keys.dtype)


_HOST_FREQ: WeakIdKeyDictionary = WeakIdKeyDictionary()      # inv_freq -> (its float64 host copy, recent tables)


def shift_table(delta: int, inv_freq: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (head_dim,) float32 of a rotation by `delta` positions, computed on the host in float64 (a
    delta of thousands of positions needs it) and copied to `device` without waiting; the last few are kept
    (an eviction rotates every layer by the same delta)."""
    entry = _HOST_FREQ.get(inv_freq)
    if entry is None:
        entry = _HOST_FREQ[inv_freq] = (inv_freq.detach().to("cpu", torch.float64), OrderedDict())
    host, tables = entry
    key = (int(delta), str(device))
    hit = tables.get(key)
    if hit is not None:
        tables.move_to_end(key)
        return hit
    from onlooker_kernels.reference import rope_table
    cos, sin = rope_table(torch.tensor([int(delta)]), host)                          # (1, D/2) each
    table = (torch.cat((cos[0], cos[0])).to(device, non_blocking=True),
             torch.cat((sin[0], sin[0])).to(device, non_blocking=True))
    tables[key] = table
    if len(tables) > 64:
        tables.popitem(last=False)
    return table


def token_drop(cur: torch.Tensor, ref: torch.Tensor, threshold: float) -> torch.Tensor:
    """Keep mask (n,): tokens whose cosine similarity to the reference is below `threshold`."""
    if _use_triton(cur):
        from onlooker_kernels.ops import token_drop_triton
        return token_drop_triton(cur, ref, threshold)
    from onlooker_kernels.reference import token_drop_ref
    return token_drop_ref(cur, ref, threshold)


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if _use_triton(x):
        from onlooker_kernels.ops import quantize_int8_triton
        return quantize_int8_triton(x)
    from onlooker_kernels.reference import quantize_int8_ref
    return quantize_int8_ref(x)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _use_triton(q):
        from onlooker_kernels.ops import dequantize_int8_triton
        return dequantize_int8_triton(q, scale, dtype)
    from onlooker_kernels.reference import dequantize_int8_ref
    return dequantize_int8_ref(q, scale, dtype)
