"""The assistant's whole configuration: one dataclass per package, composed here.

Loadable from a TOML file (`[perception]`, `[memory]`, `[reasoning]`, `[storage]` tables plus top-level keys); CLI
flags override what the file sets. Every value is checked, from the file and from flags alike: an unknown
key in any table, a value of the wrong type, or one out of range is a `ConfigError` naming the key (one
line, exit 2), never a silent default.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from assistant.retention import StorageConfig
from memory.config import MemoryConfig
from perception.config import PerceptionConfig
from perception.visual import VisualConfig
from reasoning.config import ReasoningConfig


class ConfigError(Exception):
    """A bad setting; the message is one line naming it."""


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
    storage: StorageConfig = field(default_factory=StorageConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)     # the VLM path's frames: pairs, token drop

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu or cuda, got {self.device!r}")
        if not self.model.strip():
            raise ValueError("model must not be empty")

    @classmethod
    def from_toml(cls, path: str | Path) -> AssistantConfig:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory") from None
        except PermissionError:
            raise ConfigError(f"config file {path} cannot be read: permission denied") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: TOML syntax error: {e}") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e.strerror or e}") from None
        return build(cls, raw, f"{path}")

    def memory_for(self, accepts_frames: bool) -> MemoryConfig:
        """The memory settings for a backend: on the VLM path (frames in) retrieval knows the visual stream's
        keyframe span, so a past time is read from the keyframe before it, and sealed KV is int8 unless
        `quantize` was set (an hour of the 7B's bf16 KV is about 15 GB; docs/benchmarks.md)."""
        if not accepts_frames:
            return dataclasses.replace(self.memory, quantize=bool(self.memory.quantize))
        return dataclasses.replace(self.memory, keyframe_seconds=self.memory.keyframe_seconds
                                   or self.visual.keyframe_seconds,
                                   quantize=True if self.memory.quantize is None else self.memory.quantize)

    def validate(self) -> None:
        """Check every value again (after flags changed some)."""
        for obj, where in ((self, ""), (self.perception, "perception."), (self.memory, "memory."),
                           (self.reasoning, "reasoning."), (self.storage, "storage.")):
            for f in fields(obj):
                if not dataclasses.is_dataclass(getattr(obj, f.name)):
                    _check_type(type(obj), f.name, getattr(obj, f.name), f"{where}{f.name}")
            try:
                obj.__post_init__()
            except ValueError as e:
                raise ConfigError(f"bad setting: {e}") from None


def _hints(cls: type) -> dict[str, Any]:
    import sys
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


def _check_type(cls: type, name: str, value: Any, where: str) -> None:
    hint = _hints(cls)[name]
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for opt in options:
        if opt is type(None) and value is None:
            return
        if opt is bool and isinstance(value, bool):
            return
        if opt is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if opt is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value}")
            return
        if opt is str and isinstance(value, str):
            return
        if typing.get_origin(opt) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return
    names = " or ".join("none" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{where}: expected {names}, got {type(value).__name__} {value!r}")


def build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """A config dataclass from a TOML table, every key and type checked."""
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
        sub = hints[key]
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            kwargs[key] = build(sub, value, f"{where} [{key}]")
        else:
            _check_type(cls, key, value, f"{where}: {key}")
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
