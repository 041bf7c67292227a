"""Memory settings (v0: attention sink + recent window on the device)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class MemoryConfig:
    window_tokens: int = 1024          # tokens kept after the sink; oldest chunks are evicted past this
    reposition: bool = True            # after eviction, rotate kept keys so positions stay contiguous (RoPE shift)

    def __post_init__(self) -> None:
        if self.window_tokens < 16:
            raise ValueError(f"window_tokens must be >= 16, got {self.window_tokens}")
