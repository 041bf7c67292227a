"""The VLM backend: Qwen2.5-VL and Qwen3-VL. A frame goes through the vision tower once; its merged visual tokens
are prefilled into the language model's KV cache with M-RoPE positions (time, height, width).

A frame chunk, positions relative to its start (s = number of marker tokens + 1):

    "[0:12] "  <|vision_start|>  img img ... img  <|vision_end|>  "\\n"
    0 .. k-1   k                 t = s, h = s + row, w = s + col   s+M  s+M+1      (M = max(grid_h, grid_w))

which is what `Qwen2_5_VLModel.get_rope_index` gives the same tokens in a full prompt, so chunked
ingest equals one full prefill. That is the "image" layout (single stills, and tiny-vl, which was trained on it).

Frame pairs of Qwen2.5-VL go in as video (the "video" layout): a run of pairs within `block_seconds` is one
video block, "[m:ss] <|vision_start|>" + pair 0 + pair 1 + ... + "<|vision_end|>\n", every pair's temporal
position stepping with real stream time, t = base + int((t_pair - t_first) * tokens_per_second) (as
get_rope_index does for video_grid_thw with second_per_grid_ts), h/w = base + row/col, and the text after the
block at base + max(grid_h, grid_w) (Transformers >= 5.17). A pair after the first is a chunk of its own with
`pos_span` 0 (the next pair starts at the same base); `block_closer` is the "<|vision_end|>\n" that ends the
block, which the memory adds before any other content (model.chunk.VideoBlock). Qwen3-VL's layout is
"timestamps": every pair behind the processor's own "<t seconds>" text, frames back to back.

Pre-processing (smart resize, normalisation, patch flattening) is model.patches.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, DynamicCache

from model import vision_attention, vision_mlp
from model.backend import Backend, no_cudnn_attention
from model.chunk import Chunk, VideoBlock, format_time, text_positions
from model.fast_lm import FastLM
from model.patches import HALF, IMAGE_MEAN, IMAGE_STD, patchify
from model.vision_graphs import TowerGraphs


def frame_marker(t: float) -> str:
    """The time marker before a frame's visual tokens, so the model can answer 'when' (Qwen2.5-VL, tiny-vl)."""
    return f"[{format_time(t)}] "


def qwen3_frame_marker(t0: float, t1: float) -> str:
    """Qwen3-VL's own timestamp text before each temporal patch (processing_qwen3_vl): the mean time of the
    frames in the pair, in seconds."""
    return f"<{(t0 + t1) / 2:.1f} seconds>"


def vision_positions(start: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """M-RoPE positions of one frame's merged tokens starting at `start`, (3, grid_h*grid_w)."""
    hh, ww = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    t = torch.full((grid_h * grid_w,), start)
    return torch.stack([t, hh.reshape(-1) + start, ww.reshape(-1) + start])


def attention_for(device: str) -> str:
    """flash-attn when it is installed and the model runs on a GPU (same results); PyTorch SDPA otherwise
    (without its cuDNN backend: `no_cudnn_attention`)."""
    import importlib.util
    no_cudnn_attention(device)
    if device.startswith("cuda") and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


class QwenVLBackend(Backend):
    num_position_axes = 3
    accepts_frames = True

    def __init__(self, model, tokenizer, name: str = "Qwen2.5-VL", max_pixels: int = 448 * 448,
                 min_pixels: int = 56 * 56, frame_layout: str | None = None, fast_lm: bool = True,
                 lm_graphs: bool = True) -> None:
        super().__init__(model, tokenizer)
        self.name = name
        self.dtype = next(model.parameters()).dtype
        cfg = model.config
        vc = cfg.vision_config
        self.patch_size, self.merge_size = vc.patch_size, vc.spatial_merge_size
        self.temporal_patch_size = vc.temporal_patch_size
        self.max_pixels, self.min_pixels = max_pixels, min_pixels
        self.family = cfg.model_type                              # qwen2_5_vl | qwen3_vl
        self.deepstack = self.family == "qwen3_vl"
        self.mean, self.std = (HALF, HALF) if self.deepstack else (IMAGE_MEAN, IMAGE_STD)
        self.frame_layout = "timestamps" if self.deepstack else (frame_layout or "video")   # or "image"
        self.tokens_per_second = float(getattr(vc, "tokens_per_second", 2))
        self.video_token_id = cfg.video_token_id
        self.image_token_id = cfg.image_token_id
        self.vision_start_id = cfg.vision_start_token_id
        self.vision_end_id = cfg.vision_end_token_id
        newline = self.tokenizer("\n", add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        # after every frame: <|vision_end|> "\n"; Qwen3-VL's processor puts frames back to back (no newline)
        end = torch.tensor([self.vision_end_id])
        self._frame_tail = end if self.deepstack else torch.cat([end, newline])
        vision_attention.install(model.model.visual)
        if self.device.type == "cuda":        # the tower's MLP at an aligned width (model.vision_mlp)
            vision_mlp.align_mlps(model.model.visual)
        self.tower_graphs: TowerGraphs | None = None      # graph_vision()
        # the language model's lean forward (model.fast_lm); None: transformers' own forward. On a GPU its layers
        # replay as CUDA graphs (model.lm_graphs; a no-op for tensors on the CPU)
        self.fast: FastLM | None = FastLM(self.language_model()) if fast_lm else None
        if self.fast is not None and lm_graphs:
            self.fast.use_graphs(True)

    @classmethod
    def from_dir(cls, path: Path | str, device: str = "cpu", family: str = "qwen2_5_vl") -> QwenVLBackend:
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration
        model_cls = Qwen3VLForConditionalGeneration if family == "qwen3_vl" else Qwen2_5_VLForConditionalGeneration
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        model = model_cls.from_pretrained(path, dtype=dtype, local_files_only=True,
                                          attn_implementation=attention_for(device))
        model = model.to(device)  # type: ignore[arg-type]
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        meta_path = Path(path) / "onlooker.json"    # a model built here (tiny-vl) says what frames it was trained on
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        backend = cls(model, tokenizer, Path(path).name, max_pixels=int(meta.get("max_pixels", 448 * 448)),
                      frame_layout=meta.get("frame_layout", "image" if meta else None))
        backend.warm_lm_graphs()
        return backend

    def language_model(self):
        return self.model.model.language_model

    @property
    def inv_freq(self) -> torch.Tensor:
        return self.model.model.language_model.rotary_emb.inv_freq

    def patchify(self, frames: np.ndarray | list[np.ndarray], pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return patchify(frames, self.patch_size, self.merge_size, self.temporal_patch_size, self.max_pixels,
                        self.min_pixels, self.mean, self.std, pin=pin)

    @torch.inference_mode()
    def encode_patches(self, patches: list[torch.Tensor], grids: list[torch.Tensor]) -> list[torch.Tensor]:
        """The vision tower once over several frame groups (batched): merged embeddings (n_i, hidden) each.
        Qwen3-VL: each group's deepstack features ride along as extra columns, (n_i, hidden * (1 + layers)),
        so pruning and feature reuse treat them with their token; `visual_chunk` splits them off again. With
        `graph_vision` on, a replay of this batch shape's CUDA graph (model.vision_graphs)."""
        grid = torch.stack(grids)
        visual, shapes = self.model.model.visual, grid.tolist()
        given = vision_attention.tower_inputs(visual, shapes, self.device)          # nothing derived on the device
        grid_dev = grid.to(self.device, non_blocking=True)

        def tower(x: torch.Tensor) -> list[torch.Tensor]:
            with vision_attention.planned(visual, shapes):                           # one attention call per layer
                out = visual(x, grid_thw=grid_dev, **given)
            return [out.pooler_output, *(out.deepstack_features if self.deepstack else [])]

        outs = None
        if self.tower_graphs is not None:
            on = vision_attention.batched(visual)         # transformers' own attention waits: it is not captured
            key = (tuple(tuple(s) for s in shapes), on)
            keep = [grid_dev, given, vision_attention.plan_for(visual, shapes) if on else None]
            outs = self.tower_graphs.run(key, patches, tower, self.visual_dtype, self.device, keep)
        if outs is None:
            # each group to the device on its own: patches in pinned memory (the perception thread pins them) copy
            # without holding up this thread; a host-side cat first would make a pageable copy and wait for it
            outs = tower(torch.cat([p.to(self.device, non_blocking=True) for p in patches]).to(self.visual_dtype))
        merged = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
        sizes = [int(g[0] * g[1] * g[2]) // self.merge_size ** 2 for g in grids]
        return list(torch.split(merged, sizes))

    def compile_vision(self) -> None:
        """The vision tower's blocks under torch.compile (a GPU; a few seconds per new batch shape at first)."""
        if self.device.type == "cuda":
            vision_attention.compile_blocks(self.model.model.visual)

    def graph_vision(self, on: bool = True) -> bool:
        """Replay the vision tower as one CUDA graph per batch shape (model.vision_graphs; a GPU; a shape is
        captured at its first batch). Whether it is on."""
        if not on or self.device.type != "cuda":
            self.tower_graphs = None
        elif self.tower_graphs is None:
            self.tower_graphs = TowerGraphs()
        return self.tower_graphs is not None

    def merged_grid(self, grid: torch.Tensor) -> tuple[int, int]:
        return int(grid[1]) // self.merge_size, int(grid[2]) // self.merge_size

    @torch.inference_mode()
    def encode_frame(self, image_bgr: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """Vision tower on one frame -> merged visual embeddings (n, hidden) and the merged grid (h, w)."""
        patches, grid = self.patchify(image_bgr)
        return self.encode_patches([patches], [grid])[0], self.merged_grid(grid)

    @property
    def visual_dtype(self) -> torch.dtype:
        return self.model.model.visual.dtype

    @torch.inference_mode()
    def frame_chunk(self, image, t: float) -> Chunk:
        embeds, grid = self.encode_frame(image)
        return self.visual_chunk(embeds, grid, t, t)

    @torch.inference_mode()
    def visual_chunk(self, embeds: torch.Tensor, grid: tuple[int, int], t0: float, t1: float,
                     keep: torch.Tensor | None = None, block: VideoBlock | None = None) -> Chunk:
        """A time marker and one frame group's merged tokens: all of them, or only those at the indices
        `keep` (pruned tokens leave gaps; every kept token keeps its own (t, h, w) position). With `block`
        (the video layout) the pair joins that video block instead of standing alone."""
        if block is not None:
            return self._video_chunk(embeds, grid, t0, t1, keep, block)
        gh, gw = grid
        marker = qwen3_frame_marker(t0, t1) if self.deepstack else frame_marker(t0)
        prefix = self.tokenizer(marker, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        k = int(prefix.shape[0]) + 1                                           # marker + <|vision_start|>
        head = torch.cat([prefix, torch.tensor([self.vision_start_id])])
        tail = self._frame_tail
        m = max(gh, gw)
        vis_pos = vision_positions(k, gh, gw)
        if keep is not None:
            embeds, vis_pos = embeds[keep.to(embeds.device, non_blocking=True)], vis_pos[:, keep.cpu()]
        deep = None
        hidden = self.language_model().config.hidden_size
        if self.deepstack:
            deep = [d.to(self.dtype) for d in embeds[:, hidden:].split(hidden, dim=-1)]
            embeds = embeds[:, :hidden]
        n_img = int(embeds.shape[0])
        n_tail = int(tail.shape[0])
        pos = torch.cat([text_positions(k, 3), vis_pos, text_positions(n_tail, 3) + k + m], dim=1)
        inputs_embeds = torch.cat([self.embed_ids(head), embeds.to(self.dtype), self.embed_ids(tail)])
        ids = torch.cat([head, torch.full((n_img,), self.image_token_id), tail])
        mask = None
        if deep is not None:
            mask = torch.cat([torch.zeros(k, dtype=torch.bool), torch.ones(n_img, dtype=torch.bool),
                              torch.zeros(n_tail, dtype=torch.bool)])
        kept = f"{n_img}/{gh * gw} tokens" if keep is not None else f"{n_img} tokens"
        return Chunk("frame", t0, t1, f"[{format_time(t0)}] <frame {kept}>", pos,
                     k + m + n_tail, input_ids=ids, inputs_embeds=inputs_embeds, visual_mask=mask, deepstack=deep)

    @torch.inference_mode()
    def _video_chunk(self, embeds: torch.Tensor, grid: tuple[int, int], t0: float, t1: float,
                     keep: torch.Tensor | None, block: VideoBlock) -> Chunk:
        gh, gw = grid
        first = block.pairs == 0
        head = torch.zeros(0, dtype=torch.long)
        if first:
            marker = self.tokenizer(frame_marker(t0), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
            head = torch.cat([marker, torch.tensor([self.vision_start_id])])
        k = int(head.shape[0])                                   # the block's base sits k after the first chunk
        vis_pos = vision_positions(k, gh, gw)
        vis_pos[0] = k + int((t0 - block.t0) * self.tokens_per_second + 1e-6)   # real time, as get_rope_index
        if keep is not None:
            embeds, vis_pos = embeds[keep.to(embeds.device, non_blocking=True)], vis_pos[:, keep.cpu()]
        n_img = int(embeds.shape[0])
        block.pairs += 1
        block.t1 = t1
        parts = [self.embed_ids(head)] if k else []
        kept = f"{n_img}/{gh * gw} tokens" if keep is not None else f"{n_img} tokens"
        return Chunk("frame", t0, t1, f"[{format_time(t0)}] <frame {kept}>",
                     torch.cat([text_positions(k, 3), vis_pos], dim=1), k,
                     input_ids=torch.cat([head, torch.full((n_img,), self.video_token_id)]),
                     inputs_embeds=torch.cat([*parts, embeds.to(self.dtype)]), continues=not first, block=block)

    def block_closer(self, block: VideoBlock) -> Chunk:
        """What ends an open video block: "<|vision_end|>\n" at base + max(grid_h, grid_w), relative to the
        block's base (where the memory's next position stands while a block is open)."""
        m = max(block.grid)
        tail = self._frame_tail
        n = int(tail.shape[0])
        return Chunk("frame", block.t1, block.t1, "", text_positions(n, 3) + m, m + n, input_ids=tail.clone(),
                     continues=True)

    def warm_lm_graphs(self) -> int:
        """On a GPU, capture the LM's CUDA graphs for every bucket now (model.lm_graphs); the number captured."""
        if self.fast is None or self.fast.graphs is None or self.device.type != "cuda":
            return 0
        like = torch.empty(1, self.model.config.get_text_config().hidden_size, device=self.device, dtype=self.dtype)
        return self.fast.graphs.capture_all(like)

    @contextmanager
    def transformers_forward(self) -> Iterator[None]:
        """Inside the block, transformers' own language-model forward instead of the lean one (to compare)."""
        fast, self.fast = self.fast, None
        try:
            yield
        finally:
            self.fast = fast

    @torch.inference_mode()
    def prefill(self, chunk: Chunk, cache: DynamicCache, offset: int) -> torch.Tensor:
        return self._forward(chunk, cache, offset, None)[0]

    def prefill_keys(self, chunk: Chunk, cache: DynamicCache, offset: int,
                     sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.fast is None:
            return super().prefill_keys(chunk, cache, offset, sizes)
        pieces = None
        if sizes is not None:                            # each token's piece, for one sum per piece and layer
            counts = torch.tensor(sizes)
            pieces = (torch.repeat_interleave(torch.arange(len(sizes)), counts).to(self.device, non_blocking=True),
                      len(sizes))
        logits, sums = self._forward(chunk, cache, offset, "keys", pieces)
        # stacked outside inference mode (the memory adds to it in place); with pieces, (P, L, Hkv, D) in one copy
        return logits, torch.stack(sums, dim=0 if sizes is None else 1)

    def question_query(self, chunk: Chunk, cache: DynamicCache, offset: int) -> torch.Tensor:
        if self.fast is None:
            return super().question_query(chunk, cache, offset)
        return torch.stack(self._forward(chunk, cache, offset, "queries")[1]).cpu()

    @torch.inference_mode()
    def _forward(self, chunk: Chunk, cache: DynamicCache, offset: int, collect: str | None,
                 pieces: tuple[torch.Tensor, int] | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if chunk.inputs_embeds is not None:
            embeds = chunk.inputs_embeds.to(self.device, self.dtype)
        else:
            assert chunk.input_ids is not None
            embeds = self.embed_ids(chunk.input_ids)
        pos = (chunk.position_ids.to(self.device, non_blocking=True) + offset).unsqueeze(1)        # (3, 1, n)
        mask = deep = None
        if chunk.deepstack is not None and chunk.visual_mask is not None and bool(chunk.visual_mask.any()):
            mask, deep = chunk.visual_mask, [d.to(self.device, self.dtype) for d in chunk.deepstack]
        if self.fast is not None:
            last, sums = self.fast.forward(embeds, pos, cache, visual_mask=mask, deepstack=deep, collect=collect,
                                           pieces=pieces)
            return self.model.lm_head(last).float(), sums
        extra = {} if mask is None else {"visual_pos_masks": mask.to(self.device).unsqueeze(0),
                                         "deepstack_visual_embeds": deep}
        out = self.model.model.language_model(inputs_embeds=embeds.unsqueeze(0), position_ids=pos,
                                              past_key_values=cache, use_cache=True, **extra)
        return self.model.lm_head(out.last_hidden_state[:, -1]).float()[0], []
