"""`onlooker bench vision`: the vision tower alone, transformers' attention against one call per layer.

Random bf16 weights in the shapes of Qwen2.5-VL-7B's tower (32 blocks, width 1280, 16 heads, window 112 px, full
attention at blocks 7/15/23/31) and Qwen3-VL-8B's (27 blocks, width 1152, patch 16, deepstack at 8/16/24);
frame pairs at 448x448 (one temporal patch each), batches of 4/8/16 pairs as ingest makes them. Per batch size,
in one run:
    transformers      the tower's own forward (SDPA once per window or frame, a host sync per layer)
    batched           model/vision_attention.py: one SDPA call per layer
    batched+aligned   with `--align-mlp`: the same with the MLPs at an aligned width, gate and up fused
                      (model/vision_mlp.py, as the backend runs the tower on a GPU)
    batched+compile   the batched (or aligned) tower with each block under torch.compile (blocks of one kind
                      share a graph)
frames/s counts both frames of a pair. `rel_err` is |batched - transformers| / |transformers| over the merged
output (bf16 both), `syncs` the host syncs per forward that torch's sync debug mode reports. `--graph`: the batched
modes also replayed as one CUDA graph (as `onlooker run --fast` and `bench ingest --graph-vision` run the tower),
with the replay's GPU time by kernel class under torch's profiler (matrix multiplies, attention, the rest).
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings

import torch

from bench.common import print_table, write_rows

SHAPES = {
    "qwen2.5-vl-7b": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                          patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                          fullatt_block_indexes=[7, 15, 23, 31]),
    "qwen3-vl-8b": dict(depth=27, hidden_size=1152, intermediate_size=4304, num_heads=16, out_hidden_size=4096,
                        patch_size=16, spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=2304,
                        deepstack_visual_indexes=[8, 16, 24], hidden_act="gelu_pytorch_tanh"),
}


def build_tower(shape: str, device: str = "cuda") -> torch.nn.Module:
    if shape.startswith("qwen3"):
        from transformers import Qwen3VLVisionConfig
        from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionModel as Tower
        cfg = Qwen3VLVisionConfig(**SHAPES[shape])
    else:
        from transformers import Qwen2_5_VLConfig
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
            Qwen2_5_VisionTransformerPretrainedModel as Tower,
        )
        cfg = Qwen2_5_VLConfig(vision_config=SHAPES[shape]).vision_config
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        return Tower(cfg).to(torch.bfloat16).eval()


def _inputs(tower, pairs: int, side: int = 448):
    c = tower.config
    g = side // c.patch_size
    grid = torch.tensor([[1, g, g]] * pairs)
    x = torch.randn(pairs * g * g, 3 * c.temporal_patch_size * c.patch_size ** 2, device="cuda",
                    dtype=torch.bfloat16)
    return x, grid


def _forward(tower, x, grid, batched: bool, grid_dev: torch.Tensor | None = None) -> torch.Tensor:
    from model import vision_attention
    if not batched:
        return tower(x, grid_thw=grid.cuda()).pooler_output
    given = vision_attention.tower_inputs(tower, grid.tolist(), "cuda")     # nothing derived on the device
    with vision_attention.planned(tower, grid.tolist()):
        return tower(x, grid_thw=grid.cuda() if grid_dev is None else grid_dev, **given).pooler_output


def _kind(kernel: str) -> str:
    k = kernel.lower()
    if any(s in k for s in ("gemm", "cutlass", "nvjet", "cublas", "xmma")):
        return "matmul"
    return "attention" if any(s in k for s in ("flash", "fmha", "sdpa", "attention")) else "other"


def _graphed(fwd, iters: int) -> dict:
    """`fwd` captured as one CUDA graph: ms per replay, and its GPU ms by kernel class (profiler, 5 replays)."""
    graph, _ = capture(fwd)
    sec = _time(graph.replay, iters)
    kinds: dict[str, float] = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for ms, _count, key in kernel_times(graph):
        kinds[_kind(key)] += ms
    return {"graph_ms": sec * 1e3, **{f"graph_{k}_ms": v for k, v in kinds.items()}}


def capture(fwd):
    """`fwd` run once on a side stream (compiling, kernel choices), then captured as one CUDA graph; the graph and
    the captured call's output (refreshed by each replay)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fwd()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fwd()
    return graph, out


def kernel_times(graph, replays: int = 5) -> list[tuple[float, int, str]]:
    """The GPU time of each kernel of `graph` per replay, under torch's profiler: (ms, calls per replay, name)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(replays):
            graph.replay()
        torch.cuda.synchronize()
    return [(getattr(a, "self_device_time_total", 0.0) / 1e3 / replays, a.count // replays, a.key)
            for a in prof.key_averages()]


def _time(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def _syncs(fn) -> int:
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            fn()
        return sum("synchroniz" in str(x.message) for x in w)
    finally:
        torch.cuda.set_sync_debug_mode(0)


def run(shapes: list[str], batches: list[int], iters: int, compile_blocks: bool, graph: bool = False,
        align_mlp: bool = False) -> list[dict]:
    from model import vision_attention, vision_mlp
    rows = []
    for shape in shapes:
        tower = build_tower(shape)
        vision_attention.install(tower)
        inputs = {b: _inputs(tower, b) for b in batches}
        refs: dict[int, torch.Tensor] = {}
        phases = [("transformers", "batched")] + ([("batched+aligned",)] if align_mlp else []) + \
            ([("batched+aligned+compile" if align_mlp else "batched+compile",)] if compile_blocks else [])
        for modes in phases:
            if modes == ("batched+aligned",):
                vision_mlp.align_mlps(tower)
            if modes[0].endswith("+compile"):
                vision_attention.compile_blocks(tower)
            for b in batches:
                x, grid = inputs[b]
                with torch.inference_mode():
                    for mode in modes:
                        batched = mode != "transformers"
                        t0 = time.perf_counter()
                        out = _forward(tower, x, grid, batched)
                        torch.cuda.synchronize()
                        first_s = time.perf_counter() - t0
                        fwd = functools.partial(_forward, tower, x, grid, batched, grid.cuda())
                        sec = _time(fwd, iters)
                        row = {"shape": shape, "pairs": b, "mode": mode, "ms": sec * 1e3, "frames_per_s": 2 * b / sec,
                               "first_call_s": first_s, "syncs": _syncs(fwd)}
                        if graph and batched:
                            row.update(_graphed(fwd, iters))
                        if not batched:
                            refs[b] = out
                        else:
                            row["rel_err"] = float((out.float() - refs[b].float()).norm() / refs[b].float().norm())
                        rows.append(row)
                        print(f"  {shape} {b} pairs {mode}: {row['frames_per_s']:.0f} frames/s", file=sys.stderr)
        tower = inputs = refs = None             # type: ignore[assignment]   # free before the next shape
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench vision", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="qwen2.5-vl-7b,qwen3-vl-8b", help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--batches", default="4,8,16", help="pairs per forward, comma-separated")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--no-compile", action="store_true", help="leave out batched+compile")
    p.add_argument("--graph", action="store_true", help="also replay the batched modes as CUDA graphs")
    p.add_argument("--align-mlp", action="store_true", help="add the batched+aligned mode; compile the aligned tower")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("onlooker: error: bench vision needs a CUDA GPU", file=sys.stderr)
        return 2
    shapes = [s for s in args.shapes.split(",") if s]
    if any(s not in SHAPES for s in shapes):
        print(f"onlooker: error: --shapes: choose from {', '.join(SHAPES)}", file=sys.stderr)
        return 2
    try:
        batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        print("onlooker: error: --batches: comma-separated integers", file=sys.stderr)
        return 2
    rows = run(shapes, batches, args.iters, not args.no_compile, args.graph, args.align_mlp)
    header = (f"bench vision: {torch.cuda.get_device_name()}, torch {torch.__version__}, random bf16 weights, "
              f"448x448 pairs, {args.iters} timed forwards each")
    base = {(r["shape"], r["pairs"]): r["frames_per_s"] for r in rows if r["mode"] == "transformers"}
    print_table(header, ["tower", "pairs", "mode", "ms / forward", "frames/s", "vs transformers", "host syncs",
                         "rel. error", "first call s", "graph ms (matmul / attention / other)"],
                [[r["shape"], str(r["pairs"]), r["mode"], f"{r['ms']:.1f}", f"{r['frames_per_s']:.0f}",
                  f"{r['frames_per_s'] / base[(r['shape'], r['pairs'])]:.2f}x", str(r["syncs"]),
                  f"{r['rel_err']:.1e}" if "rel_err" in r else "", f"{r['first_call_s']:.1f}",
                  f"{r['graph_ms']:.1f} ({r['graph_matmul_ms']:.1f} / {r['graph_attention_ms']:.1f} / "
                  f"{r['graph_other_ms']:.1f})" if "graph_ms" in r else ""] for r in rows])
    write_rows(args.out, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
