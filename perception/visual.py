"""Frames -> visual-token chunks for a VLM backend, with the two savings that make streaming cheap.

    frames ─► groups of `temporal_patch_size` (Qwen-VL takes frames in pairs: half the tokens of two stills)
           ─► ViT feature reuse (STC-Cacher): a group none of whose patches differs from the previous
              group's reuses its merged features, and the vision tower is skipped for it (a whole-frame
              mean let a small figure walking in go unseen)
           ─► batched vision tower over the groups that need it
           ─► differential token drop (TimeChat-Online): a merged token whose cosine similarity to the
              same patch of the last kept token there is above `drop_threshold` is dropped; kept tokens
              keep their (t, h, w) positions. The dropped share of a group is its scene-change signal.
              The first group of every `keyframe_seconds` of stream keeps all its tokens (a keyframe), so
              a sealed segment read back alone still holds what was in view: memory places the segments
              from the keyframe before an asked time onwards (memory.retrieval)
           ─► one Chunk per batch of groups, each group behind its own time marker; with a backend whose
              frame layout is "video" (Qwen2.5-VL) the pairs of `block_seconds` form one video block
              (model.qwen_vl), and a batch is cut into one chunk per block it touches

With `pipeline` on (a replay as fast as it goes, `bench ingest`), a batch's tower and drop masks are launched and
its keep masks start on their way to the host, and the batch launched before it is turned into chunks: the host
never waits for the tower it has just launched, and the device runs that tower while the host launches the prefill
of the batch before. Chunks come out one batch later; `flush` returns everything. With `tower_stream` on as well
(a GPU), the tower and drop masks run on a CUDA stream of their own, beside the prefill of the batch before; the
caller's stream waits for the tower's outputs when they become chunks.

With `fill_batches` on (`run --fast`), a batch waits until `batch_groups` of its groups need the tower: the groups
that reuse features ride along, so the tower runs full batches (one shape, no lanes idle) and skipping it saves time.

Runs on the runtime thread (it calls the model); plain synchronous code.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from model.backend import host_copy
from model.chunk import Chunk, VideoBlock, concat_chunks
from perception.token_drop import drop_mask, keyframe_bucket


@dataclass
class VisualConfig:
    group_frames: bool = True        # feed frames to the vision tower in temporal pairs (Qwen-VL video style)
    batch_groups: int = 1            # groups encoded and prefilled together (a larger batch fills a GPU better)
    drop_threshold: float = 0.95     # cosine similarity above which a token is dropped; >= 1.0 keeps every token
    reuse_threshold: float = 0.1     # ViT skipped when no patch's mean |pixel difference| (normalised) reaches it
    keyframe_seconds: float = 8.0    # the first group of each such span of stream keeps every token; 0: never
    block_seconds: float = 4.0       # video layout: frame pairs within this much stream time form one video block
    compile_vision: bool | None = None   # the tower's blocks under torch.compile (GPU; None: on for run --fast)
    graph_vision: bool = False       # the vision tower replayed as a CUDA graph per batch shape (GPU)
    pipeline: bool = False           # chunks of a batch come out at the next batch (its tower runs meanwhile)
    pad_batches: bool = False        # a short batch (reused groups, the stream's end) runs the tower at batch_groups
                                     # (copies of its last group, outputs dropped): one graph / compiled shape
    fill_batches: bool = False       # a batch waits for batch_groups groups needing the tower (reused ones ride along)
    tower_stream: bool = False       # with pipeline, on a GPU: the tower on a CUDA stream of its own, beside prefills

    def __post_init__(self) -> None:
        if self.batch_groups < 1:
            raise ValueError("batch_groups must be >= 1")
        if not self.keyframe_seconds >= 0:
            raise ValueError(f"keyframe_seconds must be >= 0, got {self.keyframe_seconds}")


_local = threading.local()


def patch_change(patches: torch.Tensor, prev: torch.Tensor) -> float:
    """The largest mean |difference| of one patch between two groups (normalised pixel units). The difference
    goes into a buffer this thread reuses: a fresh one per pair maps fresh pages in a session (glibc's mmap
    threshold is pinned at 1 MiB there, assistant.housekeeping), 1.4 ms of page faults a 448x448 pair."""
    with torch.inference_mode():            # the buffer is made and written in inference mode only
        diff = getattr(_local, "diff", None)
        if diff is None or diff.shape != patches.shape or diff.dtype != patches.dtype or diff.device != patches.device:
            diff = _local.diff = torch.empty_like(patches)
        torch.sub(patches, prev, out=diff)
        return float(diff.abs_().mean(dim=1).max())


def change_against(patches: torch.Tensor, prev: torch.Tensor | None) -> float | None:
    """`patch_change` against the group prepared before (None: no group before, or one of another size)."""
    return patch_change(patches, prev) if prev is not None and prev.shape == patches.shape else None


@dataclass
class VisualStats:
    frames: int = 0
    groups: int = 0
    vit_groups: int = 0              # groups that ran through the vision tower
    reused_groups: int = 0           # groups whose features were reused (tower skipped)
    tokens_total: int = 0
    tokens_kept: int = 0
    changes_here: int = 0            # reuse checks computed on this (the model's) thread, not handed over
    mask_wait_s: float = 0.0         # seconds waiting for launched batches' keep masks to reach the host
    drop_ratios: list[float] = field(default_factory=list)   # per group, in stream order

    @property
    def kept_fraction(self) -> float:
        return self.tokens_kept / self.tokens_total if self.tokens_total else 1.0


@dataclass
class _Launched:
    """A batch whose tower and drop masks are launched; its keep masks are on their way to the host."""
    groups: list[PreparedGroup]
    embeds: list[torch.Tensor]
    masks: list[torch.Tensor | None]
    on_host: torch.Tensor | None         # every mask, concatenated (pinned on a GPU, filled by a copy in flight)
    event: torch.cuda.Event | None       # recorded after that copy
    ready: torch.cuda.Event | None = None    # `tower_stream`: recorded on the tower's stream after all of it


@dataclass
class PreparedGroup:
    times: list[float]               # stream times of the group's frames
    patches: torch.Tensor            # what backend.patchify makes of them (pinned on a GPU)
    grid: torch.Tensor
    # the reuse check against the group prepared just before (`patch_change`), done where it was prepared:
    change: float | None = None
    after: list[float] | None = None     # that group's times (the check is only valid against those patches)


def group_size(backend, config: VisualConfig) -> int:
    """Frames per group: the model's temporal patch (a pair) when grouping, else one."""
    return backend.temporal_patch_size if config.group_frames else 1


def patchify_group(backend, frames: list[tuple[np.ndarray, float]],
                   pin: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """One group's (patches, grid); a lone frame is patchified as a still. `pin`: in page-locked memory."""
    images = [f for f, _ in frames]
    return backend.patchify(images if len(images) > 1 else images[0], pin=pin)


class FramePrep:
    """Patchifies frame groups on the thread that hands frames to the runtime (the perception thread), so the
    runtime's thread, which launches the model's kernels, does not. Feed it every sampled frame in order;
    the frame that completes a group gets the group's patches, pinned on a GPU so the copy to the device
    does not wait. Groups as `VisualStream` does."""

    def __init__(self, backend, config: VisualConfig | None = None) -> None:
        self.backend = backend
        self.group_size = group_size(backend, config or VisualConfig())
        self.pin = torch.device(backend.device).type == "cuda"
        self._frames: list[tuple[np.ndarray, float]] = []
        self._last: PreparedGroup | None = None

    def take(self, image: np.ndarray, t: float) -> PreparedGroup | None:
        self._frames.append((image, t))
        if len(self._frames) < self.group_size:
            return None
        patches, grid = patchify_group(self.backend, self._frames, pin=self.pin)
        group = PreparedGroup([t for _, t in self._frames], patches, grid)
        if self._last is not None:
            group.change, group.after = change_against(patches, self._last.patches), self._last.times
        self._last = group
        self._frames = []
        return group


class VisualStream:
    def __init__(self, backend, config: VisualConfig | None = None) -> None:
        self.backend = backend
        self.config = config or VisualConfig()
        self.group_size = group_size(backend, self.config)
        self.stats = VisualStats()
        self._frames: list[tuple[np.ndarray, float]] = []
        self._groups: list[PreparedGroup] = []         # patchified, waiting for the batch to fill
        self._reuse: list[bool] = []                   # for each: its features are the group's before (no tower)
        self._prev_patches: torch.Tensor | None = None
        self._prev_times: list[float] | None = None    # the times of the group `_prev_patches` belong to
        self._prev_embeds: torch.Tensor | None = None
        self._ref: torch.Tensor | None = None          # last kept token per patch position (n, hidden)
        self._key_bucket: int | None = None            # keyframe span of the last keyframe
        self.video = self.group_size > 1 and getattr(backend, "frame_layout", "image") == "video"
        self._block: VideoBlock | None = None
        self._launched: _Launched | None = None        # pipeline: the batch whose chunks come out next
        device = getattr(backend, "device", None)      # tower_stream: the tower's CUDA stream
        self._side = torch.cuda.Stream(device) if self.config.tower_stream and self.config.pipeline and \
            isinstance(device, torch.device) and device.type == "cuda" else None
        if self.config.compile_vision and hasattr(backend, "compile_vision"):
            backend.compile_vision()
        if self.config.graph_vision and hasattr(backend, "graph_vision"):
            backend.graph_vision()

    @property
    def pending(self) -> bool:
        return bool(self._frames or self._groups or self._launched)

    def push(self, image: np.ndarray, t: float, prepared: PreparedGroup | None = None) -> list[Chunk]:
        """Take one sampled frame; returns the chunks that are complete (often none). `prepared`: the group this
        frame completes, patchified off this thread (`FramePrep`); used when its frames are the ones pending here,
        else the group is patchified here (a frame was dropped on the way)."""
        self.stats.frames += 1
        self._frames.append((image, t))
        if len(self._frames) < self.group_size:
            return []
        self._group(prepared)
        return self._encode() if self._full() else []

    def push_group(self, patches: torch.Tensor, grid: torch.Tensor, t0: float, t1: float,
                   change: tuple[float, list[float]] | None = None) -> list[Chunk]:
        """Take one frame group already patchified (the benchmark prepares them ahead, as a perception
        thread would), with its reuse check against the group before it when done there ((change, that group's
        times)); returns the chunks that are complete."""
        self.stats.frames += self.group_size
        group = PreparedGroup([t0, t1] if t1 != t0 else [t0], patches, grid)
        if change is not None:
            group.change, group.after = change
        self._add(group)
        return self._encode() if self._full() else []

    def _full(self) -> bool:
        """Whether the pending groups make a batch: `batch_groups` of them, or with `fill_batches` that many that
        need the tower (or twice that many in all)."""
        n, size = len(self._groups), self.config.batch_groups
        return (n - sum(self._reuse) if self.config.fill_batches else n) >= size or n >= 2 * size

    def flush(self) -> list[Chunk]:
        """End of stream: encode what is pending (a lone last frame is encoded as a still)."""
        if self._frames:
            self._group()
        return self.drain()

    def drain(self) -> list[Chunk]:
        """Every complete group waiting (for its batch to fill, or launched) as chunks now; a frame waiting for its
        pair stays (the runtime drains before a question, so it sees the stream up to it)."""
        out = self._encode() if self._groups else []
        if self._launched is not None:
            out += self._chunks(self._launched)
            self._launched = None
        return out

    def _group(self, prepared: PreparedGroup | None = None) -> None:
        times = [t for _, t in self._frames]
        if prepared is None or prepared.times != times:
            patches, grid = patchify_group(self.backend, self._frames)
            prepared = PreparedGroup(times, patches, grid)
        self._add(prepared)
        self._frames = []

    def _add(self, g: PreparedGroup) -> None:
        """A group joins the batch, with its reuse decision: against the last group that needs the tower."""
        prev = self._prev_patches
        reuse = prev is not None and prev.shape == g.patches.shape and self.config.reuse_threshold > 0 and \
            self._change(g, prev, self._prev_times) < self.config.reuse_threshold
        if not reuse:
            self._prev_patches, self._prev_times = g.patches, g.times
        self._groups.append(g)
        self._reuse.append(reuse)

    @torch.inference_mode()
    def _encode(self) -> list[Chunk]:
        launched = self._launch()
        if not self.config.pipeline:
            return self._chunks(launched)
        before, self._launched = self._launched, launched
        return self._chunks(before) if before is not None else []

    def _launch(self) -> _Launched:
        """`_launch_here`, with `tower_stream` on the tower's stream after what the caller's stream has launched
        so far; the embeddings are marked as used by the caller's stream, which waits for `ready` in `_chunks`."""
        if self._side is None:
            return self._launch_here()
        main = torch.cuda.current_stream(self._side.device)
        self._side.wait_stream(main)
        with torch.cuda.stream(self._side):
            launched = self._launch_here()
            launched.ready = torch.cuda.Event()
            launched.ready.record()
        for e in launched.embeds:
            e.record_stream(main)        # made on the tower's stream, read on this one: not reused before that
        return launched

    def _launch_here(self) -> _Launched:
        """The pending groups' tower (the groups that need it) and drop masks, launched; the masks' copy to the
        host started (one copy per batch, not one wait per group)."""
        groups, reuse, self._groups, self._reuse = self._groups, self._reuse, [], []
        need = [(g.patches, g.grid) for g, reused in zip(groups, reuse, strict=True) if not reused]
        encoded = iter(self._tower(need) if need else [])
        group_embeds, masks = [], []
        for g, reused in zip(groups, reuse, strict=True):
            if reused:
                assert self._prev_embeds is not None          # `_add`: a group that needs the tower came first
                embeds = self._prev_embeds
                self.stats.reused_groups += 1
            else:
                embeds = next(encoded)
                self.stats.vit_groups += 1
            self._prev_embeds = embeds
            group_embeds.append(embeds)
            masks.append(self._drop_mask(embeds, g.times[0]))
        present = [m for m in masks if m is not None]
        on_host, event = None, None
        if present:
            cat = torch.cat(present)
            on_host = host_copy(cat)
            if cat.is_cuda:
                event = torch.cuda.Event()
                event.record()
        return _Launched(groups, group_embeds, masks, on_host, event)

    def _tower(self, need: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """The tower over these groups; with `pad_batches`, at `batch_groups` groups, the copies' outputs dropped."""
        patches, grids = [p for p, _ in need], [g for _, g in need]
        short = self.config.batch_groups - len(need) if self.config.pad_batches else 0
        if short > 0:
            patches, grids = patches + [patches[-1]] * short, grids + [grids[-1]] * short
        return self.backend.encode_patches(patches, grids)[:len(need)]

    @torch.inference_mode()
    def _chunks(self, launched: _Launched) -> list[Chunk]:
        """A launched batch as chunks, once its keep masks are on the host."""
        if launched.ready is not None:
            launched.ready.wait()                 # the current stream waits for the tower's stream
        if launched.event is not None:
            start = time.perf_counter()
            launched.event.synchronize()
            self.stats.mask_wait_s += time.perf_counter() - start
        masks = launched.masks
        present = [m for m in masks if m is not None]
        on_host = list(launched.on_host.split([len(m) for m in present])) if launched.on_host is not None else []
        keeps = [None if m is None else torch.nonzero(on_host.pop(0)).squeeze(1) for m in masks]
        pieces: list[list[Chunk]] = [[]]
        for g, embeds, keep in zip(launched.groups, launched.embeds, keeps, strict=True):
            grid, t0, t1 = g.grid, g.times[0], g.times[-1]
            n = int(embeds.shape[0])
            kept = n if keep is None else int(keep.numel())
            self.stats.groups += 1
            self.stats.tokens_total += n
            self.stats.tokens_kept += kept
            self.stats.drop_ratios.append(1.0 - kept / n)
            merged = self.backend.merged_grid(grid)
            if not self.video:
                pieces[-1].append(self.backend.visual_chunk(embeds, merged, t0, t1, keep))
                continue
            if keep is not None and keep.numel() == 0:      # a pair inside a block has no marker: one token stays
                keep = torch.zeros(1, dtype=torch.long, device=keep.device)
            block = self._block_for(t0, merged, pieces[-1])
            if block.pairs == 0 and pieces[-1]:
                pieces.append([])                                  # a chunk never holds the start of a block inside
            pieces[-1].append(self.backend.visual_chunk(embeds, merged, t0, t1, keep, block=block))
        return [concat_chunks(p, self.backend.embed_ids) for p in pieces if p]

    def _change(self, g: PreparedGroup, prev: torch.Tensor, prev_times: list[float] | None) -> float:
        """`patch_change` of the group against the last encoded one: as handed over when it was made against those
        very patches (the group prepared before it was the last encoded, nearly always), else computed here."""
        if g.change is not None and g.after is not None and g.after == prev_times:
            return g.change
        self.stats.changes_here += 1
        return patch_change(g.patches, prev)

    def _block_for(self, t0: float, grid: tuple[int, int], piece: list[Chunk]) -> VideoBlock:
        """The open video block this pair joins, or a new one (the open one, if any, closed at the end of
        `piece`): a block holds `block_seconds` of stream at one grid; the memory may have closed it already."""
        b = self._block
        if b is not None and not b.closed and b.grid == grid and t0 - b.t0 < self.config.block_seconds:
            return b
        if b is not None and not b.closed:
            piece.append(self.backend.block_closer(b))
            b.closed = True
        self._block = VideoBlock(t0, grid)
        return self._block

    def _drop_mask(self, embeds: torch.Tensor, t0: float) -> torch.Tensor | None:
        """Keep mask of the tokens (None: all), on the embeddings' device, without waiting for it. Updates the
        per-patch reference with the kept ones; a keyframe (the first group at `t0` in a new keyframe span) keeps
        all and becomes the reference."""
        ref = self._ref
        bucket = keyframe_bucket(t0, self.config.keyframe_seconds)
        if ref is None or ref.shape != embeds.shape or self.config.drop_threshold >= 1.0 or \
                (bucket >= 0 and bucket != self._key_bucket):
            self._ref = embeds.clone()
            self._key_bucket = bucket
            return None
        mask, self._ref = drop_mask(embeds, ref, self.config.drop_threshold)
        return mask
