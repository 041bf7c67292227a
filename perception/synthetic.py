"""A deterministic synthetic scene: a sign whose word changes, moving shapes, a box counter.

Every scene comes with a machine-readable script (`SyntheticScene.script()`) saying what shows
when, so the demo and the tests know the right answer at any stream time. Rendering is a pure
function of (scene, frame index): the same name always gives the same pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cv2
import numpy as np

WORDS = [
    "APPLE", "RIVER", "TIGER", "PIANO", "ROCKET", "GARDEN", "YELLOW", "CASTLE", "PENCIL", "ORANGE",
    "DRAGON", "SILVER", "WINDOW", "MARKET", "FOREST", "BUTTER", "CANDLE", "LEMON", "HAMMER", "PLANET",
]


@dataclass(frozen=True)
class SceneSpec:
    duration_s: float          # length of the scene in stream seconds
    fps: float                 # native frame rate of the generator
    word_period_s: float       # a new word appears on the sign every this many seconds
    seed: int                  # picks the word order and the shape paths
    width: int = 640
    height: int = 360


SCENES: dict[str, SceneSpec] = {
    "signs": SceneSpec(duration_s=60.0, fps=10.0, word_period_s=8.0, seed=7),
    "short": SceneSpec(duration_s=12.0, fps=5.0, word_period_s=4.0, seed=3),
    "long": SceneSpec(duration_s=600.0, fps=5.0, word_period_s=10.0, seed=11),
}


class SyntheticScene:
    """Renders frame `i` of a named scene; `script()` lists what is shown when."""

    def __init__(self, name: str) -> None:
        if name not in SCENES:
            raise KeyError(name)
        self.name = name
        self.spec = SCENES[name]
        rng = random.Random(self.spec.seed)
        num_words = int(np.ceil(self.spec.duration_s / self.spec.word_period_s))
        self._words = [rng.choice(WORDS) for _ in range(num_words)]
        for i in range(1, num_words):  # consecutive words differ, so every change is visible
            while self._words[i] == self._words[i - 1]:
                self._words[i] = rng.choice(WORDS)
        self._box_counts = [rng.randint(1, 4) for _ in range(num_words)]

    @property
    def num_frames(self) -> int:
        return int(round(self.spec.duration_s * self.spec.fps))

    def word_at(self, t: float) -> str:
        return self._words[min(int(t // self.spec.word_period_s), len(self._words) - 1)]

    def boxes_at(self, t: float) -> int:
        return self._box_counts[min(int(t // self.spec.word_period_s), len(self._box_counts) - 1)]

    def script(self) -> list[dict]:
        """What shows when: one entry per sign word, with its time span and the box count."""
        p = self.spec.word_period_s
        return [
            {"kind": "sign", "t0": i * p, "t1": min((i + 1) * p, self.spec.duration_s), "text": w,
             "boxes": self._box_counts[i]}
            for i, w in enumerate(self._words)
        ]

    def render(self, index: int) -> np.ndarray:
        s = self.spec
        t = index / s.fps
        img = np.full((s.height, s.width, 3), (70, 90, 60), np.uint8)  # (H, W, 3) BGR
        # the sign: white board, black word
        word = self.word_at(t)
        cv2.rectangle(img, (170, 50), (470, 150), (255, 255, 255), -1)
        cv2.rectangle(img, (170, 50), (470, 150), (30, 30, 30), 3)
        (tw, _), _ = cv2.getTextSize(word, cv2.FONT_HERSHEY_SIMPLEX, 1.6, 4)
        cv2.putText(img, word, (320 - tw // 2, 122), cv2.FONT_HERSHEY_SIMPLEX, 1.6, (0, 0, 0), 4)
        # moving shapes: a ball on a Lissajous path, a triangle sliding along the bottom
        cx = int(s.width / 2 + 250 * np.sin(0.7 * t + s.seed))
        cy = int(250 + 60 * np.sin(1.3 * t))
        cv2.circle(img, (cx, cy), 22, (40, 40, 220), -1)
        tx = int((40 * t) % (s.width + 60)) - 30
        pts = np.array([[tx, 345], [tx + 30, 345], [tx + 15, 318]], np.int32)
        cv2.fillPoly(img, [pts], (220, 180, 40))
        # the counter: N small boxes on the right edge
        for k in range(self.boxes_at(t)):
            y = 180 + 36 * k
            cv2.rectangle(img, (590, y), (618, y + 28), (200, 200, 200), -1)
        return img
