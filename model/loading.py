"""Loading: `--model lite | HUB_ID | PATH` -> a Backend, or one clear BackendError (never a traceback)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from model.backend import Backend, BackendError

log = logging.getLogger("onlooker.models")

VLM_FAMILIES = {"qwen2_5_vl", "qwen3_vl"}
TEXT_FAMILIES = {"llama", "qwen2", "qwen3", "mistral", "gemma", "gemma2", "phi3"}


def check_device(device: str) -> None:
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu)")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise BackendError(f"unknown device {device!r} (use cpu or cuda)")


def _local_dir(model: str) -> Path:
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise BackendError(f"{model}: no config.json there; not a model directory")
        return p
    if model.count("/") == 1 and not model.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
            return Path(snapshot_download(model, local_files_only=True))
        except Exception:
            raise BackendError(
                f"model {model!r} is not in the local Hugging Face cache and Onlooker never downloads weights "
                f"at run time; fetch it first (huggingface-cli download {model}) or pass a local path") from None
    raise BackendError(f"unknown model {model!r}: use lite, tiny-vl, a Hugging Face id (org/name), or a local "
                       f"directory")


def load_backend(model: str, device: str, cache_dir: Path) -> Backend:
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()      # stderr is for our logs; loading takes about a second
    check_device(device)
    if model == "lite":
        from model.causal_lm import load_lite_backend
        if device != "cpu":
            log.warning("the lite backend runs on the CPU; ignoring --device %s", device)
        return load_lite_backend(cache_dir)
    if model == "tiny-vl":
        from model.causal_lm import lite_model_dir
        from model.qwen_vl import QwenVLBackend
        from model.tiny_vl import tiny_vl_dir
        return QwenVLBackend.from_dir(tiny_vl_dir(cache_dir, lite_model_dir(cache_dir)), device)
    path = _local_dir(model)
    family = json.loads((path / "config.json").read_text()).get("model_type", "?")
    has_weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin"))
    if not has_weights:
        raise BackendError(f"{model}: config found but no weights (*.safetensors) in {path}")
    try:
        if family in VLM_FAMILIES:
            from model.qwen_vl import QwenVLBackend
            return QwenVLBackend.from_dir(path, device, family)
        if family in TEXT_FAMILIES:
            from model.causal_lm import CausalLMBackend
            return CausalLMBackend.from_dir(path, path.name, device)
    except BackendError:
        raise
    except torch.OutOfMemoryError:
        raise BackendError(f"{model}: the model does not fit in {device} memory") from None
    except Exception as e:   # garbage or mismatched weights, a broken tokenizer: one line, not a traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise BackendError(f"{model}: cannot load the model from {path} ({type(e).__name__}: {first})") from None
    raise BackendError(f"{model}: model family {family!r} is not supported (supported: "
                       f"{', '.join(sorted(VLM_FAMILIES | TEXT_FAMILIES))})")
