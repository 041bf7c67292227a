"""Answering settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReasoningConfig:
    max_new_tokens: int = 48           # cap on an answer's length, in tokens
    decode_tokens_per_step: int = 4    # tokens decoded per runtime step before ingest gets another turn
    no_repeat_ngram: int = 4           # never repeat a run of this many answer tokens (the loop guard; 0: off)
    # VLM path: a one-line caption of each sealed segment, written by the model when the runtime has slack
    captions: bool = False
    caption_every_s: float = 0.0       # at most one caption per this much stream time (0: every segment)
    caption_tokens: int = 24           # a caption's length cap, in tokens
    caption_queue: int = 32            # sealed segments waiting for a caption; past it the oldest wait is skipped
    # standing instructions the perceivers cannot read are decided by the model's yes/no probe alone, with
    # its own thresholds (a fine-tuned VLM's P(yes) is sharper than the evidence-weighted score)
    probe_on: float = 0.6
    probe_off: float = 0.4
    cooldown_s: float = 8.0
    evidence_max_age_s: float = 3.0    # VLM path: perception older than this (stream s) is no evidence

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.decode_tokens_per_step < 1:
            raise ValueError("max_new_tokens and decode_tokens_per_step must be >= 1")
        if self.no_repeat_ngram < 0:
            raise ValueError(f"no_repeat_ngram must be >= 0, got {self.no_repeat_ngram}")
        if self.caption_tokens < 1 or self.caption_queue < 1 or not (self.caption_every_s >= 0):
            raise ValueError("caption_tokens and caption_queue must be >= 1, caption_every_s >= 0")
        if not (0.0 <= self.probe_off <= self.probe_on <= 1.0):
            raise ValueError(f"need 0 <= probe_off <= probe_on <= 1, got {self.probe_off} and {self.probe_on}")
        if not (self.cooldown_s >= 0) or not (self.evidence_max_age_s >= 0):
            raise ValueError("cooldown_s and evidence_max_age_s must be >= 0")

    def decoding(self) -> dict[str, int]:
        """The answer's decoding settings, as answer_job's keyword arguments."""
        return {"max_new_tokens": self.max_new_tokens, "no_repeat_ngram": self.no_repeat_ngram}
