"""The vision towers' attention in one SDPA call per layer (Qwen2.5-VL window attention, Qwen3-VL full attention).

transformers' SDPA path splits every layer's packed sequence at `cu_seqlens` and calls SDPA once per window (once
per frame on full-attention layers), after a `lengths.tolist()` host sync: on the 7B tower at 448x448 that is 16
windows per pair per layer in a Python loop. The segments are known on the host before the tower runs (they
follow from the frames' grids), so here they are planned once per batch shape and every layer runs as one
batched call over (segments, length): a plain view when the segments are equal (the usual case, a stream's frames
share one size), a gather into padded rows with a key mask when they are not (grids that the window does not
divide, or frames of several sizes). Nothing inside the tower waits on the GPU.

Installed on the tower's attention modules (`install`); a forward of the tower inside `planned(visual, grids)`
takes the batched path, any other forward the module's own. The module's weights, rotary tables, window order,
merger and deepstack are untouched: the tower's forward still computes them; only the attention core differs.
tests/unit/test_vision_attention.py checks it against the tower's own forward on tiny configs (ragged windows,
mixed sizes, both families) and counts one SDPA call per layer; tests/unit/test_cuda.py on the 7B shape in bf16.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

_CACHE_LIMIT = 16          # distinct batch shapes kept (a stream uses one or two)


def window_lengths(grids: Sequence[Sequence[int]], merge: int, window_size: int, patch: int) -> list[int]:
    """Tokens per attention window, in the tower's window order (get_window_index): per frame, windows of
    `window_size // merge // patch` merged units a side, row-major; the last row and column may be short."""
    unit, side = merge * merge, window_size // merge // patch
    out = []
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        rows = [min(side, gh - r) for r in range(0, gh, side)]
        cols = [min(side, gw - c) for c in range(0, gw, side)]
        out += [r * c * unit for _ in range(t) for r in rows for c in cols]
    return out


def frame_lengths(grids: Sequence[Sequence[int]]) -> list[int]:
    """Tokens per full-attention segment: one per temporal patch of each frame group (cu_seqlens)."""
    return [h * w for t, h, w in grids for _ in range(t)]


@dataclass
class Layout:
    """One layer kind's segments on a device: `count` rows of `length`; `gather` (count*length,) picks each
    padded row's tokens from the packed sequence and `valid` the real ones back, `mask` (count, 1, 1, length)
    hides the padding keys; all three None when the segments are equal."""
    count: int
    length: int
    gather: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    @classmethod
    def build(cls, lengths: Sequence[int], device: torch.device) -> Layout:
        count, length = len(lengths), max(lengths)
        if all(n == length for n in lengths):
            return cls(count, length)
        lens = torch.tensor(lengths)
        starts = torch.cumsum(lens, 0) - lens
        offs = torch.arange(length)
        real = offs[None, :] < lens[:, None]                                      # (count, length)
        gather = torch.where(real, starts[:, None] + offs[None, :], 0).reshape(-1)
        valid = torch.nonzero(real.reshape(-1)).squeeze(1)
        return cls(count, length, gather.to(device), valid.to(device), real[:, None, None, :].to(device))


class Plan:
    """The segments of one tower forward, per layer kind ("window", "full"), laid out once per device."""

    def __init__(self, lengths: dict[str, list[int]]) -> None:
        self.lengths = lengths
        self._layouts: dict[tuple[str, str], Layout] = {}

    def layout(self, kind: str, device: torch.device) -> Layout:
        key = (kind, str(device))
        if key not in self._layouts:
            self._layouts[key] = Layout.build(self.lengths[kind], device)
        return self._layouts[key]


class _Holder:
    """Shared by one tower's attention modules: the plan of the forward in progress, and plans by shape."""

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.cache: dict[tuple, Plan] = {}
        self.inputs: dict[tuple, dict[str, Any]] = {}     # tower_inputs by (grids, device)
        self.enabled = True


def _rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """apply_rotary_pos_emb_vision: in float32, cast back."""
    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    cos, sin = cos.unsqueeze(-2).float(), sin.unsqueeze(-2).float()
    qf, kf = q.float(), k.float()
    return (qf * cos + rot(qf) * sin).to(q.dtype), (kf * cos + rot(kf) * sin).to(k.dtype)


def _batched_forward(self, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                     position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None, **kwargs) -> torch.Tensor:
    plan = self._onlooker_holder.plan
    if plan is None or position_embeddings is None:
        return self._onlooker_original(hidden_states, cu_seqlens, position_embeddings=position_embeddings, **kwargs)
    seq = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    q, k = _rotary(q, k, *position_embeddings)
    lay = plan.layout(self._onlooker_kind, hidden_states.device)
    rows = []
    for x in (q, k, v):                                           # (seq, heads, dim) -> (count, heads, length, dim)
        if lay.gather is not None:
            x = x[lay.gather]
        rows.append(x.reshape(lay.count, lay.length, self.num_heads, -1).transpose(1, 2))
    out = F.scaled_dot_product_attention(rows[0], rows[1], rows[2], attn_mask=lay.mask, scale=self.scaling)
    out = out.transpose(1, 2).reshape(lay.count * lay.length, -1)
    if lay.valid is not None:
        out = out[lay.valid]
    return self.proj(out)


def _linear_patch_embed(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """The patch embedding as the matmul it is: its Conv3d's kernel equals its stride and covers each flattened
    patch (channels, time, height, width in the processor's order), so conv == patches @ weight.view(out, -1).T.
    On the H200 in bf16 the Conv3d took 1.02 ms for 4 pairs of 448x448 frames, the matmul 0.05 ms."""
    w = self.proj.weight
    x = hidden_states.reshape(-1, w[0].numel()).to(w.dtype)
    return F.linear(x, w.reshape(w.shape[0], -1), self.proj.bias)


def install(visual: Any) -> bool:
    """Put the batched attention on `visual`'s blocks (once), and the patch embedding as a matmul. False, and
    nothing changed, where the tower already runs one call per layer (flash-attn's varlen kernel) or is not a
    Qwen2.5-VL / Qwen3-VL tower."""
    if getattr(visual, "_onlooker_holder", None) is not None:
        return True
    cfg = visual.config
    if "flash" in str(getattr(cfg, "_attn_implementation", "")) or not hasattr(visual, "blocks"):
        return False
    holder = _Holder()
    fullatt = getattr(cfg, "fullatt_block_indexes", None)       # Qwen2.5-VL: the rest are windowed; Qwen3-VL: none
    for i, blk in enumerate(visual.blocks):
        attn = blk.attn
        attn._onlooker_holder = holder
        attn._onlooker_kind = "full" if fullatt is None or i in fullatt else "window"
        attn._onlooker_original = attn.forward
        attn.forward = types.MethodType(_batched_forward, attn)
    pe = getattr(visual, "patch_embed", None)
    if pe is not None and isinstance(getattr(pe, "proj", None), torch.nn.Conv3d) and \
            tuple(pe.proj.kernel_size) == tuple(pe.proj.stride) and pe.proj.padding == (0, 0, 0):
        pe.forward = types.MethodType(_linear_patch_embed, pe)
    visual._onlooker_holder = holder
    return True


def plan_for(visual: Any, grids: Sequence[Sequence[int]]) -> Plan:
    cfg = visual.config
    key = tuple(tuple(int(x) for x in g) for g in grids)
    holder: _Holder = visual._onlooker_holder
    if key not in holder.cache:
        lengths = {"full": frame_lengths(key)}
        if getattr(cfg, "fullatt_block_indexes", None) is not None:
            lengths["window"] = window_lengths(key, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
        _keep(holder.cache, key, Plan(lengths))
    return holder.cache[key]


def _keep(cache: dict, key: tuple, value: Any) -> None:
    """Into a cache by batch shape, the oldest out past _CACHE_LIMIT (a stream uses one or two shapes)."""
    if len(cache) >= _CACHE_LIMIT:
        cache.pop(next(iter(cache)))
    cache[key] = value


def tower_inputs(visual: Any, grids: Sequence[Sequence[int]], device: torch.device | str) -> dict[str, Any]:
    """What the tower's forward derives from `grid_thw` (vision positions, segment boundaries, Qwen2.5-VL's window
    order, Qwen3-VL's position-embedding interpolation), computed on the host by transformers' own functions
    (transformers.vision_utils) once per batch shape and kept on the device; passed to the forward as keyword
    arguments, which those functions take instead of computing. From a grid on the device each derivation waited
    for the device (`.tolist()`, host indices into device tensors): on the H200 that wait held the ingest loop
    for 16% of its wall (py-spy). {} where this transformers has no such functions."""
    try:
        from transformers import vision_utils as vu
    except ImportError:
        return {}
    holder: _Holder | None = getattr(visual, "_onlooker_holder", None)
    key = (tuple(tuple(int(x) for x in g) for g in grids), str(device))
    if holder is not None and key in holder.inputs:
        return holder.inputs[key]
    g = torch.tensor(key[0])
    cfg = visual.config
    merge = int(cfg.spatial_merge_size)
    out: dict[str, Any] = {"position_ids": vu.get_vision_position_ids(g, merge),
                           "cu_seqlens": vu.get_vision_cu_seqlens(g)}
    if hasattr(visual, "num_grid_per_side"):                                  # Qwen3-VL
        out["interp_indices"], out["interp_weights"] = vu.get_vision_interpolation_indices_and_weights(
            g, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
            align_corners=visual.interpolation_align_corners, spatial_merge_size=merge)
    if getattr(cfg, "fullatt_block_indexes", None) is not None:               # Qwen2.5-VL's windows
        out["window_index"], out["cu_window_seqlens"] = vu.get_vision_window_index(
            g, spatial_merge_size=merge, window_size=cfg.window_size, patch_size=cfg.patch_size)
    out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
    if holder is not None:
        _keep(holder.inputs, key, out)
    return out


def compile_blocks(visual: Any) -> None:
    """Each block's forward under torch.compile (static shapes: one graph per batch shape and layer kind, shared
    by the blocks of that kind). bench vision: 2.6x -> 3.6-6.2x the tower's own forward on the 7B shape, H100."""
    import torch._dynamo
    if getattr(visual, "_onlooker_compiled", False):
        return
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    torch._dynamo.config.suppress_errors = True        # a compiler that fails here (none installed) runs it eagerly
    for blk in visual.blocks:
        blk.forward = torch.compile(blk.forward, dynamic=False)
    visual._onlooker_compiled = True


def batched(visual: Any) -> bool:
    """Whether a forward of `visual` inside `planned` takes the batched path."""
    holder = getattr(visual, "_onlooker_holder", None)
    return holder is not None and holder.enabled


def set_batched(visual: Any, on: bool) -> None:
    """Turn the batched path off (the tower's own attention runs, e.g. to compare) or back on."""
    holder = getattr(visual, "_onlooker_holder", None)
    if holder is not None:
        holder.enabled = on


@contextlib.contextmanager
def planned(visual: Any, grids: Sequence[Sequence[int]] | torch.Tensor) -> Iterator[bool]:
    """Within it, a forward of `visual` over frames of these grids (host ints, (t, h, w) each) takes the batched
    path; yields whether it will (False: the module's own attention runs)."""
    holder = getattr(visual, "_onlooker_holder", None)
    if holder is None or not holder.enabled:
        yield False
        return
    if isinstance(grids, torch.Tensor):
        grids = grids.tolist()
    holder.plan = plan_for(visual, grids)
    try:
        yield True
    finally:
        holder.plan = None
