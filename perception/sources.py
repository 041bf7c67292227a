"""Video sources: camera, network stream, file, synthetic scene.

A source yields `VideoFrame`s in stream order. Each carries its stream time (seconds since the
start of the stream) and its capture wall time. `open()` validates the input and raises
`SourceError` with one line a user can act on; nothing here prints or exits.

Sampling (`sample`) and pacing (`pace`) are plain generators over frames, so tests drive them with
a fake clock. Live sources (camera, network stream) are paced by the world; files and synthetic
scenes are paced to real time unless `--fast`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2  # perception/__init__.py silences OpenCV's own logging first
import numpy as np

from perception.config import PerceptionConfig
from perception.synthetic import SCENES, SignScene, SyntheticScene

log = logging.getLogger("onlooker.source")

VIDEO_EXTENSIONS = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"}


class SourceError(Exception):
    """Bad or failing input; the message is one line meant for the user."""


@dataclass(slots=True)
class VideoFrame:
    image: np.ndarray        # (H, W, 3) uint8 BGR
    t: float                 # stream time, seconds
    wall: float              # capture wall time, time.time()
    index: int               # frame index in the source (native rate)


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class SourceStats:
    frames_read: int = 0     # native frames decoded
    stalls: int = 0          # times a live source stopped delivering
    reconnects: int = 0      # successful reconnections after a stall


class Source:
    """Base: `open()` then iterate `frames()`; `close()` is idempotent."""

    name: str = "source"
    live: bool = False       # paced by the world, stream time from the wall clock

    def __init__(self) -> None:
        self.stats = SourceStats()

    def open(self) -> None:
        raise NotImplementedError

    def frames(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class SyntheticSource(Source):
    def __init__(self, scene_name: str) -> None:
        super().__init__()
        self.name = f"synthetic:{scene_name}"
        self.scene_name = scene_name
        self.scene: SyntheticScene | None = None
        self.sign_scene: SignScene | None = None

    def open(self) -> None:
        m = re.fullmatch(r"vl-(train|heldout|eval)-(\d+)", self.scene_name)
        if m:                                   # the small VLM's scenes: a random sign scene, 60 s at 2 fps
            self.sign_scene = SignScene.random(int(m.group(2)), 60.0, m.group(1))
            return
        m = re.fullmatch(r"soak-(\d+(?:\.\d+)?)h", self.scene_name)
        if m and 0 < float(m.group(1)) <= 1000:  # bench soak's stream: hours of the long scene
            self.scene = SyntheticScene.soak(float(m.group(1)))
            return
        try:
            self.scene = SyntheticScene(self.scene_name)
        except KeyError:
            raise SourceError(
                f"unknown synthetic scene {self.scene_name!r}; known: {', '.join(sorted(SCENES))}, "
                f"vl-heldout-N (N a seed), or soak-Hh (H hours)"
            ) from None

    def frames(self) -> Iterator[VideoFrame]:
        if self.sign_scene is not None:
            for i in range(int(self.sign_scene.duration_s * 2)):
                self.stats.frames_read += 1
                yield VideoFrame(self.sign_scene.render(i / 2), i / 2, time.time(), i)
            return
        assert self.scene is not None, "open() first"
        fps = self.scene.spec.fps
        for i in range(self.scene.num_frames):
            self.stats.frames_read += 1
            yield VideoFrame(self.scene.render(i), i / fps, time.time(), i)


class FileSource(Source):
    """A video file (or a finite stream with a known frame count)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.name = path
        self.path = path
        self.cap: cv2.VideoCapture | None = None
        self.fps = 0.0
        self.num_frames = 0

    def open(self) -> None:
        p = Path(self.path)
        if not p.exists():
            raise SourceError(f"no such file: {self.path}")
        if p.is_dir():
            raise SourceError(f"{self.path} is a directory, not a video file")
        if not os.access(p, os.R_OK):
            raise SourceError(f"cannot read {self.path}: permission denied")
        if p.stat().st_size == 0:
            raise SourceError(f"{self.path} is empty")
        cap = cv2.VideoCapture(str(p))
        if not cap.isOpened():
            raise SourceError(f"cannot decode {self.path}: not a video OpenCV can read (corrupt, truncated, "
                              f"or an unsupported codec)")
        ok, first = cap.read()
        if not ok or first is None:
            cap.release()
            raise SourceError(f"cannot decode {self.path}: no frame could be read (unsupported codec or "
                              f"truncated file)")
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.cap = cap
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)

    @classmethod
    def from_capture(cls, name: str, cap: cv2.VideoCapture) -> FileSource:
        """A finite stream already opened elsewhere (a complete video file served over HTTP): read to its end
        like a local file, paced the same way, never reconnected."""
        src = cls(name)
        src.cap = cap
        src.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        src.num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        return src

    def frames(self) -> Iterator[VideoFrame]:
        assert self.cap is not None, "open() first"
        i = 0
        while True:
            ok, img = self.cap.read()
            if not ok or img is None:
                break
            t = i / self.fps if self.fps > 0 else self.cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            self.stats.frames_read += 1
            yield VideoFrame(img, t, time.time(), i)
            i += 1
        # A file that stops well short of its declared length was cut off (or is damaged mid-way).
        if self.num_frames > 0 and i < 0.9 * self.num_frames - 1:
            raise SourceError(f"{self.path} ends early: decoded {i} of {self.num_frames} frames "
                              f"(truncated or damaged file)")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class LiveSource(Source):
    """A camera or a network stream: stream time from the wall clock; stalls retried with back-off."""

    live = True

    def __init__(self, target: int | str, name: str, config: PerceptionConfig,
                 clock: Clock | None = None) -> None:
        super().__init__()
        self.target = target
        self.name = name
        self.config = config
        self.clock = clock or RealClock()
        self.cap: cv2.VideoCapture | None = None

    def _open_capture(self) -> cv2.VideoCapture | None:
        if isinstance(self.target, int):
            cap = cv2.VideoCapture(self.target)
        else:
            timeout_ms = int(self.config.stall_timeout_s * 1000)
            cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms,
                                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms])
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def open(self) -> None:
        self.cap = self._open_capture()
        if self.cap is None:
            if isinstance(self.target, int):
                raise SourceError(f"camera {self.target} not found (no video device at index {self.target}, "
                                  f"or it is in use)")
            raise SourceError(f"stream {self.target} did not answer (unreachable host, wrong URL, or not "
                              f"a video stream)")

    def finite(self) -> bool:
        """True for a complete video file behind a URL (it declares a frame count and a rate); a live stream
        declares neither."""
        if self.cap is None or isinstance(self.target, int):
            return False
        return (self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) > 0 and (self.cap.get(cv2.CAP_PROP_FPS) or 0) > 0

    def frames(self) -> Iterator[VideoFrame]:
        assert self.cap is not None, "open() first"
        start = self.clock.monotonic()
        i = 0
        while True:
            ok, img = self.cap.read()
            if ok and img is not None:
                self.stats.frames_read += 1
                yield VideoFrame(img, self.clock.monotonic() - start, time.time(), i)
                i += 1
                continue
            self.cap = self._reconnect()

    def _reconnect(self) -> cv2.VideoCapture:
        """A read failed: retry with exponential back-off; give up with SourceError."""
        self.stats.stalls += 1
        if self.cap is not None:
            self.cap.release()
        delay = self.config.retry_backoff_s
        for attempt in range(1, self.config.max_retries + 1):
            log.warning("%s stalled; reconnecting in %.1fs (attempt %d/%d)", self.name, delay, attempt,
                        self.config.max_retries)
            self.clock.sleep(delay)
            cap = self._open_capture()
            if cap is not None:
                ok, _ = cap.read()
                if ok:
                    self.stats.reconnects += 1
                    log.warning("%s reconnected", self.name)
                    return cap
                cap.release()
            delay *= 2
        raise SourceError(f"{self.name} stalled and did not come back after {self.config.max_retries} "
                          f"reconnect attempts")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(spec: str, config: PerceptionConfig, clock: Clock | None = None) -> Source:
    """Parse a --source spec, open it, and return it; raises SourceError on bad input."""
    src: Source
    if spec.startswith("synthetic:"):
        src = SyntheticSource(spec.split(":", 1)[1])
    elif spec.startswith("camera:"):
        idx = spec.split(":", 1)[1]
        if not idx.isdigit():
            raise SourceError(f"bad camera spec {spec!r}: expected camera:N with N a device index, e.g. camera:0")
        src = LiveSource(int(idx), spec, config, clock)
    elif spec.startswith(("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")):
        live = LiveSource(spec, spec, config, clock)
        live.open()
        if spec.startswith(("http://", "https://")) and live.finite():
            assert live.cap is not None
            log.info("%s is a complete video file: reading it to its end like a local file", spec)
            return FileSource.from_capture(spec, live.cap)
        return live
    elif "://" in spec:
        raise SourceError(f"unsupported source {spec!r}: use camera:N, rtsp://, http(s)://, a video file, "
                          f"or synthetic:NAME")
    else:
        ext = Path(spec).suffix.lower()
        if ext and ext not in VIDEO_EXTENSIONS and Path(spec).exists():
            raise SourceError(f"{spec}: unsupported file type {ext!r} (expected one of "
                              f"{', '.join(sorted(VIDEO_EXTENSIONS))})")
        src = FileSource(spec)
    src.open()
    return src


def sample(frames: Iterator[VideoFrame], fps: float) -> Iterator[VideoFrame]:
    """Keep the first frame at or after each multiple of 1/fps of stream time."""
    period = 1.0 / fps
    next_t = 0.0
    for frame in frames:
        if frame.t + 1e-9 >= next_t:
            yield frame
            next_t += period
            if frame.t + 1e-9 >= next_t:  # the source jumped (a stall): no burst of catch-up frames
                next_t = frame.t + period


def pace(frames: Iterator[VideoFrame], clock: Clock, realtime: bool) -> Iterator[VideoFrame]:
    """Hold each frame until its stream time has passed on the clock (files, synthetic scenes)."""
    start: float | None = None
    for frame in frames:
        if realtime:
            if start is None:
                start = clock.monotonic() - frame.t
            clock.sleep(start + frame.t - clock.monotonic())
        frame.wall = time.time()
        yield frame
