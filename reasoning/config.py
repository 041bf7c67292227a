"""Answering settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReasoningConfig:
    max_new_tokens: int = 48           # cap on an answer's length, in tokens
    decode_tokens_per_step: int = 4    # tokens decoded per runtime step before ingest gets another turn
