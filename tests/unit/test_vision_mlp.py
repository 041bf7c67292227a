"""The vision towers' MLPs padded to an aligned width (gate and up fused) give the towers' own output (tiny random
configs, float32 on the CPU), keep transformers' weights as views, and change nothing twice."""

from __future__ import annotations

import pytest
import torch

from model import vision_attention, vision_mlp
from tests.unit.test_vision_attention import _inputs, _tower


@pytest.mark.parametrize("family,width", [("qwen2_5_vl", 60), ("qwen3_vl", 60), ("qwen2_5_vl", 64)])
def test_aligned_mlps_equal_the_towers_own_forward(family, width):
    visual = _tower(family, intermediate_size=width)
    with torch.no_grad():                    # biases that are not zero, so a padded unit fed them would show
        for blk in visual.blocks:
            for lin in blk.mlp.modules():
                if isinstance(lin, torch.nn.Linear) and lin.bias is not None:
                    lin.bias.normal_()
    x, grid = _inputs(visual, [(1, 8, 8)] * 2)
    with torch.inference_mode():
        want = visual(x, grid_thw=grid)
        gated = family == "qwen2_5_vl"
        changed = vision_mlp.align_mlps(visual, multiple=48)
        assert changed == len(visual.blocks)            # 60 -> 96 both families; 64 (aligned) fused when gated
        mlp = visual.blocks[0].mlp
        padded = -(-width // 48) * 48
        assert mlp._onlooker_w_in.shape == ((2 if gated else 1) * padded, visual.config.hidden_size)
        first = mlp.gate_proj if gated else mlp.linear_fc1
        last = mlp.down_proj if gated else mlp.linear_fc2
        assert first.weight.shape == (width, visual.config.hidden_size)       # transformers' view, its own shape
        assert first.weight.data_ptr() == mlp._onlooker_w_in.data_ptr()       # a view, not a copy
        assert last.weight.data_ptr() == mlp._onlooker_w_out.data_ptr()
        assert float(mlp._onlooker_w_out[:, width:].abs().sum()) == 0.0
        got = visual(x, grid_thw=grid)
        assert vision_mlp.align_mlps(visual, multiple=48) == 0                # once
        again = visual(x, grid_thw=grid)
        assert vision_attention.install(visual)                               # with the batched attention too
        with vision_attention.planned(visual, grid.tolist()):
            batched = visual(x, grid_thw=grid)
    for out in (got, again, batched):
        torch.testing.assert_close(out.pooler_output, want.pooler_output, rtol=1e-5, atol=1e-5)
    if family == "qwen3_vl":
        for a, b in zip(got.deepstack_features, want.deepstack_features, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_an_aligned_ungated_mlp_is_left_alone():
    visual = _tower("qwen3_vl", intermediate_size=96)
    forward = visual.blocks[0].mlp.forward
    assert vision_mlp.align_mlps(visual, multiple=48) == 0
    assert visual.blocks[0].mlp.forward == forward


def test_the_backend_leaves_its_tower_alone_on_the_cpu(tiny_qwen):
    """On the CPU the backend leaves the tower as transformers built it (padding only costs arithmetic there)."""
    assert not any(getattr(b.mlp, "_onlooker_aligned", False) for b in tiny_qwen.model.model.visual.blocks)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_an_aligned_model_saves_and_loads_as_transformers_built_it(family, tmp_path):
    """save_pretrained after the alignment (bench recording saves a backend's model): the saved weights have the
    original shapes and values, and the loaded model gives the same output."""
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    from tests.conftest import tiny_qwen3_config, tiny_qwen_config
    cls = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
    cfg = tiny_qwen3_config(100) if family == "qwen3_vl" else tiny_qwen_config(100)
    cfg.vision_config.intermediate_size = 60
    torch.manual_seed(0)
    model = cls(cfg).eval()
    want = {k: v.clone() for k, v in model.state_dict().items()}
    assert vision_mlp.align_mlps(model.model.visual, multiple=48) == len(model.model.visual.blocks)
    aligned = model.state_dict()
    assert aligned.keys() == want.keys()                                      # nothing added, nothing lost
    for k, v in want.items():
        assert torch.equal(aligned[k], v), k
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path).eval()
    got = loaded.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        assert torch.equal(got[k], v), k
    x, grid = _inputs(model.model.visual, [(1, 8, 8)])
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model.visual(x, grid_thw=grid).pooler_output,
                                   model.model.visual(x, grid_thw=grid).pooler_output, rtol=1e-5, atol=1e-5)


def test_bench_tower_mlp_pad_variant_is_exact_and_the_bench_needs_a_gpu():
    """bench/tower_mlp.py's `pad` variant (two matmuls, zero-padded) gives the tower's own output; without a GPU
    the benchmark says so and exits 2."""
    from bench import tower_mlp
    visual = _tower("qwen2_5_vl", intermediate_size=60)
    x, grid = _inputs(visual, [(1, 8, 8)])
    with torch.inference_mode():
        want = visual(x, grid_thw=grid).pooler_output
        for blk in visual.blocks:
            tower_mlp._pad(blk.mlp, 96)
        assert visual.blocks[0].mlp.down_proj.weight.shape[1] == 96
        got = visual(x, grid_thw=grid).pooler_output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if not torch.cuda.is_available():
        assert tower_mlp.main([]) == 2
