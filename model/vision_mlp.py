"""The vision towers' MLPs at an aligned width, with gate and up in one matmul (on a GPU).

Qwen2.5-VL-7B's tower MLP is 3,420 units wide. At that width the profile shows cuBLAS running the gate and up
projections with its `badd` kernels after a copy kernel (an output first filled with the bias), where at 3,456 it
runs its `bias` kernels (the bias added in the epilogue) and there is no copy.
On one H200 (16 pairs of 448x448 frames, blocks compiled, the tower replayed as a CUDA graph; `python -m
bench.tower_mlp`, docs/benchmarks.md) the copies took 6.6 of the tower's 52.0 ms per batch; padded to 3,456 it
took 45.8 ms, fused without padding 50.6 ms, padded and fused (this module) 45.0 ms.

Exact: the padded rows of the first projection(s) have zero weights and biases and the padded columns of the
last one are zero, so the padded units add nothing whatever the activation gives them. transformers' modules keep
working: their weights become views into the padded tensors (no second copy; call after the model is on its
device, as moving it would undo the sharing); a state dict holds copies, so the model saves as transformers'.
Qwen2.5-VL's MLP (gate_proj, up_proj, down_proj) and Qwen3-VL's (linear_fc1, linear_fc2); anything else is left
alone. tests/unit/test_vision_mlp.py checks equality on tiny configs of both families, tests/unit/test_cuda.py on
the 7B and 8B tower shapes in bf16.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F

MULTIPLE = 128          # widths padded up to a multiple of this (3,420 -> 3,456; Qwen3-VL's 4,304 -> 4,352)


def align_mlps(visual: Any, multiple: int = MULTIPLE) -> int:
    """Pad every block's MLP of `visual` to a multiple of `multiple` units and fuse gate and up; the number of
    MLPs changed (0 where there is nothing to gain: no blocks, an unknown MLP, or an aligned ungated one)."""
    return sum(_align(blk.mlp, multiple) for blk in getattr(visual, "blocks", []) if hasattr(blk, "mlp"))


def _parts(mlp: Any) -> tuple[list[torch.nn.Linear], str] | None:
    """The first projection(s) and the name of the last one, if `mlp` is one of the two kinds."""
    names = (["gate_proj", "up_proj"], "down_proj") if hasattr(mlp, "gate_proj") else (["linear_fc1"], "linear_fc2")
    ins = [getattr(mlp, n, None) for n in names[0]]
    if not all(isinstance(m, torch.nn.Linear) for m in [*ins, getattr(mlp, names[1], None)]):
        return None
    return ins, names[1]  # type: ignore[return-value]


def _align(mlp: Any, multiple: int) -> bool:
    parts = None if getattr(mlp, "_onlooker_aligned", False) else _parts(mlp)
    if parts is None:
        return False
    ins, last = parts
    out = getattr(mlp, last)
    width = ins[0].out_features
    padded = -(-width // multiple) * multiple
    if padded == width and len(ins) == 1:
        return False
    w0 = ins[0].weight
    with torch.no_grad():
        w_in = w0.new_zeros(len(ins) * padded, w0.shape[1])
        b_in = w0.new_zeros(len(ins) * padded) if ins[0].bias is not None else None
        for i, lin in enumerate(ins):
            rows = slice(i * padded, i * padded + width)
            w_in[rows] = lin.weight
            lin.weight.data = w_in[rows]
            if b_in is not None:
                b_in[rows] = lin.bias
                lin.bias.data = b_in[rows]
        w_out = out.weight.new_zeros(out.weight.shape[0], padded)
        w_out[:, :width] = out.weight
        out.weight.data = w_out[:, :width]
    mlp.register_buffer("_onlooker_w_in", w_in, persistent=False)
    mlp.register_buffer("_onlooker_b_in", b_in, persistent=False)
    mlp.register_buffer("_onlooker_w_out", w_out, persistent=False)
    mlp._onlooker_last = last          # its name: the module itself would join the state dict a second time
    mlp._onlooker_gated = len(ins) == 2
    mlp._onlooker_aligned = True
    mlp.forward = types.MethodType(_forward, mlp)
    mlp.register_state_dict_post_hook(_own_copies)
    return True


def _own_copies(mlp: Any, state: dict, prefix: str, meta: Any) -> None:
    """In a state dict (save_pretrained), each projection's weight and bias as a tensor of its own: views into
    one padded tensor cannot be saved as they are (shared storage, a strided down projection)."""
    for name in ("gate_proj", "up_proj", "down_proj", "linear_fc1", "linear_fc2"):
        for attr in ("weight", "bias"):
            key = f"{prefix}{name}.{attr}"
            if state.get(key) is not None:
                state[key] = state[key].clone(memory_format=torch.contiguous_format)


def _forward(self: Any, hidden_state: torch.Tensor) -> torch.Tensor:
    h = F.linear(hidden_state, self._onlooker_w_in, self._onlooker_b_in)
    if self._onlooker_gated:
        gate, up = h.chunk(2, dim=-1)
        h = self.act_fn(gate) * up
    else:
        h = self.act_fn(h)
    return F.linear(h, self._onlooker_w_out, getattr(self, self._onlooker_last).bias)
