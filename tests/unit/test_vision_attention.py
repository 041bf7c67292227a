"""The vision towers' batched attention equals the towers' own forward (tiny random configs, float32 on the CPU),
with one SDPA call per layer where transformers makes one per window or frame."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model import vision_attention
from tests.conftest import tiny_qwen3_config, tiny_qwen_config


def _tower(family: str, **vision):
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
    torch.manual_seed(0)
    cfg = tiny_qwen3_config(100) if family == "qwen3_vl" else tiny_qwen_config(100)
    for k, v in vision.items():
        setattr(cfg.vision_config, k, v)
    cfg._attn_implementation = "sdpa"
    cls = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    visual = cls(cfg).eval().model.visual
    with torch.no_grad():            # random init leaves attention nearly uniform: sharpen it so it matters
        for blk in visual.blocks:
            blk.attn.qkv.weight.mul_(25)
    return visual


def _inputs(visual, grids: list[tuple[int, int, int]]):
    c = visual.config
    n = sum(t * h * w for t, h, w in grids)
    torch.manual_seed(1)
    return torch.randn(n, c.in_channels * c.temporal_patch_size * c.patch_size ** 2), torch.tensor(grids)


def _count_sdpa(monkeypatch) -> list[int]:
    calls = [0]
    real = F.scaled_dot_product_attention

    def counted(*a, **k):
        calls[0] += 1
        return real(*a, **k)
    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls


# (t, h, w) in patches. Qwen2.5 tiny: window 56 px = 2 merged units = 4x4 patches per window.
CASES = {
    "equal windows, 4 pairs": [(1, 8, 8)] * 4,
    "ragged windows (grid 10x6)": [(1, 10, 6)] * 2,
    "mixed frame sizes, t=2": [(2, 8, 12), (1, 6, 6), (1, 10, 8)],
}


@pytest.mark.parametrize("case", list(CASES))
def test_qwen2_5_window_attention_batched_equals_transformers(case, monkeypatch):
    visual = _tower("qwen2_5_vl", depth=4, fullatt_block_indexes=[1, 3])
    x, grid = _inputs(visual, CASES[case])
    with torch.no_grad():
        ref = visual(x, grid_thw=grid)
        fast_visual = copy.deepcopy(visual)
        assert vision_attention.install(fast_visual)
        calls = _count_sdpa(monkeypatch)
        with vision_attention.planned(fast_visual, grid) as on:
            out = fast_visual(x, grid_thw=grid)
    assert on and calls[0] == 4                                              # one per layer
    segments = len(vision_attention.window_lengths(CASES[case], 2, 56, 14))
    assert segments > len(CASES[case])                                       # transformers would make that many
    # 1e-4: the patch embedding's matmul sums in another order than the conv, and the sharpened attention
    # amplifies that (3e-5 at most); a wrong window or mask differs by O(1)
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("grids", [[(1, 8, 8)] * 3, [(2, 8, 12), (1, 6, 10)]])
def test_qwen3_full_attention_batched_equals_transformers_with_deepstack(grids, monkeypatch):
    visual = _tower("qwen3_vl")
    x, grid = _inputs(visual, grids)
    with torch.no_grad():
        ref = visual(x, grid_thw=grid)
        assert vision_attention.install(visual)
        calls = _count_sdpa(monkeypatch)
        with vision_attention.planned(visual, grid):
            out = visual(x, grid_thw=grid)
        outside = visual(x, grid_thw=grid)                       # no plan: the module's own attention again
    assert calls[0] == visual.config.depth + sum(t for t, _, _ in grids) * visual.config.depth
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-5, atol=1e-5)
    for a, b in zip(out.deepstack_features, ref.deepstack_features, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outside.pooler_output, ref.pooler_output, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_patch_embedding_runs_as_a_matmul_equal_to_the_conv(family, monkeypatch):
    """install() swaps the patch embedding's Conv3d for the matmul it equals (bias included on Qwen3-VL)."""
    visual = _tower(family)
    x, _ = _inputs(visual, [(1, 8, 8), (2, 4, 6)])
    with torch.no_grad():
        ref = visual.patch_embed(x)
        assert vision_attention.install(visual)
        convs = [0]
        real = torch.nn.Conv3d.forward
        monkeypatch.setattr(torch.nn.Conv3d, "forward", lambda *a, **k: (convs.__setitem__(0, convs[0] + 1),
                                                                          real(*a, **k))[1])
        out = visual.patch_embed(x)
    assert convs[0] == 0 and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_tower_inputs_from_the_host_equal_the_towers_own(family):
    """tower_inputs: what the forward derives from grid_thw, computed once on the host and passed in, gives the
    tower's own output (window order, positions, interpolation); kept per shape; and it is used: the inputs of
    other grids (same token count) change the output."""
    visual = _tower(family, depth=4, **({"fullatt_block_indexes": [1, 3]} if family == "qwen2_5_vl" else {}))
    grids = [(1, 8, 12), (2, 6, 8), (1, 12, 8)]
    x, grid = _inputs(visual, grids)
    with torch.no_grad():
        ref = visual(x, grid_thw=grid)
        assert vision_attention.install(visual)
        given = vision_attention.tower_inputs(visual, grids, "cpu")
        assert {"position_ids", "cu_seqlens"} <= set(given) and \
            ({"interp_indices", "interp_weights"} if family == "qwen3_vl" else {"window_index"}) <= set(given)
        out = visual(x, grid_thw=grid, **given)
        assert vision_attention.tower_inputs(visual, grids, "cpu") is given
        other = [(1, 12, 8), (2, 6, 8), (1, 8, 12)]
        wrong = visual(x, grid_thw=grid, **vision_attention.tower_inputs(visual, other, "cpu"))
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(wrong.pooler_output, ref.pooler_output, rtol=1e-3, atol=1e-3)


def test_window_lengths_match_transformers_window_index():
    from transformers import vision_utils
    if not hasattr(vision_utils, "get_vision_window_index"):
        pytest.skip("this transformers computes windows inside the tower")
    for grids in CASES.values():
        _, cu = vision_utils.get_vision_window_index(torch.tensor(grids), spatial_merge_size=2, window_size=56,
                                                     patch_size=14)
        assert torch.diff(cu).tolist() == vision_attention.window_lengths(grids, 2, 56, 14)


def test_backend_encodes_through_the_batched_path(tiny_qwen, monkeypatch):
    import numpy as np
    frames = [np.full((96, 128, 3), v, np.uint8) for v in (10, 120, 240)]
    patches, grids = zip(*(tiny_qwen.patchify([f, f]) for f in frames), strict=True)
    calls = _count_sdpa(monkeypatch)
    fast = tiny_qwen.encode_patches(list(patches), list(grids))
    assert calls[0] == tiny_qwen.model.config.vision_config.depth
    with torch.no_grad():                                      # outside `planned`: the module's own attention
        ref = tiny_qwen.model.model.visual(torch.cat(patches), grid_thw=torch.stack(grids)).pooler_output
    assert calls[0] > 2 * tiny_qwen.model.config.vision_config.depth
    torch.testing.assert_close(torch.cat(fast), ref, rtol=1e-5, atol=1e-5)
