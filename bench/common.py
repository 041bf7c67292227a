"""What every `onlooker bench` shares: the printed table, and rows written as JSON lines, each with the run's
header."""

from __future__ import annotations

import json


def write_rows(path: str | None, header: str, rows: list[dict]) -> None:
    """Write `rows` to `path` (if given) as JSON lines, each carrying the header (hardware, settings)."""
    if not path:
        return
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps({"header": header, **r}) + "\n")


def print_table(header: str, columns: list[str], cells: list[list[str]]) -> None:
    """Print the run's header, then a markdown table: `columns` as its head, one line per row of `cells`."""
    print(header)
    print()
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for line in cells:
        print("| " + " | ".join(line) + " |")


def sync(device: str) -> None:
    """Wait for the GPU's queued work (a no-op on the CPU), before reading a clock or memory."""
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def gpu_gb(device: str) -> float | None:
    """GPU memory allocated by torch, GB (None on the CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch
    return torch.cuda.memory_allocated() / 2**30


class BenchError(Exception):
    """Bad input for a benchmark; the launcher prints one line and exits 2."""


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (argparse turns the ValueError into its one-line error)."""
    n = int(text)
    if n < 1:
        raise ValueError(text)
    return n


def measure_matmul_peak(device: str) -> float:
    """bf16 (fp32 on CPU) matmul FLOP/s on this device, median of several runs."""
    import time

    import numpy as np
    import torch
    if not device.startswith("cuda"):
        a = torch.randn(1024, 1024)
        b = torch.randn(1024, 1024)
        t = time.perf_counter()
        for _ in range(5):
            a @ b
        return 5 * 2 * 1024 ** 3 / (time.perf_counter() - t)
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            a @ b
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000 / 10)
    return 2 * n ** 3 / float(np.median(times))
