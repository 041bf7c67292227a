"""The model shapes `bench ingest` (and `bench soak`) build: full-size Qwen2.5-VL-7B and Qwen3-VL-8B architectures
with random weights (speed does not depend on weight values; nothing is downloaded), and tiny ones for the CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from model.qwen_vl import attention_for

QWEN25_VL_7B = dict(
    text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                     rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                                         "mrope_section": [16, 24, 24]}),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
)
QWEN3_VL_8B = dict(   # Qwen3-VL-8B-Instruct's config.json, widths and ids
    text_config=dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=262144,
                     rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                                                         "mrope_section": [24, 20, 20], "mrope_interleaved": True}),
    vision_config=dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                       deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
)
TINY = dict(
    text_config=dict(vocab_size=49160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1_000_000,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                       fullatt_block_indexes=[1]),
    image_token_id=49153, video_token_id=49154, vision_start_token_id=49155, vision_end_token_id=49156)
TINY3 = dict(
    text_config=dict(vocab_size=49160, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1_000_000,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3],
                                      "mrope_interleaved": True}),
    vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                       patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64,
                       deepstack_visual_indexes=[0, 1]),
    image_token_id=49153, video_token_id=49154, vision_start_token_id=49155, vision_end_token_id=49156)
SIZES = {"7b": ("Qwen2.5-VL-7B", QWEN25_VL_7B), "8b": ("Qwen3-VL-8B", QWEN3_VL_8B),
         "tiny": ("Qwen2.5-VL-tiny", TINY), "tiny3": ("Qwen3-VL-tiny", TINY3)}
FRAME = 448


def build_backend(size: str, device: str, tokenizer_dir: Path):
    from transformers import (
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    from model.qwen_vl import QwenVLBackend
    name, spec = SIZES[size]
    qwen3 = spec["vision_config"].get("deepstack_visual_indexes") is not None
    cfg = (Qwen3VLConfig if qwen3 else Qwen2_5_VLConfig)(**spec)
    cfg.get_text_config().bos_token_id = cfg.get_text_config().eos_token_id = None
    cfg._attn_implementation = attention_for(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = (Qwen3VLForConditionalGeneration if qwen3 else Qwen2_5_VLForConditionalGeneration)(cfg)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(device=device, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    return QwenVLBackend(model, tokenizer, f"{name} (random weights)", max_pixels=FRAME * FRAME)
