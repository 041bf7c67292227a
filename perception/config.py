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

    def __post_init__(self) -> None:
        if self.sample_fps <= 0:
            raise ValueError(f"sample_fps must be > 0, got {self.sample_fps}")
