"""The backend interface: chunk-by-chunk ingest equals one full prefill; RoPE shift is exact;
questions are answered through the same interface on both backends."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import onlooker_kernels as kernels
from memory.config import MemoryConfig
from memory.kv_cache import fork_cache
from memory.manager import HierarchicalMemory
from model.chunk import Chunk, concat_chunks
from model.patches import patchify
from onlooker_kernels.reference import rope_shift_ref
from perception.synthetic import SyntheticScene
from reasoning import prompts
from reasoning.answerer import AnswerJob


def _ingest(backend, chunks):
    cache, offset, logits = DynamicCache(), 0, None
    for c in chunks:
        logits = backend.prefill(c, cache, offset)
        offset += c.pos_span
    return logits, cache


def _concat(chunks: list[Chunk], backend) -> Chunk:
    """The same chunks as one input: positions shifted by the running span."""
    return concat_chunks(chunks, getattr(backend, "embed_ids", None))


def _qwen_chunks(backend):
    scene = SyntheticScene("short")
    return [prompts.system_chunk(backend), backend.frame_chunk(scene.render(0), 0.0),
            prompts.text_observation_chunk(backend, 0.5, 'Text on screen: "TIGER".'),
            backend.frame_chunk(scene.render(10), 2.0),
            backend.frame_chunk(scene.render(20), 4.0), prompts.question_chunk(backend, 4.0, "What is on the sign?")]


def test_qwen_chunked_ingest_equals_full_prefill(tiny_qwen):
    chunks = _qwen_chunks(tiny_qwen)
    chunked, cache = _ingest(tiny_qwen, chunks)
    full, _ = _ingest(tiny_qwen, [_concat(chunks, tiny_qwen)])
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == sum(c.num_tokens for c in chunks)


def test_qwen_positions_match_transformers_full_forward(tiny_qwen):
    """Our chunked M-RoPE positions against Qwen2_5_VLModel.get_rope_index on the same token sequence."""
    chunks = _qwen_chunks(tiny_qwen)
    chunked, _ = _ingest(tiny_qwen, chunks)
    scene = SyntheticScene("short")
    m = tiny_qwen.model
    ids = torch.cat([c.input_ids for c in chunks])[None]
    pv, grids = zip(*(patchify(scene.render(i), 14, 2, 2, tiny_qwen.max_pixels, tiny_qwen.min_pixels)
                      for i in (0, 10, 20)))
    with torch.no_grad():
        out = m(input_ids=ids, pixel_values=torch.cat(pv), image_grid_thw=torch.stack(grids),
                mm_token_type_ids=(ids == m.config.image_token_id).int())
    torch.testing.assert_close(chunked, out.logits[0, -1].float(), rtol=1e-5, atol=1e-5)


def test_qwen3_vl_chunked_ingest_matches_transformers_full_forward(tiny_qwen3):
    """Qwen3-VL: interleaved M-RoPE and deepstack features added in the first LM layers; chunk by chunk,
    batched as one chunk, and Transformers' own forward (pixel values, get_rope_index) agree."""
    b = tiny_qwen3
    chunks = _qwen_chunks(b)
    assert chunks[1].deepstack is not None and len(chunks[1].deepstack) == 2
    chunked, _ = _ingest(b, chunks)
    from model.chunk import concat_chunks
    one, _ = _ingest(b, [concat_chunks(chunks, b.embed_ids)])
    torch.testing.assert_close(chunked, one, rtol=1e-5, atol=1e-5)
    scene = SyntheticScene("short")
    ids = torch.cat([c.input_ids for c in chunks])[None]
    pv, grids = zip(*(b.patchify(scene.render(i)) for i in (0, 10, 20)))
    with torch.no_grad():
        out = b.model(input_ids=ids, pixel_values=torch.cat(pv), image_grid_thw=torch.stack(grids),
                      mm_token_type_ids=(ids == b.model.config.image_token_id).int())
    torch.testing.assert_close(chunked, out.logits[0, -1].float(), rtol=1e-5, atol=1e-5)


def test_lite_chunked_ingest_equals_full_prefill(lite_backend):
    b = lite_backend
    chunks = [prompts.system_chunk(b)] + [prompts.text_observation_chunk(b, t, f'Text on screen: "{w}".')
                                   for t, w in [(0, "APPLE"), (8, "RIVER"), (16, "TIGER")]]
    chunks.append(prompts.question_chunk(b, 17.0, "What word is on the sign?"))
    chunked, _ = _ingest(b, chunks)
    full, _ = _ingest(b, [_concat(chunks, b)])
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)


def test_rope_shift_moves_keys_exactly(lite_backend, tiny_qwen):
    for b in (lite_backend, tiny_qwen):
        chunk = prompts.text_observation_chunk(b, 3.0, 'Text on screen: "LEMON".')
        at_0, at_40 = DynamicCache(), DynamicCache()
        b.prefill(chunk, at_0, 0)
        b.prefill(chunk, at_40, 40)
        for l0, l40 in zip(at_0.layers, at_40.layers):
            torch.testing.assert_close(kernels.rope_shift(l40.keys, -40, b.inv_freq), l0.keys, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(l40.values, l0.values, rtol=1e-4, atol=1e-4)


def test_window_evicts_oldest_and_repositions(lite_backend):
    b = lite_backend
    mem = HierarchicalMemory(b, MemoryConfig(window_tokens=40, positions="contiguous", segment_seconds=1.0))
    mem.set_sink(prompts.system_chunk(b))
    sink_keys = [layer.keys.clone() for layer in mem.cache.layers]
    evicted = []
    words = ["APPLE", "RIVER", "TIGER", "PIANO", "LEMON", "CASTLE"]
    for i, w in enumerate(words):
        evicted += mem.append(prompts.text_observation_chunk(b, i * 4.0, f'Text on screen: "{w}".')).sealed
    assert [r.text.split('"')[1] for r in evicted] == words[: len(evicted)] and len(evicted) >= 2
    assert mem.window_tokens <= 40 and mem.stats.segments_sealed == len(evicted)
    assert [s.t1 for s in evicted] == [s.t0 + 4.0 for s in evicted]     # a segment lasts until the next one
    assert mem.num_tokens == mem.sink_tokens + mem.window_tokens
    assert mem.next_pos == mem.num_tokens           # contiguous after re-positioning
    for before, layer in zip(sink_keys, mem.cache.layers):
        torch.testing.assert_close(layer.keys[:, :, : before.shape[2]], before)   # the sink is untouched
    # the re-positioned window is the same cache one gets by prefilling the kept chunks right after the sink
    fresh = HierarchicalMemory(b, MemoryConfig(window_tokens=10_000))
    fresh.set_sink(prompts.system_chunk(b))
    for w in mem.window:
        for r in w.chunks:
            fresh.append(b.text_chunk(r.kind, r.text, r.t0, r.t1))
    # layer 0's keys depend only on the tokens and their positions
    torch.testing.assert_close(mem.cache.layers[0].keys, fresh.cache.layers[0].keys, rtol=1e-4, atol=1e-4)


def test_fork_is_isolated(lite_backend):
    b = lite_backend
    mem = HierarchicalMemory(b, MemoryConfig())
    mem.set_sink(prompts.system_chunk(b))
    view = mem.context()
    n = view.num_tokens
    b.prefill(prompts.question_chunk(b, 0.0, "hi"), view.cache, view.next_pos)
    assert mem.num_tokens == n and view.cache.get_seq_length() > n
    mem.append(prompts.text_observation_chunk(b, 1.0, "No text on screen."))
    assert fork_cache(mem.cache).get_seq_length() == mem.num_tokens


def test_answer_through_common_interface(lite_backend, tiny_qwen):
    scene = SyntheticScene("short")
    for b, chunk in ((lite_backend, prompts.text_observation_chunk(lite_backend, 1.0, 'Text on screen: "PIANO".')),
                     (tiny_qwen, tiny_qwen.frame_chunk(scene.render(0), 0.0))):
        mem = HierarchicalMemory(b, MemoryConfig())
        mem.set_sink(prompts.system_chunk(b))
        mem.append(chunk)
        job = AnswerJob(b, mem.context(), prompts.question_chunk(b, 1.0, "What word is on the sign?",
                                                           (1.0, 'Text on screen: "PIANO".')), 8)
        pieces = []
        while not job.done:
            pieces.append(job.step(3))
        assert job.ttft_ms is not None and 1 <= len(job.token_ids) <= 8
        assert "".join(pieces) == job.text


def test_qwen3_vl_frame_pairs_equal_transformers_video_forward(tiny_qwen3):
    """Qwen3-VL, time as it was trained: each frame pair goes in behind the processor's own timestamp text
    (`<t seconds>`, the mean time of the pair) with frames back to back, as processing_qwen3_vl lays out a
    video. Chunked ingest of two pairs equals Transformers' forward with pixel_values_videos / video_grid_thw
    on the same token sequence (video tokens in the ids)."""
    from perception.visual import VisualConfig, VisualStream
    b = tiny_qwen3
    scene = SyntheticScene("short")
    frames = [(scene.render(i * 7), 10.0 + i * 0.5) for i in range(4)]          # 2 pairs, 2 frames per second
    stream = VisualStream(b, VisualConfig(batch_groups=1, drop_threshold=1.0, reuse_threshold=0.0))
    pairs = [c for f, t in frames for c in stream.push(f, t)]
    assert len(pairs) == 2 and pairs[0].t0 == 10.0 and pairs[0].t1 == 10.5
    chunks = [prompts.system_chunk(b), *pairs, prompts.question_chunk(b, 12.0, "What is on the sign?")]
    chunked, _ = _ingest(b, chunks)
    ids = torch.cat([c.input_ids for c in chunks])
    vs, img, vid = b.vision_start_id, b.image_token_id, b.model.config.video_token_id
    ids = torch.where(ids == img, torch.full_like(ids, vid), ids)[None]
    marker = b.tokenizer("<10.2 seconds>", add_special_tokens=False)["input_ids"]   # (10.0 + 10.5) / 2
    assert pairs[0].input_ids[:len(marker) + 1].tolist() == [*marker, vs]
    assert pairs[0].input_ids[-1].item() == b.vision_end_id                       # no newline between frames
    pv = torch.cat([b.patchify([f for f, _ in frames[0:2]])[0], b.patchify([f for f, _ in frames[2:4]])[0]])
    grid = b.patchify([f for f, _ in frames[0:2]])[1].clone()
    grid[0] = 2                                                                     # one video of 2 pairs
    with torch.no_grad():
        out = b.model(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid[None],
                      mm_token_type_ids=(ids == vid).int() * 2)
    torch.testing.assert_close(chunked, out.logits[0, -1].float(), rtol=1e-5, atol=1e-5)


def _video_pairs(backend, start: float, fps: float, pairs: int, block_seconds: float = 60.0):
    from perception.visual import VisualConfig, VisualStream
    scene = SyntheticScene("short")
    frames = [(scene.render(i * 7), start + i / fps) for i in range(2 * pairs)]
    stream = VisualStream(backend, VisualConfig(batch_groups=1, drop_threshold=1.0, reuse_threshold=0.0,
                                                block_seconds=block_seconds))
    return frames, [c for f, t in frames for c in stream.push(f, t)]


def test_qwen2_5_vl_video_block_equals_transformers_video_forward(tiny_qwen):
    """Qwen2.5-VL, time as it was trained: a run of frame pairs is one video block whose temporal positions
    step with real stream time. Three pairs at 3 frames/s (a pair every 2/3 s) ingested chunk by chunk, then
    the block's closer and a question, equal Transformers' forward with pixel_values_videos, video_grid_thw
    [3, h, w] and second_per_grid_ts 2/3 on the same token sequence."""
    b = tiny_qwen
    assert b.frame_layout == "video"
    frames, pairs = _video_pairs(b, 10.0, 3.0, 3)
    assert len(pairs) == 3 and [c.continues for c in pairs] == [False, True, True]
    assert pairs[1].pos_span == pairs[2].pos_span == 0 and pairs[0].block is pairs[2].block
    t_pos = [int(pairs[0].position_ids[0, -1]) - pairs[0].pos_span] + [int(c.position_ids[0, 0]) for c in pairs[1:]]
    tps = b.tokens_per_second
    assert t_pos == [0, int(tps * 2 / 3), int(tps * 4 / 3)]                      # real time, not token count
    closer = b.block_closer(pairs[-1].block)
    chunks = [prompts.system_chunk(b), *pairs, closer, prompts.question_chunk(b, 12.0, "What is on the sign?")]
    chunked, _ = _ingest(b, chunks)
    vid = b.video_token_id
    ids = torch.cat([c.input_ids for c in chunks])[None]
    assert int((ids == vid).sum()) == sum(int(c.position_ids.shape[1]) for c in pairs) - (pairs[0].pos_span)
    pv = torch.cat([b.patchify([f for f, _ in frames[i:i + 2]])[0] for i in (0, 2, 4)])
    grid = b.patchify([f for f, _ in frames[0:2]])[1].clone()
    grid[0] = 3
    with torch.no_grad():
        out = b.model(input_ids=ids, pixel_values_videos=pv, video_grid_thw=grid[None],
                      second_per_grid_ts=torch.tensor([2 / 3]), mm_token_type_ids=(ids == vid).int() * 2)
    torch.testing.assert_close(chunked, out.logits[0, -1].float(), rtol=1e-5, atol=1e-5)


def test_memory_closes_an_open_video_block_on_forks_and_before_text(tiny_qwen):
    """While a video block is open, a context view closes it on its own fork (the device cache keeps it open
    for the next pair); text appended to the memory closes it for real; a block never spans segments."""
    b = tiny_qwen
    mem = HierarchicalMemory(b, MemoryConfig(segment_seconds=0.5, segment_tokens=8, window_tokens=10_000))
    mem.set_sink(prompts.system_chunk(b))
    _, pairs = _video_pairs(b, 0.0, 2.0, 3)
    for c in pairs:
        mem.append(c)
    assert len(mem.window) == 1                           # short segments, but a block stays in one
    before = mem.num_tokens
    view = mem.context()
    assert mem.num_tokens == before and view.num_tokens == before + 2 and mem._open is pairs[0].block
    closer = b.block_closer(pairs[0].block)
    q = prompts.question_chunk(b, 3.0, "What is on the sign?")
    got = b.prefill(q, view.cache, view.next_pos)
    want, _ = _ingest(b, [prompts.system_chunk(b), *pairs, closer, q])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    mem.append(prompts.text_observation_chunk(b, 3.0, 'Heard: "hello".'))
    heard = mem.window[-1].chunks[-1].num_tokens
    assert mem._open is None and pairs[0].block.closed and mem.num_tokens == before + 2 + heard
    assert [c.kind for c in mem.window[0].chunks] == ["frame"] * 4 and len(mem.window) == 2


def test_a_gpu_model_runs_without_cudnn_attention():
    """cuDNN SDPA keeps a plan per pair of sequence lengths, which a stream never stops making (host RAM grew
    ~0.5 GB per stream-hour on the 7B shape); every GPU load path switches it off. A global flag, so testable
    without a GPU."""
    import torch

    from model.causal_lm import CausalLMBackend
    from model.qwen_vl import attention_for
    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        attention_for("cpu")
        assert torch.backends.cuda.cudnn_sdp_enabled()           # nothing changes on the CPU
        attention_for("cuda")
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp(True)
        try:
            CausalLMBackend.from_dir("/nonexistent-model-dir", "x", device="cuda")
        except Exception:
            pass                                                   # the switch comes before the weights
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)


def test_the_runtime_thread_on_a_gpu_keeps_torch_cpu_work_on_one_thread():
    """torch's pool of one thread per core waits for its slowest thread at every parallel region: one busy core
    anywhere halved GPU ingest on the H200 (bench.ingest_contention). The runtime's thread, which launches the
    model's kernels, runs its CPU work on one thread on a GPU; on the CPU it keeps the pool."""
    import threading
    from types import SimpleNamespace

    from assistant.threads import Pipeline

    seen: dict[str, int] = {}
    main_threads = torch.get_num_threads()

    def runtime_thread(device: str) -> None:
        fake = SimpleNamespace(runtime=SimpleNamespace(backend=SimpleNamespace(device=torch.device(device)),
                                                       run=lambda: seen.__setitem__(device, torch.get_num_threads())),
                               _runtime_done=threading.Event())
        th = threading.Thread(target=Pipeline._run_runtime, args=(fake,))
        th.start()
        th.join()

    torch.set_num_threads(2)
    try:
        runtime_thread("cpu")
        runtime_thread("cuda")
        assert seen == {"cpu": 2, "cuda": 1}
        assert torch.get_num_threads() == 2                      # a thread that already ran keeps its pool
    finally:
        torch.set_num_threads(main_threads)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-12))


@pytest.mark.parametrize("device", [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)])
def test_rope_shift_equals_the_reference_and_rounds_once(device):
    """The memory's rope_shift (plain torch, host-built table) against the float64-angle reference: equal in
    float32, undone by the opposite delta, and in bf16 no further from the float32 result than the reference's
    own bf16 arithmetic (it rounds once). A sign error in the table or the rotation fails the first check."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    keys = torch.randn(3, 4, 40, 64, device=device)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 64, 2, device=device).float() / 64))
    want = rope_shift_ref(keys, 4321, inv_freq)
    got = kernels.rope_shift(keys, 4321, inv_freq)
    assert _rel(got, want) < 1e-6 and _rel(got, keys) > 0.1
    assert _rel(kernels.rope_shift(got, -4321, inv_freq), keys) < 1e-5
    kb = keys.bfloat16()
    assert _rel(kernels.rope_shift(kb, 4321, inv_freq).float(), want) <= \
        _rel(rope_shift_ref(kb, 4321, inv_freq).float(), want)
