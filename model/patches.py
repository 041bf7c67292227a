"""Frames -> the vision tower's input, as Qwen2VLImageProcessor / Qwen2-VL's video processor make it, without
torchvision: smart resize to multiples of 28 (PIL's antialiased bicubic), CLIP normalisation, patch flattening.

Runs once per frame group on the perception thread, so it allocates nothing large per call: the byte
rearrangement goes through buffers reused per thread, and the float patches are written once, into their output.
"""

from __future__ import annotations

import math
import threading

import cv2
import numpy as np
import torch

_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """This thread's reused uint8 buffer `name` of `shape` (made again when the shape changes)."""
    buf = getattr(_local, name, None)
    if buf is None or buf.shape != shape:
        buf = np.empty(shape, np.uint8)
        setattr(_local, name, buf)
    return buf


IMAGE_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)     # Qwen2-VL / Qwen2.5-VL (CLIP)
IMAGE_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
HALF = np.array([0.5, 0.5, 0.5], np.float32)                                 # Qwen3-VL


def smart_size(height: int, width: int, factor: int, max_pixels: int, min_pixels: int) -> tuple[int, int]:
    """Nearest size with both sides multiples of `factor` and area within [min_pixels, max_pixels]."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def resize_like_processor(image_bgr: np.ndarray, w: int, h: int) -> np.ndarray:
    """(H, W, 3) BGR uint8 -> (h, w, 3) RGB uint8, resized as transformers' Qwen-VL image processors do: PIL
    bicubic, which antialiases when it shrinks (cv2's INTER_CUBIC does not). tests/unit/test_visual.py
    compares the result with the processor's on real frames."""
    from PIL import Image
    rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
    if rgb.shape[:2] == (h, w):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.Resampling.BICUBIC))


def patchify(image_bgr: np.ndarray | list[np.ndarray], patch_size: int, merge_size: int, temporal_patch_size: int,
             max_pixels: int, min_pixels: int, mean: np.ndarray = IMAGE_MEAN,
             std: np.ndarray = IMAGE_STD, pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One frame, or `temporal_patch_size` consecutive frames (a video slice), -> (flattened patches
    (grid_h*grid_w, C*T*P*P), grid_thw (3,)), Qwen2-VL layout. A single frame is repeated in time (a still).
    `pin`: the patches in page-locked memory (CUDA's caching host allocator), for a non-blocking copy to a GPU."""
    frames = image_bgr if isinstance(image_bgr, list) else [image_bgr]
    h, w = smart_size(frames[0].shape[0], frames[0].shape[1], patch_size * merge_size, max_pixels, min_pixels)
    xs = [resize_like_processor(f, w, h) for f in frames]                     # (H, W, C) uint8 RGB each
    if len(xs) == 1:
        xs = xs * temporal_patch_size
    if len(xs) != temporal_patch_size:
        raise ValueError(f"patchify takes 1 or {temporal_patch_size} frames, got {len(xs)}")
    # rearranged as bytes into this thread's reused buffers, then normalised once contiguous, straight into the
    # (pinned, with `pin`) output: the same arithmetic per value as normalising first, a quarter of the memory
    # traffic in the strided copy, and no large host allocation per call (a session pins glibc's mmap threshold at
    # 1 MiB, assistant.housekeeping, so every such allocation would map fresh pages: 3.3 -> 8.9 ms a 448x448 pair)
    gh, gw = h // patch_size, w // patch_size
    stacked = _scratch("frames", (temporal_patch_size, h, w, 3))
    for i, x in enumerate(xs):
        stacked[i] = x
    x = stacked.reshape(temporal_patch_size, gh // merge_size, merge_size, patch_size, gw // merge_size,
                        merge_size, patch_size, 3)
    arranged = _scratch("patches", (gh // merge_size, gw // merge_size, merge_size, merge_size, 3,
                                    temporal_patch_size, patch_size, patch_size))
    np.copyto(arranged, x.transpose(1, 4, 2, 5, 7, 0, 3, 6))               # (gh/m, gw/m, m, m, C, T, P, P)
    flat = torch.empty((gh * gw, 3, temporal_patch_size * patch_size * patch_size), dtype=torch.float32,
                       pin_memory=pin)
    flat.copy_(torch.from_numpy(arranged.reshape(gh * gw, 3, -1)))
    flat.div_(255.0)
    flat.sub_(torch.from_numpy(np.asarray(mean, np.float32).reshape(1, 3, 1)))
    flat.div_(torch.from_numpy(np.asarray(std, np.float32).reshape(1, 3, 1)))
    return flat.view(gh * gw, -1), torch.tensor([1, gh, gw])
