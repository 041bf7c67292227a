"""The assistant's whole configuration: one dataclass per package, composed here.

Loadable from a TOML file (`[perception]`, `[memory]`, `[reasoning]` tables plus top-level keys);
CLI flags override what the file sets.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from memory.config import MemoryConfig
from perception.config import PerceptionConfig
from reasoning.config import ReasoningConfig


@dataclass
class AssistantConfig:
    source: str = "synthetic:signs"    # camera:N | rtsp://... | http://... | file path | synthetic:NAME
    model: str = "lite"                # lite | hub id | local path
    device: str = "cpu"                # cpu | cuda
    headless: bool = False             # JSON lines on stdout instead of the UI
    data_dir: str | None = None        # where sessions are stored; None = the user data dir
    watch: list[str] = field(default_factory=list)   # standing instructions ("tell me when a person appears")
    narrate: bool = False              # say so on notable change (new text read, scene change)
    audio: bool = True                 # hear: a file's audio track, or the microphone for live sources
    mic: str | None = None             # input device (index or name); None = the default
    audio_file: str | None = None      # hear this wav/flac/any-media file instead (paced with the frames)
    speak: bool = False                # speak answers and alerts (piper, or espeak-ng)
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    reasoning: ReasoningConfig = field(default_factory=ReasoningConfig)

    @classmethod
    def from_toml(cls, path: str | Path) -> AssistantConfig:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
        sub = {"perception": PerceptionConfig, "memory": MemoryConfig, "reasoning": ReasoningConfig}
        kwargs: dict = {}
        known = {f.name for f in fields(cls)}
        for key, value in raw.items():
            if key not in known:
                raise ValueError(f"{path}: unknown setting {key!r}")
            if key in sub:
                kwargs[key] = sub[key](**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)
