"""Several chunks in one prefill (`HierarchicalMemory.append_all`): the same memory as appending them one by one."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import DynamicCache

from memory import kv_cache
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.synthetic import SyntheticScene
from perception.visual import VisualConfig, VisualStream
from reasoning import prompts


def _batches(b, n_frames=24, batch=3):
    """The chunks of each batch of frame pairs (token drop on; video blocks of 2 s, so batches cross blocks), every
    other batch with something heard after its frames (text among embeddings; it closes an open block)."""
    scene = SyntheticScene("signs")
    vs = VisualStream(b, VisualConfig(batch_groups=batch, drop_threshold=0.97, block_seconds=2.0))
    out = [cs for cs in [*(vs.push(scene.render(i * 4), i * 0.5) for i in range(n_frames)), vs.flush()] if cs]
    return [cs + [prompts.text_observation_chunk(b, cs[-1].t1, f'Heard: "word {i}".')] if i % 2 else cs
            for i, cs in enumerate(out)]


def _memory(b, window):
    mem = HierarchicalMemory(b, MemoryConfig(window_tokens=window, segment_seconds=1.0, host_mb=1000))
    mem.set_sink(prompts.system_chunk(b))
    return mem


@pytest.mark.parametrize("name", ["tiny_qwen", "tiny_qwen3"])
@pytest.mark.parametrize("lean", [True, False])
def test_one_prefill_per_batch_equals_one_per_chunk(request, name, lean):
    """Nothing sealed in between: the cache, the window's segments and their key sums, and a question's logits
    after sealing all of it are those of appending chunk by chunk; the cache is that of plain prefills of the
    stream with a closer before whatever follows an open video block."""
    b = request.getfixturevalue(name)
    with contextlib.nullcontext() if lean else b.transformers_forward():
        batches = _batches(b)
        assert any(len(cs) > 1 for cs in batches)                     # a batch crossing blocks: several chunks
        one, many = _memory(b, 100_000), _memory(b, 100_000)
        for cs in batches:
            for c in cs:
                one.append(c)
            many.append_all(cs)
        assert one.next_pos == many.next_pos and one.num_tokens == many.num_tokens
        assert [[(c.kind, c.t0, c.num_tokens, c.pos_start) for c in w.chunks] for w in one.window] == \
            [[(c.kind, c.t0, c.num_tokens, c.pos_start) for c in w.chunks] for w in many.window]
        assert len(one.window) > 4
        for w1, w2 in zip(one.window, many.window):
            torch.testing.assert_close(w1.key_sum, w2.key_sum, rtol=1e-4, atol=1e-3)
        ref, pos, open_block = DynamicCache(), 0, None          # the stream as plain prefills, closers placed here
        for c in [prompts.system_chunk(b), *(c for cs in batches for c in cs)]:
            if open_block is not None and not c.continues:
                closer = b.block_closer(open_block)
                b.prefill(closer, ref, pos)
                pos += closer.pos_span
            b.prefill(c, ref, pos)
            pos, open_block = pos + c.pos_span, c.block
        assert pos == many.next_pos
        for mem in (one, many):
            k, v = kv_cache.read_range(mem.cache, 0, mem.num_tokens)
            k0, v0 = kv_cache.read_range(ref, 0, ref.get_seq_length())
            torch.testing.assert_close(k, k0, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v, v0, rtol=1e-4, atol=1e-4)
        one.flush(20.0)
        many.flush(20.0)
        assert [(s.t0, s.t1, s.num_tokens) for s in one.segments] == [(s.t0, s.t1, s.num_tokens) for s in many.segments]
        q = prompts.question_chunk(b, 20.0, "What did the sign say?")
        views = [m.assemble(m.segments, window=False) for m in (one, many)]
        torch.testing.assert_close(*[b.prefill(q, v.cache, v.next_pos) for v in views], rtol=1e-4, atol=1e-4)


def test_sealing_after_the_batch_keeps_the_window_bounded(tiny_qwen):
    """A small window: each batch seals what no longer fits once, after its one prefill; the segments sealed are
    the ones appending chunk by chunk seals (the same boundaries), and the window ends within its budget."""
    b = tiny_qwen
    batches = _batches(b, n_frames=32)
    one, many = _memory(b, 120), _memory(b, 120)
    sealed = 0
    for cs in batches:
        for c in cs:
            one.append(c)
        sealed += len(many.append_all(cs).sealed)
        assert many.window_tokens <= 120 or len(many.window) == 1
    assert sealed > 3 and sealed == len(many.segments)
    assert [(s.t0, s.num_tokens) for s in one.segments] == [(s.t0, s.num_tokens) for s in many.segments]


@pytest.mark.parametrize("lean", [True, False])
def test_key_sums_per_piece(tiny_qwen, lean):
    """`prefill_keys` with `sizes` gives each piece's key sum: those of prefilling the pieces one after another."""
    from transformers import DynamicCache

    from model.chunk import concat_chunks
    b = tiny_qwen
    with contextlib.nullcontext() if lean else b.transformers_forward():
        chunks = [c for cs in _batches(b, n_frames=8, batch=4) for c in cs]
        assert len(chunks) >= 2
        cache, pos, each = DynamicCache(), 0, []
        for c in chunks:
            each.append(b.prefill_keys(c, cache, pos)[1])
            pos += c.pos_span
        _, sums = b.prefill_keys(concat_chunks(chunks, b.embed_ids), DynamicCache(), 0, [c.num_tokens for c in chunks])
    assert sums.shape == (len(chunks), *each[0].shape)
    torch.testing.assert_close(sums, torch.stack(each), rtol=1e-4, atol=1e-3)
