"""What runs beside the model in `bench ingest`: the lite perceivers (as on the VLM path), or a plain CPU load.

`Beside`: the perceivers in their child process, fed the newest frame by a thread (a queue of one that drops the
oldest), as the runtime's perception beside the model does. `Burner`: child processes that spin a pure-Python
loop (one core each, no system calls, nothing sent back), to tell CPU load on the box apart from what the
perceivers themselves cost (`python -m bench.ingest_contention`). Both can be pinned to given CPUs.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections import deque


def pin(cpus: list[int] | None) -> None:
    """Keep the calling thread (and the threads it starts from now on) on these CPUs."""
    if cpus:
        os.sched_setaffinity(0, cpus)


class Beside:
    """The lite perceivers beside the model; `queue.put(frame)`, observations in `out`, `close()` -> counts."""

    def __init__(self, cpus: list[int] | None = None, max_fps: float | None = None) -> None:
        from assistant.perceiver_process import ProcessPerceiver
        from assistant.queues import FrameQueue
        from perception.config import PerceptionConfig
        self.perceiver = ProcessPerceiver(PerceptionConfig(), cpus=cpus)
        self.queue = FrameQueue(1, drop_oldest=True)
        self.out: deque = deque()
        self.error: str | None = None
        self.period = 1.0 / max_fps if max_fps else 0.0        # at most this many frames per wall second
        self.thread = threading.Thread(target=self._run, name="beside", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from assistant.queues import CLOSED
        try:
            while (frame := self.queue.get(timeout=0.5)) is not CLOSED:
                if frame is not None:
                    start = time.perf_counter()
                    self.out.append(self.perceiver.process(frame)[0])
                    time.sleep(max(0.0, self.period - (time.perf_counter() - start)))
        except Exception as e:                                 # reported in the row, the run goes on
            self.error = f"{type(e).__name__}: {e}"

    def close(self) -> tuple[int, int]:
        self.queue.close()
        self.thread.join(timeout=60)
        self.perceiver.close()
        return self.perceiver.num_processed, self.queue.num_dropped


def _spin(cpus: list[int] | None) -> None:
    pin(cpus)
    x = 0
    while True:
        x = (x + 1) & 0xFFFF


class _Sink:
    def put(self, item) -> None:
        pass


class Burner:
    """`n` child processes each spinning one core; the same interface as `Beside`, perceiving nothing."""

    def __init__(self, n: int, cpus: list[int] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_spin, args=(cpus,), daemon=True) for _ in range(n)]
        for p in self.procs:
            p.start()
        self.queue = _Sink()
        self.out: deque = deque()
        self.error: str | None = None

    def close(self) -> tuple[int, int]:
        for p in self.procs:
            p.terminate()
            p.join(timeout=5)
        return 0, 0
