"""`onlooker bench kernels`: each Triton kernel against its torch reference and the measured HBM bandwidth.

Sizes are the Qwen2.5-VL-7B ones (28 layers, 4 KV heads, head dim 128, hidden 3584):
    token_drop      8 pairs of 256 merged tokens x 3584, bf16 (one ingest batch)
    segment_scores  10^4 and 10^5 segments x 28*4*128 representative-key values, fp16
    gather_rope     4096 tokens x 28 layers x 4 heads = 458,752 key rows of 128, bf16, gathered from 2x as many
    int8 quantize   one sealed segment: 28 x 4 x 1024 tokens x 128, bf16 -> int8 + fp16 scales
    int8 dequantize the same, back to bf16
Bytes are the fewest each op must move (inputs read once, outputs written once). Bandwidth ceiling:
a large device-to-device copy, counting bytes read plus written, measured in the same run.
"""

from __future__ import annotations

import argparse
import sys

import torch

from bench.common import print_table, write_rows


def _bench(fn, warmup: int = 10, rep: int = 50) -> float:
    """Median seconds per call, CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rep):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    times.sort()
    return times[len(times) // 2]


def _bench_graph(fn, calls: int = 20) -> float:
    """Median seconds per call of `fn` replayed from a CUDA graph: the kernel alone, no launch overhead."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return _bench(g.replay, 3, 20) / calls


def measure_bandwidth() -> float:
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    t = _bench(lambda: y.copy_(x), 3, 20)
    return 2 * x.numel() / t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="onlooker bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return run_kernel_bench(p.parse_args(argv))


def run_kernel_bench(args) -> int:
    from onlooker_kernels import ops, reference
    if not torch.cuda.is_available():
        print("onlooker: error: bench kernels needs a CUDA GPU", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    bw = measure_bandwidth()
    dev = "cuda"
    rows = []

    def add(name, size, nbytes, fn_triton, fn_ref):
        t_call = _bench(fn_triton)
        t_tri = _bench_graph(fn_triton)
        t_ref = _bench_graph(fn_ref)
        rows.append({"kernel": name, "size": size, "bytes": nbytes, "triton_us": t_tri * 1e6, "call_us": t_call * 1e6,
                     "torch_us": t_ref * 1e6, "gbps": nbytes / t_tri / 1e9, "bw_frac": nbytes / t_tri / bw,
                     "speedup": t_ref / t_tri})
        print(f"  {name} {size}: {nbytes / t_tri / 1e9:.0f} GB/s", file=sys.stderr)

    cur = torch.randn(2048, 3584, device=dev, dtype=torch.bfloat16)
    ref = (cur + 0.1 * torch.randn_like(cur)).contiguous()
    add("token_drop", "2048x3584 bf16", 2 * cur.numel() * 2 + 2048,
        lambda: ops.token_drop_triton(cur, ref, 0.95), lambda: reference.token_drop_ref(cur, ref, 0.95))

    k = 28 * 4 * 128
    q = torch.randn(k, device=dev, dtype=torch.float16)
    for s in (10_000, 100_000):
        rep = torch.randn(s, k, device=dev, dtype=torch.float16)
        add("segment_scores", f"{s}x{k} fp16", rep.numel() * 2 + k * 2 + s * 4,
            lambda rep=rep: ops.segment_scores_triton(rep, q), lambda rep=rep: reference.segment_scores_ref(rep, q))
        del rep

    n_rows = 4096 * 28 * 4
    keys = torch.randn(2 * n_rows, 128, device=dev, dtype=torch.bfloat16)
    sel = torch.randint(0, 2 * n_rows, (n_rows,), device=dev)
    seg = torch.sort(torch.randint(0, 8, (n_rows,), device=dev)).values          # 8 retrieved segments
    deltas = torch.randint(-100_000, 100_000, (8,), device=dev)
    inv_freq = 1.0 / (1e6 ** (torch.arange(0, 128, 2, device=dev).float() / 128))
    add("gather_rope", f"{n_rows}x128 bf16, 8 segments", n_rows * 128 * 2 * 2 + n_rows * 16,
        lambda: ops.gather_rope_triton(keys, sel, seg, deltas, inv_freq),
        lambda: reference.gather_rope_ref(keys, sel, seg, deltas, inv_freq))

    x = torch.randn(28, 4, 1024, 128, device=dev, dtype=torch.bfloat16)
    n = x.numel()
    add("int8_quantize", "28x4x1024x128 bf16", n * 2 + n + n // 128 * 2,
        lambda: ops.quantize_int8_triton(x), lambda: reference.quantize_int8_ref(x))
    qx, sc = ops.quantize_int8_triton(x)
    add("int8_dequantize", "28x4x1024x128 -> bf16", n + n // 128 * 2 + n * 2,
        lambda: ops.dequantize_int8_triton(qx, sc, torch.bfloat16),
        lambda: reference.dequantize_int8_ref(qx, sc, torch.bfloat16))

    header = (f"bench kernels: {torch.cuda.get_device_name()}, measured copy bandwidth {bw / 1e9:.0f} GB/s, "
              f"torch {torch.__version__}")
    print_table(header, ["kernel", "size", "Triton µs (graph)", "eager call µs", "torch µs (graph)", "speed-up",
                         "GB/s", "of measured bandwidth"],
                [[r["kernel"], r["size"], f"{r['triton_us']:.1f}", f"{r['call_us']:.1f}", f"{r['torch_us']:.1f}",
                  f"{r['speedup']:.2f}x", f"{r['gbps']:.0f}", f"{100 * r['bw_frac']:.0f}%"] for r in rows])
    write_rows(args.out, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
