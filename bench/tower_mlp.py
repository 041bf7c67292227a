"""`python -m bench.tower_mlp [PAIRS]`: what the Qwen2.5-VL-7B tower's MLP width costs on a GPU (model/vision_mlp.py).

The 7B tower (random bf16 weights) over PAIRS pairs of 448x448 frames (default 16, as `run --fast` batches), with the
batched attention and compiled blocks, replayed as one CUDA graph, in four variants of its MLPs:

    base       transformers' MLP: gate, up (3,420 wide each) and down projections
    pad        the width zero-padded to 3,456, gate and up still two matmuls
    fused      gate and up in one matmul, not padded (model.vision_mlp with multiple 1)
    aligned    padded and fused, as the backend runs the tower on a GPU (model.vision_mlp)

For each: the first call (compiling), ms per replay, the relative difference of the output to base (bf16 both;
the padding is exact, so only rounding differs), and the GPU time of its top kernels per replay (profiler).
"""

from __future__ import annotations

import functools
import sys
import time

import torch

VARIANTS = ("base", "pad", "fused", "aligned")


def _pad(mlp, width: int) -> None:
    """Zero rows onto gate and up, zero columns onto down: the `pad` variant (two matmuls, as transformers)."""
    n = mlp.gate_proj.out_features
    with torch.no_grad():
        for name in ("gate_proj", "up_proj", "down_proj"):
            lin = getattr(mlp, name)
            rows = name != "down_proj"
            new = torch.nn.Linear(lin.in_features if rows else width, width if rows else lin.out_features,
                                  device=lin.weight.device, dtype=lin.weight.dtype)
            new.weight.zero_()
            new.bias.zero_()
            (new.weight[:n] if rows else new.weight[:, :n]).copy_(lin.weight)
            (new.bias[:n] if rows else new.bias).copy_(lin.bias)
            setattr(mlp, name, new)


def _measure(variant: str, pairs: int) -> tuple[float, float, torch.Tensor, list[tuple[float, int, str]]]:
    """One variant: first-call seconds, ms per graph replay, the output, and (GPU ms, calls, kernel) per replay,
    largest first."""
    from bench.vision import _forward, _inputs, _time, build_tower, capture, kernel_times
    from model import vision_attention, vision_mlp
    torch._dynamo.reset()
    tower = build_tower("qwen2.5-vl-7b")
    x, grid = _inputs(tower, pairs)                             # before any change: every variant gets the same
    if variant == "pad":
        for blk in tower.blocks:
            _pad(blk.mlp, 3456)
    elif variant != "base":
        vision_mlp.align_mlps(tower, multiple=1 if variant == "fused" else vision_mlp.MULTIPLE)
    vision_attention.install(tower)
    vision_attention.compile_blocks(tower)
    forward = functools.partial(_forward, tower, x, grid, True, grid.cuda())
    with torch.inference_mode():
        t = time.perf_counter()
        forward()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        graph, out = capture(forward)
        ms = _time(graph.replay, 30, warmup=5) * 1e3
        rows = sorted(((ms_, count, key[:100]) for ms_, count, key in kernel_times(graph)), reverse=True)
    return first, ms, out.float().clone(), rows


def run(pairs: int) -> None:
    ref = None
    for variant in VARIANTS:
        first, ms, out, rows = _measure(variant, pairs)
        diff = "" if ref is None else f", difference to base {float((out - ref).norm() / ref.norm()):.1e}"
        ref = out if ref is None else ref
        print(f"## {variant}, {pairs} pairs: first call {first:.1f} s, {ms:.2f} ms per replay "
              f"({2 * pairs / ms * 1e3:.0f} frames/s){diff}")
        for d, count, key in rows[:10]:
            print(f"   {d:7.2f} ms  x{count:4d}  {key}")
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not torch.cuda.is_available():
        print("onlooker: error: bench tower_mlp needs a CUDA GPU", file=sys.stderr)
        return 2
    try:
        pairs = int(argv[0]) if argv else 16
        if pairs < 1:
            raise ValueError
    except ValueError:
        print("onlooker: error: PAIRS: a positive integer", file=sys.stderr)
        return 2
    run(pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
