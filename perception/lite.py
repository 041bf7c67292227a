"""Lite perception: a frame becomes a typed `Observation` (perception.observation).

What it reads: text in the frame (rapidocr), counts of people (OpenCV HOG) and frontal faces
(OpenCV Haar cascade), and a scene-change score (mean absolute grey-level change against the
previous sampled frame, 0..1). An observation that says nothing new against the previous one is
flagged as a repeat by `process`. The text is data from the scene, never an instruction; prompts
quote it as observation.
"""

from __future__ import annotations

import logging

import cv2
import numpy as np

from perception.config import PerceptionConfig
from perception.observation import Observation
from perception.sources import VideoFrame

log = logging.getLogger("onlooker.perception")


class OcrMissingError(RuntimeError):
    pass


def _load_ocr(threads: int | None = None):
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as e:
        raise OcrMissingError("the OCR package is missing; run: onlooker download lite") from e
    return RapidOCR() if threads is None else RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


class LitePerceiver:
    """Synchronous: `process(frame)` -> (Observation, repeat)."""

    def __init__(self, config: PerceptionConfig, threads: int | None = None) -> None:
        self.config = config
        self._ocr = _load_ocr(threads) if config.ocr else None
        self._hog: cv2.HOGDescriptor | None = None
        self._faces: cv2.CascadeClassifier | None = None
        if config.detect_people and not hasattr(cv2, "HOGDescriptor"):
            log.warning("OpenCV %s has no HOG people detector or Haar face cascade (5.x moved them out); people and "
                        "faces are not counted. Install opencv-python-headless<5 to count them.", cv2.__version__)
        elif config.detect_people:
            self._hog = cv2.HOGDescriptor()
            detector = cv2.HOGDescriptor_getDefaultPeopleDetector()  # type: ignore[attr-defined]
            self._hog.setSVMDetector(detector)
            cascades = cv2.data.haarcascades  # type: ignore[attr-defined]
            self._faces = cv2.CascadeClassifier(cascades + "haarcascade_frontalface_default.xml")
        self._prev_grey: np.ndarray | None = None
        self._last: Observation | None = None
        self.num_processed = 0
        self.num_repeats = 0

    def _resize(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        side = max(h, w)
        if side <= self.config.max_frame_side:
            return image
        scale = self.config.max_frame_side / side
        return cv2.resize(image, (int(w * scale), int(h * scale)), interpolation=cv2.INTER_AREA)

    def read_text(self, image: np.ndarray) -> str:
        if self._ocr is None:
            return ""
        result, _ = self._ocr(image)
        if not result:
            return ""
        # boxes in reading order: top to bottom, then left to right
        boxes = sorted((r for r in result if r[2] >= self.config.ocr_min_score),
                       key=lambda r: (round(r[0][0][1] / 20), r[0][0][0]))
        # single glyphs are mostly noise (texture read as "M" or "口")
        words = [r[1].strip() for r in boxes]
        return " ".join(w for w in words if sum(c.isalnum() for c in w) >= 2)

    def count_people(self, image: np.ndarray, grey: np.ndarray) -> tuple[int, int]:
        if self._hog is None or self._faces is None:
            return 0, 0
        rects, weights = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        people = int(sum(1 for w in np.ravel(weights) if w > self.config.people_min_score)) if len(rects) else 0
        faces = len(self._faces.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24)))
        return people, int(faces)

    def scene_change(self, grey: np.ndarray) -> float:
        small = cv2.resize(grey, (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
        score = 0.0 if self._prev_grey is None else float(np.abs(small - self._prev_grey).mean())
        self._prev_grey = small
        return score

    def describe(self, frame: VideoFrame) -> Observation:
        image = self._resize(frame.image)
        grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        change = self.scene_change(grey)
        text = self.read_text(image)
        people, faces = self.count_people(image, grey)
        return Observation(frame.t, text, people, faces, change, change >= self.config.scene_change_threshold)

    def process(self, frame: VideoFrame) -> tuple[Observation, bool]:
        """The frame's observation and whether it repeats the previous one (nothing new to say)."""
        obs = self.describe(frame)
        self.num_processed += 1
        repeat = obs.same_as(self._last)
        if repeat:
            self.num_repeats += 1
        else:
            self._last = obs
        return obs, repeat
