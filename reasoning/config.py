"""Answering settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReasoningConfig:
    max_new_tokens: int = 48           # cap on an answer's length, in tokens
    decode_tokens_per_step: int = 4    # tokens decoded per runtime step before ingest gets another turn

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.decode_tokens_per_step < 1:
            raise ValueError("max_new_tokens and decode_tokens_per_step must be >= 1")
