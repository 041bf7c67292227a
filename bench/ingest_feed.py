"""Frame pairs for `bench ingest`'s timed loop, prepared inside it as a live run prepares them.

`Feed` runs on a thread of its own, as the runtime's perception thread does: it resizes each sampled frame to
the benchmark's size (OpenCV, INTER_AREA), patchifies the pair (the processor's resize and normalisation), pins
the patches in page-locked memory and queues them (a bounded queue a few pairs ahead of the loop), so the
loop's host-to-device copies are non-blocking. The loop waits on the queue: if preparing is slower than the
GPU, frames/s says so. `Prepared` (`--pre-patchify`) hands out pairs patchified before the clock started,
as the benchmark did before, to compare.
"""

from __future__ import annotations

import queue
import threading

import cv2
import numpy as np
import torch

from bench.ingest_shapes import FRAME


def prepare(backend, a: np.ndarray, b: np.ndarray, pin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    pair = [cv2.resize(f, (FRAME, FRAME), interpolation=cv2.INTER_AREA) for f in (a, b)]
    patches, grid = backend.patchify(pair)
    return (patches.pin_memory() if pin else patches), grid


class Prepared:
    """Pairs patchified ahead of time, looped."""

    def __init__(self, backend, frames: list[np.ndarray], pin: bool) -> None:
        self.groups = [prepare(backend, frames[i], frames[i + 1], pin) for i in range(0, len(frames) - 1, 2)]

    def get(self, g: int) -> tuple[torch.Tensor, torch.Tensor]:
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
        self.thread = threading.Thread(target=self._run, name="bench-feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n, g = len(self.frames) // 2 * 2, 0
        try:
            while not self._stop.is_set():
                item = (g, prepare(self.backend, self.frames[2 * g % n], self.frames[(2 * g + 1) % n], self.pin))
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
        return item

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
