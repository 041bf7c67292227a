"""The lite perceivers in a child process, for the VLM path's perception beside the model.

OCR, HOG and the Haar cascade spend much of their time in Python (rapidocr's pre- and post-processing,
numpy), holding the interpreter lock that the runtime thread needs to launch the model's GPU kernels: run on
a thread of the same process they cut GPU ingest by half or more (`onlooker bench ingest`,
onlooker+perception). Here the parent only downsizes the frame (OpenCV, lock released), sends it down a pipe
and waits for the observation; the perceiving happens in a spawned child with its own interpreter.

`ProcessPerceiver.process(frame)` has the same contract as `LitePerceiver.process`.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from typing import Any

import cv2

from perception.config import PerceptionConfig
from perception.lite import LitePerceiver, OcrMissingError
from perception.observation import Observation
from perception.sources import VideoFrame

log = logging.getLogger("onlooker.perception")

START_TIMEOUT_S = 120.0      # a cold start imports OpenCV, onnxruntime and the OCR models


class PerceiverProcessError(RuntimeError):
    pass


CHILD_THREADS = 2            # OpenCV's and onnxruntime's pools: the model's process keeps the other cores


def _serve(conn: Any, config: PerceptionConfig, cpus: list[int] | None = None) -> None:
    if cpus:                                 # keep off the cores the model's launching thread runs on
        os.sched_setaffinity(0, cpus)
    cv2.setNumThreads(CHILD_THREADS)
    try:
        perceiver = LitePerceiver(config, threads=CHILD_THREADS)
    except Exception as e:                   # e.g. the OCR package is missing: the parent says so
        conn.send(("missing" if isinstance(e, OcrMissingError) else "error", str(e)))
        return
    conn.send(("ready", None))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):          # the parent is gone
            return
        if msg is None:
            return
        try:
            conn.send(("ok", perceiver.process(VideoFrame(*msg))))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {e}"))


class ProcessPerceiver:
    """Synchronous from the caller's side: `process(frame)` -> (Observation, repeat)."""

    def __init__(self, config: PerceptionConfig, cpus: list[int] | None = None) -> None:
        self.config = config
        ctx = mp.get_context("spawn")        # never fork a process that holds CUDA and threads
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, config, cpus), name="onlooker-perceiver", daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(START_TIMEOUT_S):
            self.close()
            raise PerceiverProcessError(f"the perceiver process did not start in {START_TIMEOUT_S:.0f} s")
        kind, text = self._recv()
        if kind != "ready":
            self.close()
            raise (OcrMissingError if kind == "missing" else PerceiverProcessError)(text)
        self.num_processed = 0
        self.num_repeats = 0

    def _recv(self) -> tuple[str, Any]:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise PerceiverProcessError(f"the perceiver process ended (exit code {self._proc.exitcode})") from None

    def process(self, frame: VideoFrame) -> tuple[Observation, bool]:
        image = frame.image
        side = max(image.shape[:2])
        if side > self.config.max_frame_side:   # what the child would do first; smaller through the pipe
            scale = self.config.max_frame_side / side
            image = cv2.resize(image, (int(image.shape[1] * scale), int(image.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
        try:
            self._conn.send((image, frame.t, frame.wall, frame.index))
        except (BrokenPipeError, OSError):
            raise PerceiverProcessError(f"the perceiver process ended (exit code {self._proc.exitcode})") from None
        kind, payload = self._recv()
        if kind != "ok":
            raise PerceiverProcessError(payload)
        obs, repeat = payload
        self.num_processed += 1
        self.num_repeats += int(repeat)
        return obs, repeat

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        self._conn.close()
