"""A deterministic synthetic scene: a sign whose word changes, moving shapes, a box counter.

Every scene comes with a machine-readable script (`SyntheticScene.script()`) saying what shows
when, so the demo and the tests know the right answer at any stream time. Rendering is a pure
function of (scene, frame index): the same name always gives the same pixels.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

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

    def __init__(self, name: str, spec: SceneSpec | None = None) -> None:
        if spec is None and name not in SCENES:
            raise KeyError(name)
        self.name = name
        self.spec = spec or SCENES[name]
        rng = random.Random(self.spec.seed)
        num_words = int(np.ceil(self.spec.duration_s / self.spec.word_period_s))
        self._words = [rng.choice(WORDS) for _ in range(num_words)]
        for i in range(1, num_words):  # consecutive words differ, so every change is visible
            while self._words[i] == self._words[i - 1]:
                self._words[i] = rng.choice(WORDS)
        self._box_counts = [rng.randint(1, 4) for _ in range(num_words)]

    @classmethod
    def soak(cls, hours: float) -> SyntheticScene:
        """`soak-<hours>h`: the long scene's look, for hours (a new word every 10 s, a frame every 2 s)."""
        return cls(f"soak-{hours:g}h", SceneSpec(duration_s=hours * 3600.0, fps=0.5, word_period_s=10.0, seed=13))

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


# -- scenes for the small VLM (training, tests, eval) -------------------------------------------------
# Word splits, fixed by a hash of the word so that no list needs to be kept in sync:
#   crc32 % 10 == 0  "heldout"  the tests and the benchmarks of the small VLM; never trained on
#   crc32 % 10 == 1  "eval"     reserved for `onlooker eval`; never trained on, never used to tune anything
#   otherwise        "train"    training only
# The list itself is the 4-7 letter words of SmolLM2's vocabulary (perception/data/words.txt).
WORD_FILE = Path(__file__).with_name("data") / "words.txt"
BOARD_COLOURS: dict[str, tuple[int, int, int]] = {          # name -> BGR
    "red": (40, 40, 210), "green": (60, 170, 60), "blue": (210, 100, 40), "yellow": (40, 215, 235),
    "white": (245, 245, 245), "orange": (30, 140, 250), "purple": (170, 60, 150)}
SHAPE_COLOURS = {k: v for k, v in BOARD_COLOURS.items() if k != "white"}


def word_split(word: str) -> str:
    h = zlib.crc32(word.upper().encode()) % 10
    return "heldout" if h == 0 else ("eval" if h == 1 else "train")


@lru_cache(maxsize=1)
def all_words() -> tuple[str, ...]:
    return tuple(w.strip() for w in WORD_FILE.read_text().split() if w.strip())


@lru_cache(maxsize=4)
def words(split: str) -> list[str]:
    """The words of a split; "strings" is training's pool of random letter strings (below)."""
    if split == "strings":
        return letter_strings()
    return [w for w in all_words() if word_split(w) == split]


@lru_cache(maxsize=1)
def letter_strings(n: int = 20000, seed: int = 4242) -> list[str]:
    """Random 4-7 letter strings for training only: not words of the list, and of the "train" split by the same
    hash, so none can be a held-out or eval word. A model trained on words alone learns the words (train 24/24,
    held-out 11/24 at step 14604); strings have no word to fall back on, only their letters."""
    rng, known, out = random.Random(seed), set(all_words()), set[str]()
    while len(out) < n:
        s = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(4, 7)))
        if s not in known and word_split(s) == "train":
            out.add(s)
    return sorted(out)


@dataclass(frozen=True)
class Sign:
    t0: float
    t1: float
    word: str
    board: str                 # colour name
    shapes: tuple[tuple[str, str, float, float], ...]   # (kind, colour, phase, speed) of each moving shape


@dataclass
class SignScene:
    """A random scene for the small VLM: a sign whose word and board colour change, 0-4 moving shapes, and a
    person-like figure that walks in and out. `render(t)` is a pure function of (scene, t)."""

    seed: int
    duration_s: float
    signs: list[Sign]
    people: list[tuple[float, float]]          # intervals with the figure in view
    background: tuple[int, int, int]
    width: int = 224
    height: int = 224

    @classmethod
    def random(cls, seed: int, duration_s: float = 60.0, split: str = "train", period_s: tuple[float, float] = (6, 12),
               size: int = 224) -> SignScene:
        rng = random.Random(seed)
        pool = words(split)
        signs, t, prev = [], 0.0, ""
        while t < duration_s:
            t1 = min(duration_s, t + rng.uniform(*period_s))
            word = rng.choice([w for w in rng.sample(pool, 4) if w != prev])
            shapes = tuple((rng.choice(["ball", "box"]), rng.choice(list(SHAPE_COLOURS)), rng.uniform(0, 6.28),
                            rng.uniform(0.4, 1.2)) for _ in range(rng.randint(0, 4)))
            signs.append(Sign(t, t1, word, rng.choice(list(BOARD_COLOURS)), shapes))
            t, prev = t1, word
        people, t = [], rng.uniform(3, 15)
        while t < duration_s:
            stay = rng.uniform(4, 10)
            people.append((t, min(duration_s, t + stay)))
            t += stay + rng.uniform(5, 20)
        bg = tuple(int(c) for c in rng.choice([(70, 90, 60), (90, 70, 60), (60, 60, 60), (110, 110, 90)]))
        return cls(seed, duration_s, signs, people, (bg[0], bg[1], bg[2]), size, size)

    def sign_at(self, t: float) -> Sign:
        return next((s for s in self.signs if s.t0 <= t < s.t1), self.signs[-1])

    def person_at(self, t: float) -> bool:
        return any(a <= t < b for a, b in self.people)

    def render(self, t: float) -> np.ndarray:
        w, h = self.width, self.height
        img = np.full((h, w, 3), self.background, np.uint8)           # (H, W, 3) BGR
        sign = self.sign_at(t)
        colour = BOARD_COLOURS[sign.board]
        ink = (0, 0, 0) if sign.board in ("white", "yellow", "orange", "green") else (255, 255, 255)
        x0, y0, x1, y1 = int(0.06 * w), int(0.05 * h), int(0.94 * w), int(0.36 * h)
        cv2.rectangle(img, (x0, y0), (x1, y1), colour, -1)
        cv2.rectangle(img, (x0, y0), (x1, y1), (20, 20, 20), 2)
        scale = 1.0
        (tw, th), _ = cv2.getTextSize(sign.word, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        scale = min(1.2, 0.9 * (x1 - x0) / tw)
        (tw, th), _ = cv2.getTextSize(sign.word, cv2.FONT_HERSHEY_SIMPLEX, scale, 2)
        cv2.putText(img, sign.word, ((w - tw) // 2, (y0 + y1 + th) // 2), cv2.FONT_HERSHEY_SIMPLEX, scale, ink, 2,
                    cv2.LINE_AA)
        for i, (kind, name, phase, speed) in enumerate(sign.shapes):
            cx = int(w * (0.5 + 0.4 * np.sin(speed * t + phase)))
            cy = int(h * (0.5 + 0.09 * i + 0.03 * np.sin(1.7 * speed * t + phase)))
            r = max(6, w // 28)
            if kind == "ball":
                cv2.circle(img, (cx, cy), r, SHAPE_COLOURS[name], -1)
            else:
                cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), SHAPE_COLOURS[name], -1)
        for a, b in self.people:
            if a <= t < b:                      # a figure walking from left to right while in view
                px = int(w * (0.1 + 0.8 * (t - a) / max(b - a, 1e-6)))
                s = h / 224
                cv2.circle(img, (px, int(150 * s)), int(9 * s), (180, 200, 230), -1)                  # head
                cv2.rectangle(img, (px - int(8 * s), int(160 * s)), (px + int(8 * s), int(190 * s)), (90, 40, 30), -1)
                cv2.line(img, (px - int(4 * s), int(190 * s)), (px - int(9 * s), int(215 * s)), (50, 50, 50), 3)
                cv2.line(img, (px + int(4 * s), int(190 * s)), (px + int(9 * s), int(215 * s)), (50, 50, 50), 3)
        return img
