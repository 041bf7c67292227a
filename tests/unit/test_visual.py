"""Visual tokens for the VLM backend: frame pairs, pruning that keeps positions, ViT feature reuse."""

from __future__ import annotations

import numpy as np
import torch
from transformers import DynamicCache

from model.chunk import concat_chunks
from perception.synthetic import SyntheticScene
from perception.visual import VisualConfig, VisualStream
from reasoning import prompts


def _prefill_all(b, chunks):
    cache, pos, logits = DynamicCache(), 0, None
    for c in [prompts.system_chunk(b), *chunks]:
        logits = b.prefill(c, cache, pos)
        pos += c.pos_span
    return logits, pos


def test_pruned_tokens_keep_their_positions(tiny_qwen):
    b = tiny_qwen
    embeds, grid = b.encode_frame(SyntheticScene("short").render(0))
    full = b.visual_chunk(embeds, grid, 2.0, 2.0)
    keep = torch.tensor([0, 3, 5, 6, embeds.shape[0] - 1])
    pruned = b.visual_chunk(embeds, grid, 2.0, 2.0, keep)
    head = full.num_tokens - embeds.shape[0] - 2          # marker + vision_start
    assert pruned.num_tokens == full.num_tokens - embeds.shape[0] + 5 and pruned.pos_span == full.pos_span
    torch.testing.assert_close(pruned.position_ids[:, :head], full.position_ids[:, :head])
    torch.testing.assert_close(pruned.position_ids[:, head:head + 5], full.position_ids[:, head + keep])
    torch.testing.assert_close(pruned.position_ids[:, head + 5:], full.position_ids[:, -2:])
    torch.testing.assert_close(pruned.inputs_embeds[head:head + 5], full.inputs_embeds[head + keep])


def test_a_pair_costs_the_tokens_of_one_still(tiny_qwen):
    b = tiny_qwen
    scene = SyntheticScene("short")
    still = VisualStream(b, VisualConfig(group_frames=False, drop_threshold=1.0, reuse_threshold=0.0))
    pairs = VisualStream(b, VisualConfig(group_frames=True, drop_threshold=1.0, reuse_threshold=0.0))
    n_still = sum(c.num_tokens for i in range(2) for c in still.push(scene.render(i * 5), i * 0.5))
    out = [c for i in range(2) for c in pairs.push(scene.render(i * 5), i * 0.5)]
    assert len(out) == 1 and pairs.stats.tokens_total * 2 == still.stats.tokens_total
    assert out[0].num_tokens < n_still and out[0].t0 == 0.0 and out[0].t1 == 0.5


def test_batched_groups_equal_one_group_at_a_time(tiny_qwen):
    """Chunked ingest equals one prefill: groups batched through the ViT and prefilled as one chunk give
    the logits of one group per chunk (no pruning)."""
    b = tiny_qwen
    scene = SyntheticScene("short")
    frames = [(scene.render(i * 7), i * 0.5) for i in range(6)]
    cfg = dict(drop_threshold=1.0, reuse_threshold=0.0)
    one = VisualStream(b, VisualConfig(batch_groups=1, **cfg))
    three = VisualStream(b, VisualConfig(batch_groups=3, **cfg))
    a = [c for f, t in frames for c in one.push(f, t)]
    c = [c for f, t in frames for c in three.push(f, t)]
    assert len(a) == 3 and len(c) == 1
    la, pa = _prefill_all(b, a)
    lc, pc = _prefill_all(b, c)
    assert pa == pc
    torch.testing.assert_close(la, lc, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(concat_chunks(a, b.embed_ids).position_ids, c[0].position_ids)


def test_batched_token_drop_keeps_what_one_group_at_a_time_keeps(tiny_qwen):
    """With token drop on, a batch of groups (their drop masks computed together, one copy to the host) keeps the
    same tokens at the same positions as one group per batch, and the drop does prune (not a no-op comparison)."""
    b = tiny_qwen
    scene = SyntheticScene("signs")
    frames = [(scene.render(i * 3), i * 0.5) for i in range(12)]
    cfg = dict(drop_threshold=0.97, reuse_threshold=0.0, keyframe_seconds=0.0)
    one = VisualStream(b, VisualConfig(batch_groups=1, **cfg))
    three = VisualStream(b, VisualConfig(batch_groups=3, **cfg))
    with torch.inference_mode():
        a = concat_chunks([c for f, t in frames for c in one.push(f, t)], b.embed_ids)
        c = concat_chunks([c for f, t in frames for c in three.push(f, t)], b.embed_ids)
    assert 0 < three.stats.tokens_kept < three.stats.tokens_total
    assert one.stats.tokens_kept == three.stats.tokens_kept
    torch.testing.assert_close(a.position_ids, c.position_ids)
    torch.testing.assert_close(a.inputs_embeds, c.inputs_embeds)


def test_token_drop_and_feature_reuse_on_a_still_then_a_change(tiny_qwen):
    b = tiny_qwen
    scene = SyntheticScene("short")
    still = scene.render(0)
    vs = VisualStream(b, VisualConfig(drop_threshold=0.95, reuse_threshold=0.02))
    for i in range(4):                                 # two identical pairs
        vs.push(still, i * 0.5)
    assert vs.stats.vit_groups == 1 and vs.stats.reused_groups == 1       # the tower ran once
    assert vs.stats.drop_ratios == [0.0, 1.0]                              # nothing new: every token dropped
    changed = np.full_like(still, 255) - still
    for i in range(4, 6):
        vs.push(changed, i * 0.5)
    assert vs.stats.vit_groups == 2 and vs.stats.drop_ratios[-1] < 0.5   # a new scene: most tokens kept
    assert vs.stats.tokens_kept < vs.stats.tokens_total


def test_flush_encodes_a_lone_last_frame_as_a_still(tiny_qwen):
    vs = VisualStream(tiny_qwen, VisualConfig())
    assert vs.push(SyntheticScene("short").render(0), 0.0) == [] and vs.pending
    out = vs.flush()
    assert len(out) == 1 and not vs.pending and out[0].t0 == out[0].t1 == 0.0


def test_qwen3_vl_pruning_carries_deepstack_rows_with_their_tokens(tiny_qwen3):
    b = tiny_qwen3
    scene = SyntheticScene("short")
    vs = VisualStream(b, VisualConfig(batch_groups=2, drop_threshold=0.999, reuse_threshold=0.0))
    out = [c for i in range(4) for c in vs.push(scene.render(i), i * 0.5)]
    assert len(out) == 1 and vs.stats.tokens_kept < vs.stats.tokens_total       # the second pair dropped some
    chunk = out[0]
    n_vis = int(chunk.visual_mask.sum())
    assert n_vis == vs.stats.tokens_kept and all(d.shape[0] == n_vis for d in chunk.deepstack)
    cache = DynamicCache()
    logits = b.prefill(chunk, cache, 0)
    assert torch.isfinite(logits).all() and cache.get_seq_length() == chunk.num_tokens


def test_patchify_matches_the_qwen_image_processor_on_real_frames():
    """Frames of tests/data's video (640x360) through our patchify and through transformers' own Qwen2-VL
    image processor (the PIL one: no torchvision here) give the same normalised patches. Measured on
    2026-11-22 (max |diff| over 3 frames, normalised units): 0 with the PIL resize; 0.150 with the cv2 bicubic
    resize used before; 0.263 with cv2 INTER_AREA."""
    import cv2
    from transformers import Qwen2VLImageProcessorPil

    from model.patches import IMAGE_MEAN, IMAGE_STD, patchify
    from tests.conftest import BOTTLE
    cap = cv2.VideoCapture(BOTTLE)
    frames = [cap.read()[1] for _ in range(3)]
    cap.release()
    proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=448 * 448)
    for f in frames:
        ours, grid = patchify(f, 14, 2, 2, 448 * 448, 56 * 56, IMAGE_MEAN, IMAGE_STD)
        theirs = proc(images=[cv2.cvtColor(f, cv2.COLOR_BGR2RGB)], return_tensors="pt")
        assert grid.tolist() == theirs["image_grid_thw"][0].tolist()
        diff = (ours - theirs["pixel_values"]).abs().max().item()
        assert diff < 1e-5, diff


def test_a_small_figure_walking_into_a_still_scene_is_not_given_the_previous_features(tiny_qwen):
    """Feature reuse skips the tower only when no patch changed: a figure covering a few patches changes the
    whole frame's mean very little (under the old whole-frame rule it was reused and never seen)."""
    still = SyntheticScene("short").render(0)
    walked_in = still.copy()
    walked_in[40:72, 60:76] = 255 - walked_in[40:72, 60:76]            # a small bright figure
    vs = VisualStream(tiny_qwen, VisualConfig())
    for i, frame in enumerate([still, still, still, still, walked_in, walked_in]):
        vs.push(frame, i * 0.5)
    assert vs.stats.reused_groups == 1 and vs.stats.vit_groups == 2       # the still pair reused, the figure not
    before, after = vs.backend.patchify([still, still])[0], vs.backend.patchify([walked_in, walked_in])[0]
    assert float((after - before).abs().mean()) < 0.02     # the old rule (whole-frame mean under 0.02) reused it


def _chunks_equal(a, b) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text and torch.equal(x.position_ids, y.position_ids)
        torch.testing.assert_close(x.inputs_embeds, y.inputs_embeds, rtol=0, atol=0)


def test_groups_patchified_off_the_runtime_thread_give_the_same_chunks(tiny_qwen, monkeypatch):
    """The perception thread patchifies each pair (FramePrep) and makes its ViT-reuse check against the pair before,
    and the runtime's VisualStream uses both: the same chunks as doing it there, no patchify call and no reuse check
    on the runtime side for the groups it was handed. A frame lost between the two (the runtime saw 0, 2, 3, ...)
    makes the runtime patchify those groups and check them itself."""
    from perception.visual import FramePrep
    scene = SyntheticScene("short")
    frames = [(scene.render(i * 10 if i < 4 else 40), float(i)) for i in range(10)]    # still from frame 4 on
    prep = FramePrep(tiny_qwen)
    prepared = [prep.take(f, t) for f, t in frames]
    assert [p is not None for p in prepared] == [False, True] * 5 and prepared[1].times == [0.0, 1.0]
    assert prepared[1].change is None and prepared[3].after == [0.0, 1.0] and prepared[7].change == 0.0

    def run(seq, use_prepared: bool):
        vs = VisualStream(tiny_qwen, VisualConfig(batch_groups=1))
        out = []
        for k in seq:
            out += vs.push(frames[k][0], frames[k][1], prepared[k] if use_prepared else None)
        return out + vs.flush(), vs

    want, here = run(range(10), False)
    assert here.stats.changes_here == 4 and here.stats.reused_groups == 2      # (6, 7) and (8, 9) reuse (4, 5)
    real = tiny_qwen.patchify
    calls: list[int] = []
    monkeypatch.setattr(tiny_qwen, "patchify", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    got, handed = run(range(10), True)
    _chunks_equal(got, want)
    assert calls == [] and handed.stats.reused_groups == 2
    # every check handed over but the last: (8, 9) was checked against (6, 7), which was reused, not encoded
    assert handed.stats.changes_here == 1
    lost = [0, 2, 3, 4, 5, 6, 7, 8, 9]                   # frame 1 never reached the runtime
    got, fell_back = run(lost, True)
    assert len(calls) == 5            # (0, 2), (3, 4), (5, 6), (7, 8) and the lone 9: none matches a prepared group
    assert fell_back.stats.changes_here == 4
    _chunks_equal(got, run(lost, False)[0])


def test_pipelined_batches_come_out_one_batch_later_and_equal(tiny_qwen):
    """With `pipeline` on, a batch's chunks come out when the next batch is launched (and at flush), equal to the
    chunks without it: the same tokens kept (token drop and reuse on), the same embeddings and positions."""
    b = tiny_qwen
    scene = SyntheticScene("signs")
    frames = [(scene.render(i * 3 if i < 6 or i >= 10 else 15), i * 0.5) for i in range(16)]   # a still stretch
    cfg = dict(batch_groups=2, drop_threshold=0.97, keyframe_seconds=0.0)
    plain = VisualStream(b, VisualConfig(**cfg))
    piped = VisualStream(b, VisualConfig(pipeline=True, **cfg))
    with torch.inference_mode():
        per_push_plain = [plain.push(f, t) for f, t in frames]
        per_push_piped = [piped.push(f, t) for f, t in frames]
        assert piped.pending and not plain.pending
        tail = piped.flush()
    assert plain.flush() == [] and not piped.pending and tail
    got = [c for cs in per_push_piped for c in cs] + tail
    want = [c for cs in per_push_plain for c in cs]
    batches = [i for i, cs in enumerate(per_push_plain) if cs]
    assert [i for i, cs in enumerate(per_push_piped) if cs] == batches[1:]      # each batch out one batch later
    assert 0 < piped.stats.tokens_kept < piped.stats.tokens_total and piped.stats.reused_groups > 0
    assert piped.stats == plain.stats and len(got) == len(want)
    for x, y in zip(got, want):
        assert (x.t0, x.t1, x.text, x.pos_span) == (y.t0, y.t1, y.text, y.pos_span)
        torch.testing.assert_close(x.position_ids, y.position_ids)
        torch.testing.assert_close(x.inputs_embeds, y.inputs_embeds)


def test_padded_batches_run_the_tower_at_one_size_and_give_the_same_chunks(tiny_qwen, tower_call_sizes):
    """`pad_batches`: a short batch (here the stream's last, one group of three) runs the tower at the full batch
    size with copies of its last group, and the chunks equal those of the unpadded stream."""
    b = tiny_qwen
    scene = SyntheticScene("short")
    frames = [(scene.render(i * 7), i * 0.5) for i in range(8)]
    cfg = dict(batch_groups=3, drop_threshold=0.97, reuse_threshold=0.0)
    outs = []
    for pad in (False, True):
        vs = VisualStream(b, VisualConfig(pad_batches=pad, **cfg))
        outs.append([c for f, t in frames for c in vs.push(f, t)] + vs.flush())
    assert tower_call_sizes == [3, 1, 3, 3]
    plain, padded = outs
    assert [c.num_tokens for c in plain] == [c.num_tokens for c in padded]
    for x, y in zip(plain, padded, strict=True):
        torch.testing.assert_close(x.inputs_embeds, y.inputs_embeds)
        torch.testing.assert_close(x.position_ids, y.position_ids)


def test_filled_batches_run_the_tower_on_full_batches_and_give_the_same_tokens(tiny_qwen, tower_call_sizes):
    """`fill_batches`: a batch waits for `batch_groups` groups that need the tower, the reused ones riding along,
    so every tower call but the stream's last is a full batch; the tokens, their order and the statistics equal
    those of batches cut every `batch_groups` groups. Without it the calls are short where groups are reused."""
    b = tiny_qwen
    scene = SyntheticScene("short")
    frames = [(scene.render(14 * (i // 6)), i * 0.5) for i in range(16)]        # pairs repeat in threes
    cfg = dict(batch_groups=2, drop_threshold=0.97, reuse_threshold=0.05, keyframe_seconds=0.0)
    outs, calls = [], []
    for fill in (False, True):
        vs = VisualStream(b, VisualConfig(fill_batches=fill, **cfg))
        outs.append(([c for f, t in frames for c in vs.push(f, t)] + vs.flush(), vs.stats))
        calls.append(tower_call_sizes[:])
        tower_call_sizes.clear()
    (plain, st_plain), (filled, st_filled) = outs
    assert st_plain.reused_groups > 0 and st_plain == st_filled
    assert min(calls[0]) < 2 and calls[1][:-1] == [2] * (len(calls[1]) - 1) and len(calls[1]) < len(calls[0])
    assert [w for c in plain for w in c.text.split()] == [w for c in filled for w in c.text.split()]
    assert sum(c.pos_span for c in plain) == sum(c.pos_span for c in filled)

    def embeds(chunks):
        return torch.cat([b.embed_ids(c.input_ids) if c.inputs_embeds is None else c.inputs_embeds for c in chunks])
    torch.testing.assert_close(embeds(plain), embeds(filled))
