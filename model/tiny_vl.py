"""tiny-vl: a small Qwen2.5-VL that truly sees, built from parts.

    language model   SmolLM2-135M-Instruct's weights from the lite package (hidden 576, 30 layers, 9 heads, 3 KV
                     heads; Qwen2's q/k/v biases are zero; M-RoPE sections 8+12+12 = head_dim/2), plus LoRA
                     deltas on q/k/v/o trained here, merged at build time
    vision tower     a 4-block Qwen2.5-VL vision transformer (hidden 256) and merger, trained here
    tokenizer        SmolLM2's, with the four vision special tokens added

Only the trained parts live in the repository (`model/data/tiny-vl.safetensors`, a few MB); the full model
directory is built once in the user cache dir (like the lite model's conversion) and then loads through the
ordinary VLM backend (`--model tiny-vl`). It sees 224x224 frames: 64 visual tokens per frame pair.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.backend import BackendError

log = logging.getLogger("onlooker.backend")

TRAINED = Path(__file__).with_name("data") / "tiny-vl.safetensors"
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
MAX_PIXELS = 224 * 224
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
LORA_MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")          # trained with `--lora-mlp`


def lora_parent(layer: Any, proj: str) -> Any:
    """The block holding the linear layer a LoRA key names: attention projections live in self_attn, the MLP's
    in mlp."""
    return layer.mlp if proj in LORA_MLP_TARGETS else layer.self_attn


def lora_module(layer: Any, proj: str) -> Any:
    return getattr(lora_parent(layer, proj), proj)


def tiny_vl_config(vocab: int, ids: dict[str, int]) -> Any:
    from transformers import Qwen2_5_VLConfig
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=vocab, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 100000.0,
                                          "mrope_section": [8, 12, 12]}),
        vision_config=dict(depth=4, hidden_size=256, intermediate_size=512, num_heads=4, out_hidden_size=576,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=224,
                           fullatt_block_indexes=[1, 3]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)


def build(lite_dir: Path, trained: dict[str, torch.Tensor] | None = None, lora_scale: float = 2.0) -> tuple[Any, Any]:
    """(model, tokenizer): SmolLM2's weights in a Qwen2.5-VL, new token rows copied from "[", "]", " ", the
    trained vision tower and LoRA deltas applied when given. fp32 on the CPU."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
    tok = AutoTokenizer.from_pretrained(lite_dir, local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in VISION_TOKENS}  # type: ignore[arg-type]
    model = Qwen2_5_VLForConditionalGeneration(tiny_vl_config(len(tok), ids)).eval()
    lite = load_file(str(lite_dir / "model.safetensors"))
    lm = model.model.language_model
    state = {}
    for k, v in lite.items():
        if k.startswith("model."):
            state[k[len("model."):]] = v
    emb = state.pop("embed_tokens.weight", None)                        # (49152, 576); tied, so it may be
    emb = lite["lm_head.weight"] if emb is None else emb                # saved only as lm_head
    new = torch.stack([emb[tok.convert_tokens_to_ids(t)] for t in ("[", "]", "Ġ", "Ġ")])
    state["embed_tokens.weight"] = torch.cat([emb, new])
    missing, unexpected = lm.load_state_dict(state, strict=False)
    if unexpected or any(not m.endswith("_proj.bias") for m in missing):
        raise BackendError(f"tiny-vl: SmolLM2's weights do not fit (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")
    for layer in lm.layers:                                             # Qwen2's biases, absent from Llama
        for name in ("q_proj", "k_proj", "v_proj"):
            torch.nn.init.zeros_(getattr(layer.self_attn, name).bias)
    model.tie_weights()
    if trained is not None:
        apply_trained(model, trained, lora_scale)
    return model, tok


def apply_trained(model: Any, trained: dict[str, torch.Tensor], lora_scale: float) -> None:
    visual = {k[len("visual."):]: v.float() for k, v in trained.items() if k.startswith("visual.")}
    model.model.visual.load_state_dict(visual, strict=True)
    layers = model.model.language_model.layers
    with torch.no_grad():
        for k, a in trained.items():
            if not k.startswith("lora.") or not k.endswith(".A"):
                continue
            _, i, proj, _ = k.split(".")
            b = trained[k[:-2] + ".B"].float()
            lin = lora_module(layers[int(i)], proj)
            lin.weight += lora_scale * (b @ a.float())                  # (out, r) @ (r, in)


def tiny_vl_dir(cache_dir: Path, lite_dir: Path, trained_path: Path = TRAINED) -> Path:
    """The full model directory in the cache, built once per trained-weights file (its size and mtime key it)."""
    if not trained_path.exists():
        raise BackendError(f"tiny-vl: the trained weights {trained_path} are missing "
                           f"(retrain: python -m train.tiny_vl)")
    stamp = f"{trained_path.stat().st_size}-{int(trained_path.stat().st_mtime)}"
    target = cache_dir / "models" / "tiny-vl"
    meta = target / "onlooker.json"
    if meta.exists() and json.loads(meta.read_text()).get("stamp") == stamp:
        return target
    log.warning("building tiny-vl from SmolLM2 and %s (once)", trained_path.name)
    trained = load_file(str(trained_path))
    model, tok = build(lite_dir, trained)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "onlooker.json").write_text(json.dumps({"stamp": stamp, "max_pixels": MAX_PIXELS, "frame_layout": "image",
                                                  "source": "SmolLM2-135M-Instruct + model/data/tiny-vl"}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def save_trained(path: Path, model: Any, lora: dict[str, torch.Tensor]) -> int:
    """The trained parts only: the vision tower and merger, and LoRA A/B factors, in fp16. Returns bytes."""
    tensors = {f"visual.{k}": v.detach().to("cpu", torch.float16).contiguous()
               for k, v in model.model.visual.state_dict().items()}
    tensors.update({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in lora.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)
    return path.stat().st_size
