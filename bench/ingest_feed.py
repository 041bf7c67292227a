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
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.ingest_shapes import FRAME
from perception.visual import change_against

MEDIA = Path(__file__).resolve().parents[1] / "tests" / "data"      # the sample videos the benchmarks loop


def load_frames(media: list[Path], fps: float, limit_s: float | None = None) -> tuple[list[np.ndarray], list[str]]:
    """The sampled frames of each video (at `fps` of stream time), then the synthetic scene, at their own size
    (the feed resizes them inside the timed loop)."""
    from perception.synthetic import SyntheticScene
    frames, names = [], []
    for path in media:
        cap = cv2.VideoCapture(str(path))
        src_fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
        step, i, next_t = 1.0 / fps, 0, 0.0
        n0 = len(frames)
        while True:
            ok, img = cap.read()
            if not ok or (limit_s is not None and i / src_fps > limit_s):
                break
            if i / src_fps + 1e-9 >= next_t:
                frames.append(img)
                next_t += step
            i += 1
        cap.release()
        names.append(f"{path.name} ({len(frames) - n0} frames)")
    scene = SyntheticScene("signs")
    dur = scene.spec.duration_s if limit_s is None else min(scene.spec.duration_s, limit_s)
    n = int(dur * fps)
    for k in range(n):
        frames.append(scene.render(int(k / fps * scene.spec.fps)))
    names.append(f"synthetic:signs ({n} frames)")
    if len(frames) % 2:
        frames.pop()
    return frames, names


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
        self.wait_s = 0.0                            # never waits: prepared before the clock

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
        self.wait_s = 0.0                            # seconds `get` waited for a pair not yet prepared
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
        start = time.perf_counter()
        k, item = self.q.get()
        self.wait_s += time.perf_counter() - start
        if k is None:
            raise RuntimeError(f"preparing frames failed: {self.error!r}")
        assert k == g, (k, g)                        # pairs come in order, one get per pair
        patches, grid, self.change = item
        return patches, grid

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
