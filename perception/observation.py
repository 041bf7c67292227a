"""What perception hands on: a typed `Observation` per sampled frame. No prose: the sentence the lite LM
reads is made from these fields in one place (reasoning.prompts.observation_sentence), and the watcher,
narration and the index read the fields themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Observation:
    t: float                      # stream time of the frame, seconds
    text: str = ""                # text read in the frame (OCR), "" if none
    people: int = 0               # people detected (HOG)
    faces: int = 0                # frontal faces detected (Haar)
    scene_change: float = 0.0     # 0..1 mean grey-level change against the previous sampled frame
    changed: bool = False         # scene_change passed the configured threshold
    perceived: bool = True        # False: no lite perceiver ran (the fields above say nothing)
    image: Any = None             # the sampled frame (H, W, 3) uint8 BGR, for backends that take frames
    prepared: Any = None          # the frame group this frame completes, patchified off the runtime thread

    def same_as(self, other: Observation | None) -> bool:
        """Nothing new to say against `other` (the previous observation)."""
        return other is not None and (self.text, self.people, self.faces, self.changed) == \
            (other.text, other.people, other.faces, other.changed)
