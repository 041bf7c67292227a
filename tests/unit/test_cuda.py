"""The VLM path on a GPU, bf16 (marker `cuda`; skipped without one). Tiny random configs: the point is
the device path (bf16 casts, host <-> device moves of sealed KV, int8 on the device), not speed."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import DynamicCache

from reasoning import prompts
from tests.conftest import tiny_qwen_config

pytestmark = pytest.mark.cuda


def _tokenizer():
    from transformers import AutoTokenizer
    path = os.environ.get("ONLOOKER_TEST_TOKENIZER")
    if not path:
        from assistant.store import default_cache_dir
        path = str(default_cache_dir() / "models" / "smollm2-135m-instruct")
    if not os.path.isdir(path):
        pytest.skip("no ChatML tokenizer: set ONLOOKER_TEST_TOKENIZER or run onlooker download lite")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def gpu_qwen():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.qwen_vl import QwenVLBackend
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = tiny_qwen_config(len(tok))
    cfg._attn_implementation = "sdpa"
    model = Qwen2_5_VLForConditionalGeneration(cfg).to("cuda", torch.bfloat16).eval()
    return QwenVLBackend(model, tok, "tiny-qwen2.5-vl-cuda", max_pixels=112 * 112)


def _frames(n):
    from perception.synthetic import SyntheticScene
    scene = SyntheticScene("short")
    return [(scene.render(i * 7), i * 0.5) for i in range(n)]


def test_gpu_batched_ingest_matches_one_group_at_a_time(gpu_qwen):
    from perception.visual import VisualConfig, VisualStream
    b = gpu_qwen
    cfg = dict(drop_threshold=1.0, reuse_threshold=0.0)
    one = VisualStream(b, VisualConfig(batch_groups=1, **cfg))
    four = VisualStream(b, VisualConfig(batch_groups=4, **cfg))
    a = [c for f, t in _frames(8) for c in one.push(f, t)]
    c = [c for f, t in _frames(8) for c in four.push(f, t)]
    assert len(a) == 4 and len(c) == 1
    results = []
    for chunks in (a, c):
        cache, pos, logits = DynamicCache(), 0, None
        for ch in [prompts.system_chunk(b), *chunks]:
            logits = b.prefill(ch, cache, pos)
            pos += ch.pos_span
        results.append(logits)
    rel = (results[0] - results[1]).norm() / results[1].norm()
    assert rel < 2e-2, rel                    # bf16: different batch shapes round differently


def test_gpu_tower_stream_gives_the_same_chunks(gpu_qwen):
    """perception.visual's `tower_stream`: the tower and drop masks on a CUDA stream of their own (pipelined, with
    token drop and feature reuse on) give the chunks of the same stream run on one CUDA stream, token for token, and
    prefills that read them give the same logits."""
    from perception.visual import VisualConfig, VisualStream
    b = gpu_qwen
    frames = _frames(24)
    frames[10:12] = [(frames[8][0], frames[10][1]), (frames[9][0], frames[11][1])]     # a pair that reuses features
    out = []
    for side in (False, True):
        vs = VisualStream(b, VisualConfig(batch_groups=2, pipeline=True, tower_stream=side, keyframe_seconds=4.0))
        assert (vs._side is not None) == side
        chunks = [c for f, t in frames for c in vs.push(f, t)] + vs.flush()
        cache, pos, logits = DynamicCache(), 0, []
        for ch in [prompts.system_chunk(b), *chunks]:
            logits.append(b.prefill(ch, cache, pos))
            pos += ch.pos_span
        out.append((chunks, logits, vs.stats))
    (one, lone, sone), (two, ltwo, stwo) = out
    assert sone.reused_groups == stwo.reused_groups > 0 and sone.tokens_kept == stwo.tokens_kept < sone.tokens_total
    assert len(one) == len(two) > 2
    for a, c in zip(one, two, strict=True):
        assert torch.equal(a.position_ids, c.position_ids)
        assert (a.inputs_embeds is None) == (c.inputs_embeds is None)
        if a.inputs_embeds is not None:
            assert torch.equal(a.inputs_embeds, c.inputs_embeds)
    for x, y in zip(lone, ltwo, strict=True):
        assert torch.equal(x, y)


def test_gpu_hierarchy_seals_to_host_and_restores_exactly(gpu_qwen, tmp_path):
    """Everything retrieved, nothing pruned: the assembled context gives the full-context logits, with the
    sealed KV moved to the host, spilled to disk and moved back (bf16 round trip is exact)."""
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    b = gpu_qwen
    chunks = [b.frame_chunk(f, t) for f, t in _frames(6)]
    question = prompts.question_chunk(b, 5.0, "What was on the sign at 0:01?")
    cache, pos = DynamicCache(), 0
    for ch in [prompts.system_chunk(b), *chunks]:
        b.prefill(ch, cache, pos)
        pos += ch.pos_span
    ref = b.prefill(question, cache, pos)
    mem = HierarchicalMemory(b, MemoryConfig(window_tokens=10_000, host_mb=0.0, segment_seconds=0.1),
                             spill_dir=tmp_path / "kv")
    mem.set_sink(prompts.system_chunk(b))
    for ch in chunks:
        mem.append(ch)
    total = mem.window_tokens
    for frac in (0.7, 0.4):
        mem.shrink_window(int(total * frac))
    mem.flush(10.0)
    assert mem.stats.segments_spilled == len(mem.segments) and mem.device_bytes() > 0
    view = mem.assemble(mem.segments)
    assert view.cache.layers[0].keys.is_cuda
    logits = b.prefill(question, view.cache, view.next_pos)
    rel = (logits - ref).norm() / ref.norm()
    assert rel < 1e-2, rel                    # keys rotated in bf16: within bf16 rounding


def test_gpu_int8_sealing_happens_on_the_device(gpu_qwen):
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    b = gpu_qwen
    mem = HierarchicalMemory(b, MemoryConfig(window_tokens=64, quantize=True, segment_seconds=0.1))
    mem.set_sink(prompts.system_chunk(b))
    for f, t in _frames(6):
        mem.append(b.frame_chunk(f, t))
    seg = mem.segments[0]
    assert seg.kv is not None and seg.kv.keys.dtype == torch.int8 and not seg.kv.keys.is_cuda
    view = mem.assemble([seg])
    assert view.cache.layers[0].keys.dtype == torch.bfloat16


@pytest.mark.parametrize("bits,keep", [(8, 1.0), (4, 0.5)])
def test_gpu_sealed_segments_land_as_a_memory_that_waits_seals_them(gpu_qwen, monkeypatch, bits, keep):
    """memory.landing on the device: pinned copies behind an event, landed later, equal bit for bit to sealing with a
    wait at every segment (MAX_IN_FLIGHT 0), and the host copies are ordinary (unpinned) memory."""
    from memory import landing
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    b = gpu_qwen
    runs = []
    for limit in (landing.MAX_IN_FLIGHT, 0):
        monkeypatch.setattr(landing, "MAX_IN_FLIGHT", limit)
        mem = HierarchicalMemory(b, MemoryConfig(window_tokens=64, quantize=True, quantize_bits=bits, keep_ratio=keep,
                                                 segment_seconds=0.1))
        mem.set_sink(prompts.system_chunk(b))
        sealed, most = [], 0
        for f, t in _frames(12):
            sealed += mem.append(b.frame_chunk(f, t)).sealed
            most = max(most, len(mem.landing))
        if limit == 0:
            assert most == 0                                  # no room in flight: every segment waited for
        runs.append((mem.segments, sealed))
    (segs, sealed), (ref, _) = runs
    assert len(segs) == len(ref) > 2 and [id(x) for x in sealed] == [id(x) for x in segs[:len(sealed)]]
    for a, r in zip(segs, ref, strict=True):
        assert a.kv is not None and r.kv is not None and not a.kv.keys.is_pinned() and not a.kv.keys.is_cuda
        torch.testing.assert_close(a.kv.keys, r.kv.keys, rtol=0, atol=0)
        torch.testing.assert_close(a.kv.value_scale, r.kv.value_scale, rtol=0, atol=0)
        torch.testing.assert_close(a.rep_key, r.rep_key, rtol=0, atol=0)
        assert (a.kept is None) == (keep == 1.0) and (a.kept is None or torch.equal(a.kept, r.kept))


def test_gpu_qwen3_vl_deepstack_chunk_prefills_in_bf16(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from transformers import Qwen3VLForConditionalGeneration

    from model.qwen_vl import QwenVLBackend
    from perception.visual import VisualConfig, VisualStream
    from tests.conftest import tiny_qwen3_config
    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = tiny_qwen3_config(len(tok))
    model = Qwen3VLForConditionalGeneration(cfg).to("cuda", torch.bfloat16).eval()
    b = QwenVLBackend(model, tok, "tiny-qwen3-vl-cuda", max_pixels=128 * 128)
    vs = VisualStream(b, VisualConfig(batch_groups=2))
    chunks = [c for f, t in _frames(4) for c in vs.push(f, t)]
    cache = DynamicCache()
    logits = b.prefill(chunks[0], cache, 0)
    assert torch.isfinite(logits).all() and cache.layers[0].keys.is_cuda
    assert len(chunks[0].deepstack) == 2 and chunks[0].deepstack[0].is_cuda


def test_gpu_video_block_equals_transformers_video_forward(gpu_qwen):
    """Qwen2.5-VL video blocks on the GPU in bf16: three pairs ingested chunk by chunk, the closer and a
    question give Transformers' own video forward (pixel_values_videos, second_per_grid_ts) within bf16."""
    from perception.visual import VisualConfig, VisualStream
    b = gpu_qwen
    frames = [(f, 10.0 + i / 3) for i, (f, _) in enumerate(_frames(6))]              # 3 frames per second
    vs = VisualStream(b, VisualConfig(batch_groups=1, drop_threshold=1.0, reuse_threshold=0.0, block_seconds=60))
    pairs = [c for f, t in frames for c in vs.push(f, t)]
    assert [c.continues for c in pairs] == [False, True, True]
    chunks = [prompts.system_chunk(b), *pairs, b.block_closer(pairs[-1].block),
              prompts.question_chunk(b, 12.0, "What is on the sign?")]
    cache, pos, logits = DynamicCache(), 0, None
    for ch in chunks:
        logits = b.prefill(ch, cache, pos)
        pos += ch.pos_span
    ids = torch.cat([c.input_ids for c in chunks])[None].cuda()
    vid = b.video_token_id
    pv = torch.cat([b.patchify([f for f, _ in frames[i:i + 2]])[0] for i in (0, 2, 4)]).cuda()
    grid = b.patchify([f for f, _ in frames[0:2]])[1].clone()
    grid[0] = 3
    with torch.no_grad():
        out = b.model(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid[None].cuda(),
                      second_per_grid_ts=torch.tensor([2 / 3]).cuda(), mm_token_type_ids=(ids == vid).int() * 2)
    ref = out.logits[0, -1].float()
    rel = (logits - ref).norm() / ref.norm()
    assert rel < 2e-2, rel                    # bf16: one forward against chunked prefills


def test_gpu_captions_and_perception_notes_reach_the_index(gpu_qwen):
    """The VLM path's text for search on the GPU: a caption decoded on the view of a segment sealed int8 to
    the host, and a perception note, both join the segment's index text."""
    from memory.config import MemoryConfig
    from memory.manager import HierarchicalMemory
    from perception.visual import VisualConfig, VisualStream
    from reasoning.captions import Captioner
    from reasoning.config import ReasoningConfig
    b = gpu_qwen
    mem = HierarchicalMemory(b, MemoryConfig(window_tokens=64, quantize=True, segment_seconds=1.0,
                                             use_embeddings=False))
    mem.set_sink(prompts.system_chunk(b))
    cap = Captioner(b, mem, ReasoningConfig(captions=True, caption_tokens=6))
    vs = VisualStream(b, VisualConfig(block_seconds=1.0))
    mem.annotate(0.5, 'Text on screen: "TIGER".')
    for f, t in _frames(12):
        for ch in vs.push(f, t):
            for seg in mem.append(ch).sealed:
                cap.offer(seg)
    assert mem.segments and mem.segments[0].kv is not None and mem.segments[0].kv.keys.dtype == torch.int8
    done = None
    while cap.busy:
        done = cap.step(4) or done
    assert done is not None and cap.stats.written >= 1
    seg = done[0]
    assert "Caption:" in seg.text and seg.text.count("<frame") >= 1
    assert 'TIGER' in mem.segments[0].text


@pytest.mark.parametrize("shape", ["qwen2.5-vl-7b", "qwen3-vl-8b"])
def test_gpu_vision_tower_batched_attention_within_bf16_of_transformers(shape):
    """On the real tower shapes (random weights): the batched attention's bf16 output, eager and with the blocks
    compiled, is as close to the tower's own float32 forward as the tower's own bf16 forward is; so with the MLPs
    aligned as the backend does on a GPU (model.vision_mlp: 3,420 -> 3,456 units, 4,304 -> 4,352)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from bench.vision import _inputs, build_tower
    from model import vision_attention, vision_mlp
    tower = build_tower(shape)
    x, grid = _inputs(tower, 3)
    with torch.inference_mode():
        exact = tower.float()(x.float(), grid_thw=grid.cuda()).pooler_output
        tower.to(torch.bfloat16)
        own = tower(x, grid_thw=grid.cuda()).pooler_output.float()
        assert vision_attention.install(tower)
        with vision_attention.planned(tower, grid.tolist()) as on:
            fast = tower(x, grid_thw=grid.cuda()).pooler_output.float()
        assert vision_mlp.align_mlps(tower) == len(tower.blocks)          # as the backend does on a GPU
        with vision_attention.planned(tower, grid.tolist()):
            aligned = tower(x, grid_thw=grid.cuda()).pooler_output.float()
        vision_attention.compile_blocks(tower)
        with vision_attention.planned(tower, grid.tolist()):
            compiled = tower(x, grid_thw=grid.cuda()).pooler_output.float()
    assert on

    def err(a):
        return float((a - exact).norm() / exact.norm())
    print(f"{shape}: relative error to float32: own bf16 {err(own):.2e}, batched {err(fast):.2e}, "
          f"MLP aligned {err(aligned):.2e}, compiled {err(compiled):.2e}")
    assert err(fast) <= 1.5 * err(own) + 1e-3, (err(fast), err(own))
    assert err(aligned) <= 1.5 * err(own) + 1e-3, (err(aligned), err(own))
    assert err(compiled) <= 1.5 * err(own) + 1e-3, (err(compiled), err(own))


@pytest.mark.parametrize("shape", ["7b", "8b"])
def test_gpu_lean_lm_forward_within_bf16_of_transformers(shape):
    """model.fast_lm on the real LM widths (2 layers, random weights): a 300-token chunk, then 200 tokens on top of
    it and a decode step; the lean bf16 forward is as close to transformers' float32 forward as transformers' own
    bf16 forward is (last hidden state and the cache)."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, Qwen3VLTextConfig, Qwen3VLTextModel

    from bench.ingest_shapes import SIZES
    from model.fast_lm import FastLM
    spec = dict(SIZES[shape][1]["text_config"], num_hidden_layers=2)
    qwen3 = shape == "8b"
    cfg = (Qwen3VLTextConfig if qwen3 else Qwen2_5_VLTextConfig)(**spec)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    lm = (Qwen3VLTextModel if qwen3 else Qwen2_5_VLTextModel)(cfg).to("cuda", torch.float32).eval()
    h = cfg.hidden_size
    xs = [torch.randn(n, h, device="cuda") for n in (300, 200, 1)]
    poss = [torch.stack([torch.arange(n) // 7, torch.arange(n) % 11, torch.arange(n) % 13]).cuda() + off
            for n, off in ((300, 0), (200, 310), (1, 520))]
    deep = [torch.randn(50, h, device="cuda") for _ in range(2)] if qwen3 else None
    mask = torch.zeros(200, dtype=torch.bool)
    mask[20:70] = True

    def own():
        cache, outs = DynamicCache(), []
        for i, (x, p) in enumerate(zip(xs, poss, strict=True)):
            extra = {"visual_pos_masks": mask.cuda()[None], "deepstack_visual_embeds": [d.to(x.dtype) for d in deep]}\
                if deep is not None and i == 1 else {}
            out = lm(inputs_embeds=x.to(lm.dtype)[None], position_ids=p[:, None], past_key_values=cache,
                     use_cache=True, **extra)
            outs.append(out.last_hidden_state[0, -1].float())
        return outs, cache

    def lean(fast):
        cache, outs = DynamicCache(), []
        for i, (x, p) in enumerate(zip(xs, poss, strict=True)):
            d = [t.to(lm.dtype) for t in deep] if deep is not None and i == 1 else None
            outs.append(fast.forward(x.to(lm.dtype), p[:, None], cache, visual_mask=mask if d else None,
                                     deepstack=d)[0].float())
        return outs, cache

    with torch.inference_mode():
        exact, exact_cache = own()
        lm.to(torch.bfloat16)
        ref, ref_cache = own()
        fast = FastLM(lm)
        got, got_cache = lean(fast)
        from model.lm_graphs import BUCKETS
        fast.use_graphs(True, buckets=BUCKETS)               # the layers as CUDA graphs (model/lm_graphs.py)
        graphed, graphed_cache = lean(fast)
        buckets = sorted(rows for rows, _, _ in fast.graphs._made)
        fast.use_graphs(False)

    def err(a, b):
        return float((a.float() - b.float()).norm() / b.float().norm())

    def within_bf16(label, outs, cache):
        """`outs` and `cache` as close to the float32 forward as transformers' own bf16 forward is."""
        for i in range(3):
            e_own, e = err(ref[i], exact[i]), err(outs[i], exact[i])
            print(f"{shape} step {i}: relative error to float32: transformers bf16 {e_own:.2e}, {label} {e:.2e}, "
                  f"to the eager lean {err(outs[i], got[i]):.2e}")
            assert e <= 1.5 * e_own + 1e-3, (label, i, e, e_own)
        for lr, lg, le in zip(ref_cache.layers, cache.layers, exact_cache.layers, strict=True):
            assert err(lg.keys, le.keys) <= 1.5 * err(lr.keys, le.keys) + 1e-3
            assert err(lg.values, le.values) <= 1.5 * err(lr.values, le.values) + 1e-3
    within_bf16("lean", got, got_cache)
    assert buckets == [16, 256, 384]                         # 1, 200 and 300 tokens, padded
    within_bf16("CUDA graphs", graphed, graphed_cache)


@pytest.mark.parametrize("shape", ["qwen2.5-vl-7b", "qwen3-vl-8b"])
def test_gpu_vision_tower_graph_replays_equal_the_forward(shape):
    """model.vision_graphs through the backend's own `encode_patches` on the real tower shapes (random weights,
    compiled blocks): a shape is captured at its first batch and replayed after; each replay's embeddings (and
    Qwen3-VL's deepstack columns) equal the forward run without graphs on the same patches, the outputs of one
    replay survive the next, and a batch of another size gets a graph of its own."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from types import SimpleNamespace

    from bench.vision import _inputs, build_tower
    from model import vision_attention
    from model.qwen_vl import QwenVLBackend
    from model.vision_graphs import TowerGraphs
    tower = build_tower(shape)
    assert vision_attention.install(tower)
    vision_attention.compile_blocks(tower)
    qwen3 = shape.startswith("qwen3")
    be = SimpleNamespace(model=SimpleNamespace(model=SimpleNamespace(visual=tower)), device=torch.device("cuda"),
                         deepstack=qwen3, merge_size=tower.config.spatial_merge_size, visual_dtype=torch.bfloat16,
                         tower_graphs=None)

    def encode(pairs, seed):
        torch.manual_seed(seed)
        x, grid = _inputs(tower, pairs)
        patches = [p.float().cpu().pin_memory() for p in x.split(len(x) // pairs)]
        return QwenVLBackend.encode_patches(be, patches, list(grid))   # type: ignore[arg-type]

    eager = {(p, s): encode(p, s) for p, s in ((4, 1), (4, 2), (2, 3))}
    be.tower_graphs = TowerGraphs()
    first = encode(4, 1)                               # captured
    second = encode(4, 2)                              # replayed
    other = encode(2, 3)                               # another shape, captured
    assert len(be.tower_graphs) == 2 and be.tower_graphs.replays == 3
    for got, want in ((first, eager[4, 1]), (second, eager[4, 2]), (other, eager[2, 3])):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            assert float((g.float() - w.float()).norm() / w.float().norm()) < 1e-3
    assert float((first[0].float() - second[0].float()).norm()) > 0     # not the same buffer read twice
