"""Perception settings: how frames are sampled and what the lite perceiver looks for."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PerceptionConfig:
    sample_fps: float = 1.0            # frames per second of stream time handed to perception
    realtime: bool = True              # pace files and synthetic scenes at real time (False = --fast)
    frame_queue: int = 8               # frames buffered between capture and perception; oldest dropped when full
    ocr: bool = True                   # read text in the frame (rapidocr)
    ocr_min_score: float = 0.6         # drop OCR boxes below this confidence
    detect_people: bool = True         # HOG people detector + Haar frontal faces
    people_min_score: float = 1.0      # HOG SVM score a detection needs (lower finds bottles as people)
    scene_change_threshold: float = 0.25  # mean abs grey-level change (0..1) above which a frame is a "scene change"
    max_frame_side: int = 640          # frames are downscaled to this longest side before OCR/detectors
    stall_timeout_s: float = 5.0       # a live source with no frame for this long is a stall
    max_retries: int = 5               # reconnect attempts for a stalled network stream
    retry_backoff_s: float = 0.5       # first back-off; doubles each attempt
    # VLM path: the lite perceivers run beside the model on their own thread, the frame going on at once.
    # "latest": perceive the newest frame whenever free (never slows ingest; skipped frames are counted);
    # "every": every sampled frame (ingest waits for perception when it is slower); "off"; "auto": latest
    # for live or real-time sources, every for --fast replays
    beside_vlm: str = "auto"
    # ... in a child process of their own (assistant/perceiver_process.py), so that their Python never holds
    # the interpreter lock the model's thread needs; False: on a thread of the main process
    beside_process: bool = True

    def __post_init__(self) -> None:
        # written as `not (x > 0)` so that NaN fails too
        if not (0 < self.sample_fps <= 240):
            raise ValueError(f"sample_fps must be in (0, 240] frames per second, got {self.sample_fps}")
        if self.frame_queue < 1:
            raise ValueError(f"frame_queue must be >= 1, got {self.frame_queue}")
        for name in ("ocr_min_score", "scene_change_threshold"):
            if not (0.0 <= getattr(self, name) <= 1.0):
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_frame_side < 32:
            raise ValueError(f"max_frame_side must be >= 32, got {self.max_frame_side}")
        if self.beside_vlm not in ("auto", "latest", "every", "off"):
            raise ValueError(f"beside_vlm must be auto, latest, every or off, got {self.beside_vlm!r}")
        if not (self.stall_timeout_s > 0) or self.max_retries < 0 or not (self.retry_backoff_s >= 0):
            raise ValueError("stall_timeout_s must be > 0, max_retries and retry_backoff_s >= 0")
