"""The vision tower's whole forward as one CUDA graph per batch shape: one replay instead of launching its kernels.

With the tower in one attention call per layer (model/vision_attention.py) and its blocks compiled, the 7B tower
over a batch of 8 pairs is still ~32 blocks x a dozen kernels launched from Python, plus compiled code's guards:
on the H200 the tower took 21% of the ingest loop's main thread (py-spy, docs/benchmarks.md), a thread that sets the
pace (its CPU time is 94-99% of the wall). Nothing inside the planned tower waits on the device and its shapes are
fixed by the batch's grids, so the forward is captured once per shape and replayed: the patches are copied into the
graph's static input, the graph runs, and its outputs are cloned out (a pipelined batch keeps them past the next
replay).

A shape is warmed up (compiled, cuBLAS's choice made) once outside capture, then captured; a forward that cannot be
captured (one that waits on the device, e.g. transformers' own tower attention) is noted, logged once and runs
eagerly from then on. Graphs of every shape share one memory pool: replays run in order on one stream and each
one's outputs are cloned before the next. tests/unit/test_cuda.py checks replays against the eager forward.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger("onlooker.model")

Forward = Callable[[torch.Tensor], list[torch.Tensor]]     # static input (N, C) -> outputs


@dataclass
class _Graph:
    x: torch.Tensor                       # the static input
    outs: list[torch.Tensor]              # the static outputs
    graph: Any
    keep: list[Any] = field(default_factory=list)     # what the graph reads by address (plan, positions): kept alive


class TowerGraphs:
    """One captured tower forward per batch shape (`key`), at most `limit` of them; others run eagerly."""

    def __init__(self, limit: int = 16) -> None:
        self.limit = limit
        self.pool: Any = None
        self._made: dict[Hashable, _Graph] = {}
        self._failed: set[Hashable] = set()
        self.replays = 0

    def run(self, key: Hashable, patches: list[torch.Tensor], forward: Forward, dtype: torch.dtype,
            device: torch.device, keep: list[Any]) -> list[torch.Tensor] | None:
        """The forward's outputs for these patches (concatenated along rows, cast to `dtype` on `device`), by
        replaying this shape's graph, capturing it first if new; None: run it eagerly (a shape that cannot be
        captured, past the limit, or a capture in progress elsewhere on this thread). `keep`: tensors and objects
        the forward reads by address (they must outlive the graph)."""
        g = self._made.get(key)
        if g is None:
            if key in self._failed or len(self._made) >= self.limit or torch.cuda.is_current_stream_capturing():
                return None
            g = self._capture(key, patches, forward, dtype, device, keep)
            if g is None:
                return None
        else:
            _fill(g.x, patches)
        g.graph.replay()
        self.replays += 1
        return [o.clone() for o in g.outs]

    def _capture(self, key: Hashable, patches: list[torch.Tensor], forward: Forward, dtype: torch.dtype,
                 device: torch.device, keep: list[Any]) -> _Graph | None:
        rows = sum(int(p.shape[0]) for p in patches)
        x = torch.empty(rows, int(patches[0].shape[1]), device=device, dtype=dtype)
        _fill(x, patches)
        main = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            forward(x)                       # warm-up outside capture: compiling, kernel and workspace choices
        main.wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                outs = forward(x)
        except Exception as e:               # noqa: BLE001 - any failure to capture: this shape runs eagerly
            self._failed.add(key)
            log.warning("vision tower not captured as a CUDA graph for shape %s (%s: %s); it runs eagerly",
                        key, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None
        g = self._made[key] = _Graph(x, list(outs), graph, list(keep))
        return g

    def __len__(self) -> int:
        return len(self._made)


def _fill(x: torch.Tensor, patches: list[torch.Tensor]) -> None:
    """Each group's patches into its rows of the static input, without waiting (pinned patches copy
    asynchronously; the cast to the tower's dtype happens on the device)."""
    start = 0
    for p in patches:
        n = int(p.shape[0])
        x[start:start + n].copy_(p, non_blocking=True)
        start += n
