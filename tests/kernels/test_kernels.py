"""Each Triton kernel against its torch reference on fresh random inputs: on the CPU through Triton's
interpreter (TRITON_INTERPRET=1, set by the test run when there is no GPU), on the GPU under `cuda`."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton", reason="triton is not installed")

from onlooker_kernels import ops, reference  # noqa: E402

# every check runs twice: on the CPU through Triton's interpreter (the default test run) and on the GPU
# (marker `cuda`, skipped without one)
DEVICES = [pytest.param("cpu", id="interpreter"), pytest.param("cuda", id="gpu", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def dev(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    if request.param == "cpu" and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1"):
        pytest.skip("the interpreter run needs TRITON_INTERPRET=1 and no GPU (tests/conftest.py sets it)")
    return request.param


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.mark.parametrize("n,d", [(64, 96), (37, 200), (9, 3584)])
def test_token_drop(n, d, dev):
    cur = torch.randn(n, d, device=dev)
    ref = cur + 0.5 * torch.randn(n, d, device=dev) * (torch.rand(n, 1, device=dev) > 0.5)
    got = ops.token_drop_triton(cur, ref, 0.95)
    want = reference.token_drop_ref(cur, ref, 0.95)
    assert torch.equal(got.cpu(), want.cpu()) and 0 < int(want.sum()) < n


@pytest.mark.parametrize("s,k", [(100, 300), (1000, 64)])
def test_segment_scores(s, k, dev):
    rep, q = torch.randn(s, k, device=dev), torch.randn(k, device=dev)
    got, want = ops.segment_scores_triton(rep, q), reference.segment_scores_ref(rep, q)
    assert _rel(got, want) < 1e-5
    assert torch.equal(torch.topk(got, 5).indices.cpu(), torch.topk(want, 5).indices.cpu())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_rope(dtype, dev):
    if dev == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the interpreter computes in numpy, which has no bfloat16")
    keys = torch.randn(50, 64, device=dev).to(dtype)
    rows = torch.randint(0, 50, (100,), device=dev)
    seg = torch.randint(0, 4, (100,), device=dev)
    deltas = torch.randint(-5000, 5000, (4,), device=dev)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, device=dev).float() / 64))
    got = ops.gather_rope_triton(keys, rows, seg, deltas, inv_freq)
    want = reference.gather_rope_ref(keys, rows, seg, deltas, inv_freq)
    assert _rel(got, want) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_gather_rope_matches_the_memory_rope_shift(dev):
    from onlooker_kernels.reference import rope_shift_ref as rope_shift
    keys = torch.randn(20, 64, device=dev)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, device=dev).float() / 64))
    rows = torch.arange(20, device=dev)
    got = ops.gather_rope_triton(keys, rows, torch.zeros(20, dtype=torch.long, device=dev),
                                 torch.tensor([123], device=dev), inv_freq)
    assert _rel(got, rope_shift(keys, 123, inv_freq)) < 1e-5


def test_int8_roundtrip(dev):
    x = torch.randn(3, 5, 17, 64, device=dev)
    q, s = ops.quantize_int8_triton(x)
    rq, rs = reference.quantize_int8_ref(x)
    assert q.dtype == torch.int8 and s.shape == rs.shape
    assert torch.equal(s.cpu(), rs.cpu()) and float((q.int() - rq.int()).abs().max()) <= 1     # rounding ties
    back = ops.dequantize_int8_triton(q, s, torch.float32)
    assert _rel(back, reference.dequantize_int8_ref(q, s, torch.float32)) < 1e-6 and _rel(back, x) < 0.01

