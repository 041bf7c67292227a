"""Frame pairs for `bench ingest`'s timed loop, prepared inside it as a live run prepares them.

`Feed` runs on a thread of its own, as the runtime's perception thread does: it resizes each sampled frame to
the benchmark's size (OpenCV, INTER_AREA), patchifies the pair (the processor's resize and normalisation), pins
the patches in page-locked memory and queues them (a bounded queue a few pairs ahead of the loop), so the
loop's host-to-device copies are non-blocking. The loop waits on the queue: if preparing is slower than the
GPU, frames/s says so. Like the perception thread (`perception.visual.FramePrep`), it also makes each pair's
ViT-reuse check against the pair before it (`change`), so the loop's thread does not. `Prepared`
(`--pre-patchify`) hands out pairs patchified (and checked) before the clock started, to compare.
"""

from __future__ import annotations

import queue
import threading

import cv2
import numpy as np
import torch

from bench.ingest_shapes import FRAME
from perception.visual import change_against


def prepare(backend, a: np.ndarray, b: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pair = [cv2.resize(f, (FRAME, FRAME), interpolation=cv2.INTER_AREA) for f in (a, b)]
    return backend.patchify(pair, pin=pin)


class Prepared:
    """Pairs patchified ahead of time, looped. `change`: the reuse check of the pair `get` returned last against
    the one before it (None for the first)."""

    def __init__(self, backend, frames: list[np.ndarray], pin: bool) -> None:
        self.groups = [prepare(backend, frames[i], frames[i + 1], pin) for i in range(0, len(frames) - 1, 2)]
        self.changes = [change_against(p, self.groups[i - 1][0]) for i, (p, _) in enumerate(self.groups)]
        self.change: float | None = None

    def get(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.change = self.changes[g % len(self.groups)] if g else None
        return self.groups[g % len(self.groups)]

    def close(self) -> None:
        pass


class Feed:
    """Pair g (frames 2g and 2g+1 of the loop) prepared on a thread, in order; `get(g)` waits for it."""

    def __init__(self, backend, frames: list[np.ndarray], pin: bool, ahead: int = 16) -> None:
        self.backend, self.frames, self.pin = backend, frames, pin
        self.q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.change: float | None = None
        self.thread = threading.Thread(target=self._run, name="bench-feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n, g, prev = len(self.frames) // 2 * 2, 0, None
        try:
            while not self._stop.is_set():
                patches, grid = prepare(self.backend, self.frames[2 * g % n], self.frames[(2 * g + 1) % n], self.pin)
                item = (g, (patches, grid, change_against(patches, prev)))
                prev = patches
                while not self._stop.is_set():
                    try:
                        self.q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                g += 1
        except BaseException as e:                   # handed to the loop, which raises it
            self.error = e
            self.q.put((None, None))

    def get(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, item = self.q.get()
        if k is None:
            raise RuntimeError(f"preparing frames failed: {self.error!r}")
        assert k == g, (k, g)                        # pairs come in order, one get per pair
        patches, grid, self.change = item
        return patches, grid

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
