"""Shared fixtures: the real SmolLM2 lite backend and a tiny random Qwen2.5-VL."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run through Triton's interpreter on the CPU (tests/kernels); set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# a copy of ../shared/media/bottle-detection.mp4 (CC-BY 4.0, Intel; notice in tests/data/README.md)
BOTTLE = os.path.abspath(os.path.join(os.path.dirname(__file__), "data", "bottle-detection.mp4"))


@pytest.fixture(scope="session")
def lite_backend():
    from assistant.store import default_cache_dir
    from model.causal_lm import load_lite_backend
    return load_lite_backend(default_cache_dir())


@pytest.fixture(scope="session")
def lite_tokenizer(lite_backend):
    return lite_backend.tokenizer


def tiny_qwen_config(vocab: int):
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=vocab + 1, vision_start_token_id=vocab + 2, vision_end_token_id=vocab + 3,
        video_token_id=vocab + 4, bos_token_id=None, eos_token_id=None)


@pytest.fixture(scope="session")
def tiny_qwen(lite_tokenizer):
    """A tiny random Qwen2.5-VL (2 layers, width 64) with SmolLM2's tokenizer (ChatML tokens)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from model.qwen_vl import QwenVLBackend
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen_config(len(lite_tokenizer))).eval()
    return QwenVLBackend(model, lite_tokenizer, "tiny-qwen2.5-vl", max_pixels=112 * 112)


@pytest.fixture
def tower_call_sizes(tiny_qwen):
    """The number of frame groups in each call of `tiny_qwen`'s vision tower (`encode_patches`) during the test."""
    sizes: list[int] = []
    encode = tiny_qwen.encode_patches

    def counted(patches, grids):
        sizes.append(len(patches))
        return encode(patches, grids)

    tiny_qwen.encode_patches = counted
    try:
        yield sizes
    finally:
        del tiny_qwen.encode_patches


@pytest.fixture(scope="session")
def tiny_qwen_dir(tiny_qwen, tmp_path_factory):
    """The tiny Qwen2.5-VL saved as a model directory, for `--model PATH`."""
    model_dir = tmp_path_factory.mktemp("models") / "tiny-qwen"
    tiny_qwen.model.save_pretrained(model_dir)
    tiny_qwen.tokenizer.save_pretrained(model_dir)
    return model_dir


def tiny_qwen3_config(vocab: int):
    from transformers import Qwen3VLConfig
    return Qwen3VLConfig(
        text_config=dict(vocab_size=vocab + 8, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         bos_token_id=None, eos_token_id=None,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                          "mrope_interleaved": True}),
        vision_config=dict(depth=3, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                           deepstack_visual_indexes=[0, 1]),
        image_token_id=vocab + 1, vision_start_token_id=vocab + 2, vision_end_token_id=vocab + 3,
        video_token_id=vocab + 4)


@pytest.fixture(scope="session")
def tiny_qwen3(lite_tokenizer):
    """A tiny random Qwen3-VL (deepstack into the first 2 LM layers) with SmolLM2's tokenizer."""
    from transformers import Qwen3VLForConditionalGeneration

    from model.qwen_vl import QwenVLBackend
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(tiny_qwen3_config(len(lite_tokenizer))).eval()
    return QwenVLBackend(model, lite_tokenizer, "tiny-qwen3-vl", max_pixels=128 * 128)
