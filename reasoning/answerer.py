"""Answering: prefill a question on top of a memory context, then decode greedily, a few tokens per
call, so the runtime can interleave ingest between calls. Text streams out as it is decoded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from memory.hierarchy import ContextView
from reasoning.backends.base import Backend, Chunk


@dataclass
class AnswerJob:
    backend: Backend
    context: ContextView | None
    question: Chunk
    max_new_tokens: int
    asked_at: float = field(default_factory=time.monotonic)   # monotonic, when the question arrived
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    ttft_ms: float | None = None
    total_ms: float | None = None
    _next_logits: torch.Tensor | None = None
    _pos: int = 0

    def step(self, max_tokens: int) -> str:
        """Decode up to `max_tokens` tokens; returns the newly printable text."""
        if self.done:
            return ""
        assert self.context is not None
        if self._next_logits is None:
            self._next_logits = self.backend.prefill(self.question, self.context.cache, self.context.next_pos)
            self._pos = self.context.next_pos + self.question.pos_span
        for _ in range(max_tokens):
            token = int(torch.argmax(self._next_logits))
            if self.ttft_ms is None:
                self.ttft_ms = (time.monotonic() - self.asked_at) * 1000
            if token in self.backend.eos_token_ids or len(self.token_ids) >= self.max_new_tokens:
                self._finish()
                break
            self.token_ids.append(token)
            self._next_logits = self.backend.decode(token, self.context.cache, self._pos)
            self._pos += 1
        return self._new_text()

    def _new_text(self) -> str:
        full = self.backend.detokenize(self.token_ids)
        if not self.done and full.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete
        new = full[len(self.text):]
        self.text = full
        return new

    def _finish(self) -> None:
        self.done = True
        self.total_ms = (time.monotonic() - self.asked_at) * 1000
        self.context = None  # release the fork's tensors now, not when the job is dropped
