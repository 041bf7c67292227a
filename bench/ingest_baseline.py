"""`bench ingest`'s `transformers` baseline: a streaming loop as a user would write it with transformers alone.

One forward of the model per frame pair: `pixel_values_videos` / `video_grid_thw` (and, on Qwen2.5-VL,
`second_per_grid_ts`; with newer transformers `mm_token_type_ids`, as the processor returns) with the pair's
`<|vision_start|><|video_pad|>...<|vision_end|>` ids, on a growing `DynamicCache`, `logits_to_keep=1`;
positions as transformers computes them. Nothing is evicted, pruned or reused, so it runs until the GPU is
out of memory or its time cap. It gets the same help as the other configurations: the same frames, prepared
by the same feed inside the timed loop, the same attention backend and the same vision tower attention
(model/vision_attention.py, one call per layer).
"""

from __future__ import annotations

import inspect
import sys
import time

import torch
from tqdm import tqdm
from transformers import DynamicCache

from bench.common import gpu_gb, sync
from bench.ingest_report import MARKS_S
from model import vision_attention

QUESTION = "What happened at 12:00?"


@torch.inference_mode()
def run_transformers(backend, feed_factory, *, minutes: float, fps: float, device: str, wall_cap_s: float,
                     param_counts: tuple[int, int]) -> dict:
    model = backend.model
    cfg = model.config
    qwen25 = not backend.deepstack
    dtype = backend.visual_dtype
    cache = DynamicCache(config=cfg)
    typed = "mm_token_type_ids" in inspect.signature(model.forward).parameters   # newer transformers
    feed = feed_factory()
    vision_attention.set_batched(backend.model.model.visual, True)   # the same tower as the other configurations
    vit_params, lm_params = param_counts
    hidden, layers = backend.num_heads * backend.head_dim, backend.num_layers     # as run_config counts them
    n_groups = int(minutes * 60 * fps / 2)
    group_s = 2 / fps
    marks: dict[int, float | None] = {m: None for m in MARKS_S if m <= minutes * 60}
    flops, ctx, tokens, oom_at, stream_t = 0.0, 0, 0, None, 0.0
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    for g in tqdm(range(n_groups), desc="transformers", unit="pair", file=sys.stderr, mininterval=5):
        patches, grid = feed.get(g)
        n = int(grid.prod()) // backend.merge_size ** 2
        ids = torch.tensor([[cfg.vision_start_token_id] + [cfg.video_token_id] * n + [cfg.vision_end_token_id]],
                           device=device)
        extra = {"second_per_grid_ts": torch.tensor([group_s / 2], device=device)} if qwen25 else {}
        if typed:                                    # what the processor returns beside input_ids: 2 = video
            extra["mm_token_type_ids"] = (ids == cfg.video_token_id).int() * 2
        try:
            model(input_ids=ids, pixel_values_videos=patches.to(device, non_blocking=True).to(dtype),
                  video_grid_thw=grid[None].to(device), past_key_values=cache, use_cache=True, logits_to_keep=1,
                  **extra)
        except torch.OutOfMemoryError:
            oom_at = stream_t
            break
        m = n + 2
        flops += 2 * lm_params * m + 4 * layers * hidden * m * (ctx + m / 2) + 2 * vit_params * int(patches.shape[0])
        ctx += m
        tokens += n
        stream_t = (g + 1) * group_s
        for mark in marks:
            if marks[mark] is None and stream_t >= mark:
                sync(device)
                marks[mark] = gpu_gb(device)
        if time.perf_counter() - start > wall_cap_s:
            break
    sync(device)
    wall, main_cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    feed.close()
    n_frames = int(stream_t * fps)
    row = {"config": "transformers", "frames": n_frames, "stream_s": stream_t, "wall_s": wall, "main_cpu_s": main_cpu,
           "frames_per_s": n_frames / wall, "tokens_per_frame": tokens / max(1, n_frames),
           "tokens_total_per_frame": tokens / max(1, n_frames), "perceived": None, "perception_skipped": None,
           "perception_error": None, "captions": None, "caption_s_per_stream_hour": None,
           "vit_groups": n_frames // 2, "vit_reused": 0, "gpu_gb_at": {str(k): v for k, v in marks.items()},
           "gpu_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None,
           "oom_at_stream_s": oom_at, "stopped_by_cap": (not oom_at and n_frames < n_groups * 2), "flops": flops,
           "host_mb": 0.0, "segments_sealed": 0, "device_kv_mb": None}
    if oom_at is None:
        q = backend.tokenizer(QUESTION, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)
        sync(device)
        t = time.perf_counter()
        out = model(input_ids=q, past_key_values=cache, use_cache=True, logits_to_keep=1)
        int(out.logits[0, -1].argmax())                       # the first token, on the host
        row["ttft_ms"] = 1000 * (time.perf_counter() - t)
    del cache
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row
