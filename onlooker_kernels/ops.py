"""Triton kernels for the streaming hot paths; their torch references are in `onlooker_kernels.reference`.

    token_drop      cosine similarity of each visual token to the same patch's reference token, thresholded
    segment_scores  a question query against the representative keys of every segment (a GEMV), for top-k
    gather_rope     gather rows of KV into one buffer while rotating keys by each row's position delta
    quantize_int8   per-row absmax int8, and dequantize_int8

All of them are memory-bound: each reads its inputs once and writes its outputs once. On the CPU the
Triton versions run only under TRITON_INTERPRET=1 (the tests); the dispatch functions in
`onlooker_kernels/__init__.py` use them for CUDA tensors and the references otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from onlooker_kernels.reference import rope_table

# -- token drop ---------------------------------------------------------------------------------


@triton.jit
def _token_drop_kernel(cur, ref, keep, n, threshold, d: tl.constexpr, BLOCK_R: tl.constexpr,
                       BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = rows < n
    dot = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    na = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    nb = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for start in range(0, d, BLOCK_D):
        offs = start + tl.arange(0, BLOCK_D)
        m = rm[:, None] & (offs < d)[None, :]
        idx = rows[:, None] * d + offs[None, :]
        a = tl.load(cur + idx, mask=m, other=0.0).to(tl.float32)
        b = tl.load(ref + idx, mask=m, other=0.0).to(tl.float32)
        dot += a * b
        na += a * a
        nb += b * b
    cos = tl.sum(dot, axis=1) / tl.maximum(tl.sqrt(tl.sum(na, axis=1)) * tl.sqrt(tl.sum(nb, axis=1)), 1e-8)
    tl.store(keep + rows, (cos < threshold).to(tl.int8), mask=rm)


def token_drop_triton(cur: torch.Tensor, ref: torch.Tensor, threshold: float) -> torch.Tensor:
    n, d = cur.shape
    keep = torch.empty(n, dtype=torch.int8, device=cur.device)
    block_r = 4
    _token_drop_kernel[(triton.cdiv(n, block_r),)](cur.contiguous(), ref.contiguous(), keep, n, threshold, d=d,
                                                   BLOCK_R=block_r, BLOCK_D=min(512, triton.next_power_of_2(d)),
                                                   num_warps=8)
    return keep.bool()


# -- segment scores -----------------------------------------------------------------------------


@triton.jit
def _gemv_kernel(rep, q, out, s, k: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_S + tl.arange(0, BLOCK_S)
    rmask = rows < s
    acc = tl.zeros([BLOCK_S], dtype=tl.float32)
    for start in range(0, k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        cmask = cols < k
        x = tl.load(rep + rows[:, None] * k + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        v = tl.load(q + cols, mask=cmask, other=0.0)
        acc += tl.sum(x.to(tl.float32) * v.to(tl.float32)[None, :], axis=1)
    tl.store(out + rows, acc, mask=rmask)


def segment_scores_triton(rep: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    s, k = rep.shape
    out = torch.empty(s, dtype=torch.float32, device=rep.device)
    block_s = 16
    _gemv_kernel[(triton.cdiv(s, block_s),)](rep.contiguous(), q.contiguous(), out, s, k=k, BLOCK_S=block_s,
                                             BLOCK_K=min(256, triton.next_power_of_2(k)))
    return out


# -- gather + RoPE shift ------------------------------------------------------------------------


@triton.jit
def _gather_rope_kernel(keys, rows, seg, cos, sin, out, mrows, half: tl.constexpr, BLOCK_R: tl.constexpr):
    i = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = i < mrows
    src = tl.load(rows + i, mask=rm, other=0)
    sg = tl.load(seg + i, mask=rm, other=0)
    offs = tl.arange(0, half)
    mm = rm[:, None]
    c = tl.load(cos + sg[:, None] * half + offs[None, :], mask=mm, other=0.0)
    s = tl.load(sin + sg[:, None] * half + offs[None, :], mask=mm, other=0.0)
    base = src[:, None] * 2 * half + offs[None, :]
    x1 = tl.load(keys + base, mask=mm, other=0.0).to(tl.float32)
    x2 = tl.load(keys + base + half, mask=mm, other=0.0).to(tl.float32)
    o = i[:, None] * 2 * half + offs[None, :]
    tl.store(out + o, (x1 * c - x2 * s).to(out.dtype.element_ty), mask=mm)
    tl.store(out + o + half, (x2 * c + x1 * s).to(out.dtype.element_ty), mask=mm)


def gather_rope_triton(keys: torch.Tensor, rows: torch.Tensor, seg: torch.Tensor, deltas: torch.Tensor,
                       inv_freq: torch.Tensor) -> torch.Tensor:
    n, d = keys.shape
    m = rows.shape[0]
    out = torch.empty(m, d, dtype=keys.dtype, device=keys.device)
    cos, sin = rope_table(deltas, inv_freq)
    block_r = 64
    _gather_rope_kernel[(triton.cdiv(m, block_r),)](keys.contiguous(), rows.contiguous(), seg.contiguous(), cos, sin,
                                                    out, m, half=d // 2, BLOCK_R=block_r, num_warps=8)
    return out


# -- int8 ---------------------------------------------------------------------------------------


_ROW_CONFIGS = [triton.Config({"BLOCK_R": r}, num_warps=w) for r in (32, 64, 128) for w in (4, 8)]


@triton.jit
def _quant_kernel(x, q, scale, nrows, d, D_P2: tl.constexpr, BLOCK_R: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = row < nrows
    offs = tl.arange(0, D_P2)
    mm = rm[:, None] & (offs < d)[None, :]
    idx = row[:, None] * d + offs[None, :]
    v = tl.load(x + idx, mask=mm, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(v), axis=1), 1e-8) / 127.0
    r = v / s[:, None]
    r = tl.where(r >= 0, tl.floor(r + 0.5), tl.ceil(r - 0.5))
    r = tl.minimum(tl.maximum(r, -127.0), 127.0)
    tl.store(q + idx, r.to(tl.int8), mask=mm)
    tl.store(scale + row, s.to(tl.float16), mask=rm)


@triton.jit
def _dequant_kernel(q, scale, out, nrows, d, D_P2: tl.constexpr, BLOCK_R: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rm = row < nrows
    offs = tl.arange(0, D_P2)
    mm = rm[:, None] & (offs < d)[None, :]
    idx = row[:, None] * d + offs[None, :]
    v = tl.load(q + idx, mask=mm, other=0).to(tl.float32)
    s = tl.load(scale + row, mask=rm, other=0.0).to(tl.float32)
    tl.store(out + idx, (v * s[:, None]).to(out.dtype.element_ty), mask=mm)


# tuned on a GPU once per head dim (keying on the row count would re-tune for every segment size: measured,
# it halved ingest); the interpreter on the CPU has no driver to time configs with
_quant_tuned = triton.autotune(configs=_ROW_CONFIGS, key=["d"])(_quant_kernel)
_dequant_tuned = triton.autotune(configs=_ROW_CONFIGS, key=["d"])(_dequant_kernel)


def _rows_launch(tuned, plain, n: int, on_gpu: bool, *args, **kw) -> None:
    if on_gpu:
        tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_R"]),)](*args, **kw)
    else:
        plain[(triton.cdiv(n, 32),)](*args, **kw, BLOCK_R=32)


def quantize_int8_triton(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = x.shape[-1]
    flat = x.reshape(-1, d).contiguous()
    q = torch.empty_like(flat, dtype=torch.int8)
    scale = torch.empty(flat.shape[0], dtype=torch.float16, device=x.device)
    n = flat.shape[0]
    _rows_launch(_quant_tuned, _quant_kernel, n, x.is_cuda, flat, q, scale, n, d, D_P2=triton.next_power_of_2(d))
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def dequantize_int8_triton(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    d = q.shape[-1]
    flat = q.reshape(-1, d).contiguous()
    out = torch.empty(flat.shape, dtype=dtype, device=q.device)
    n = flat.shape[0]
    _rows_launch(_dequant_tuned, _dequant_kernel, n, q.is_cuda, flat, scale.reshape(-1).contiguous(), out, n, d,
                 D_P2=triton.next_power_of_2(d))
    return out.reshape(q.shape)
