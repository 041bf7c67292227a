"""model.fast_lm: the lean language-model forward equals transformers' own, on tiny configs of both families."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memory import kv_cache
from model.chunk import VideoBlock
from model.fast_lm import FastLM


def _chunks(backend):
    rng = np.random.default_rng(3)
    img = [rng.integers(0, 255, (112, 112, 3), dtype=np.uint8) for _ in range(2)]
    sys_chunk = backend.text_chunk("system", "You watch a stream.", 0.0, 0.0)
    embeds, grid = backend.encode_frame(img[0])
    frame = backend.visual_chunk(embeds, grid, 1.0, 1.0)
    keep = torch.tensor([0, 2, 3])                              # pruned: gaps in the positions
    pruned = backend.visual_chunk(embeds, grid, 2.0, 2.0, keep=keep)
    chunks = [sys_chunk, frame, pruned]
    if backend.frame_layout == "video":
        block = VideoBlock(3.0, grid)
        chunks += [backend.visual_chunk(embeds, grid, 3.0, 3.5, block=block),
                   backend.visual_chunk(embeds, grid, 4.0, 4.5, keep=keep, block=block), backend.block_closer(block)]
    return chunks + [backend.text_chunk("question", "What is on screen?", 5.0, 5.0)]


def _run(backend, chunks):
    """Every chunk through prefill_keys at its running offset, then the question's probe and two decode steps."""
    cache = kv_cache.new_cache()
    pos, outs = 0, []
    for c in chunks[:-1]:
        logits, key_sum = backend.prefill_keys(c, cache, pos)
        outs += [logits, key_sum]
        pos += c.pos_span
    q = chunks[-1]
    outs.append(backend.question_query(q, kv_cache.fork_cache(cache), pos))
    outs.append(backend.prefill(q, cache, pos))
    pos += q.pos_span
    for tok in (5, 9):
        outs.append(backend.decode(tok, cache, pos))
        pos += 1
    return outs, cache


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_qwen3"])
def test_the_lean_forward_equals_transformers_forward(name, request):
    backend = request.getfixturevalue(name)
    assert isinstance(backend.fast, FastLM)
    chunks = _chunks(backend)
    if name == "tiny_qwen3":
        assert any(c.deepstack is not None for c in chunks)        # deepstack features ride along
    fast_out, fast_cache = _run(backend, chunks)
    with backend.transformers_forward():
        ref_out, ref_cache = _run(backend, chunks)
    assert len(fast_out) == len(ref_out)
    for a, b in zip(fast_out, ref_out, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for la, lb in zip(fast_cache.layers, ref_cache.layers, strict=True):
        torch.testing.assert_close(la.keys, lb.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(la.values, lb.values, rtol=1e-4, atol=1e-5)


def test_fused_projections_share_storage_and_keep_transformers_modules_working(tiny_qwen):
    layer = tiny_qwen.language_model().layers[0]
    a = layer.self_attn
    q, k, v = a.q_proj.weight, a.k_proj.weight, a.v_proj.weight
    assert q.untyped_storage().data_ptr() == k.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
    assert k.storage_offset() == q.numel() and v.storage_offset() == q.numel() + k.numel()
    m = layer.mlp
    assert m.gate_proj.weight.untyped_storage().data_ptr() == m.up_proj.weight.untyped_storage().data_ptr()
    x = torch.randn(3, q.shape[1])
    torch.testing.assert_close(a.k_proj(x), x @ k.T + a.k_proj.bias)


def test_a_tampered_lean_forward_is_caught(tiny_qwen):
    """The equality test can fail: the lean forward with the attention scale wrong differs from transformers'."""
    chunks = _chunks(tiny_qwen)
    with tiny_qwen.transformers_forward():
        ref, _ = _run(tiny_qwen, chunks)
    scale = tiny_qwen.fast.scale
    tiny_qwen.fast.scale = scale * 1.5
    try:
        bad, _ = _run(tiny_qwen, chunks)
    finally:
        tiny_qwen.fast.scale = scale
    assert not torch.allclose(bad[-1], ref[-1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_qwen3"])
def test_the_bucketed_layers_equal_transformers_forward(name, request):
    """model/lm_graphs.py without capture (the CPU): tokens padded into static buffers of the next bucket, the
    layers run on every row, the first n read back; equal to transformers' forward. Padding rows hold the last
    call's leftovers (not zeros), and the buckets (4, 8, 64) make every chunk padded; the decode steps and the
    question take the smallest bucket."""
    from model.lm_graphs import LayerGraphs
    backend = request.getfixturevalue(name)
    chunks = _chunks(backend)
    with backend.transformers_forward():
        ref_out, ref_cache = _run(backend, chunks)
    backend.fast.graphs = LayerGraphs(backend.fast, buckets=(4, 8, 64), capture=False)
    try:
        out, cache = _run(backend, chunks)
        made = sorted(rows for rows, _, _ in backend.fast.graphs._made)
    finally:
        backend.fast.graphs = None
    assert made == [4, 8, 64] and max(c.num_tokens for c in chunks) <= 64
    for a, b in zip(out, ref_out, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for la, lb in zip(cache.layers, ref_cache.layers, strict=True):
        torch.testing.assert_close(la.keys, lb.keys, rtol=1e-4, atol=1e-5)
