"""The one answer recipe, used by the runtime, `onlooker ask` and the benchmarks:

    memory.context(question, t)          -> a view: sink + retrieved segments + window (a fork)
    restate rule                         -> what memory recalled (or the newest observation) beside the question
    prompts.question_chunk               -> the question turn
    AnswerJob.step(n)                    -> prefill once, then decode greedily, a few tokens per call

Decoding a few tokens per call lets the runtime interleave ingest between calls. Text streams out as it
is decoded. The guard against loops: a token that would repeat an n-gram of the answer (`no_repeat_ngram`
tokens, 0 for none) is never chosen, and an answer cut by the length cap ends at its last full sentence.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from memory.manager import ContextView, HierarchicalMemory
from model.backend import Backend
from model.chunk import Chunk, without_frames
from reasoning import prompts


@dataclass
class AnswerJob:
    backend: Backend
    context: ContextView | None
    question: Chunk
    max_new_tokens: int
    asked_at: float = field(default_factory=time.monotonic)   # monotonic, when the question arrived
    no_repeat_ngram: int = 4
    recalled: list[tuple[float, str]] = field(default_factory=list)   # restated beside the question
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    done: bool = False
    ttft_ms: float | None = None
    total_ms: float | None = None
    _next_logits: torch.Tensor | None = None
    _pos: int = 0
    _capped: bool = False

    def step(self, max_tokens: int) -> str:
        """Decode up to `max_tokens` tokens; returns the newly printable text."""
        if self.done:
            return ""
        assert self.context is not None
        if self._next_logits is None:
            self._next_logits = self.backend.prefill(self.question, self.context.cache, self.context.next_pos)
            self._pos = self.context.next_pos + self.question.pos_span
        for _ in range(max_tokens):
            token = self._choose(self._next_logits)
            if self.ttft_ms is None:
                self.ttft_ms = (time.monotonic() - self.asked_at) * 1000
            if token in self.backend.eos_token_ids or len(self.token_ids) >= self.max_new_tokens:
                self._finish(capped=token not in self.backend.eos_token_ids)
                break
            self.token_ids.append(token)
            self._next_logits = self.backend.decode(token, self.context.cache, self._pos)
            self._pos += 1
        return self._new_text()

    def run(self, tokens_per_step: int = 16) -> str:
        """Decode to the end; returns the whole answer."""
        while not self.done:
            self.step(tokens_per_step)
        return self.text.strip()

    def _new_text(self) -> str:
        full = self.backend.detokenize(self.token_ids)
        if not self.done and full.endswith("\ufffd"):
            return ""  # a multi-byte character is still incomplete
        if self.done and self._capped:
            full = sentence_cut(full)
        new = full[len(self.text):]
        self.text = full
        return new

    def _choose(self, logits: torch.Tensor) -> int:
        """Greedy, but never a token that would repeat an n-gram already in the answer."""
        n, ids = self.no_repeat_ngram, self.token_ids
        if n < 1 or len(ids) < n - 1:
            return int(torch.argmax(logits))
        prefix = tuple(ids[len(ids) - n + 1:]) if n > 1 else ()
        banned = [ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i:i + n - 1]) == prefix]
        if not banned:
            return int(torch.argmax(logits))
        logits = logits.flatten().clone()
        logits[banned] = float("-inf")
        return int(torch.argmax(logits))

    def _finish(self, capped: bool = False) -> None:
        self._capped = capped                        # cut by the length cap: end at the last full sentence
        self.done = True
        self.total_ms = (time.monotonic() - self.asked_at) * 1000
        self.context = None  # release the fork's tensors now, not when the job is dropped


def sentence_cut(text: str) -> str:
    """`text` up to its last sentence end (. ! ?), when one ends past its first fifth; else all of it."""
    end = max(text.rfind(". "), text.rfind("! "), text.rfind("? "), text.rfind("\n"))
    if text.rstrip().endswith((".", "!", "?")):
        return text
    return text[:end + 1] if end >= len(text) // 5 else text


def recalled_lines(backend: Backend, view: ContextView, restate: bool) -> list[tuple[float, str]]:
    """The restate rule: text observations that memory recalled go beside the question. A frame's placeholder
    is no text, so the VLM path restates only what the perceivers beside it (or a caption) wrote down."""
    r = view.retrieval
    if r is None or not restate:
        return []
    if not backend.accepts_frames:
        return [(c.t0, c.text) for c in r.recalled]
    lines = [(c.t0, without_frames(c.text)) for c in r.recalled]
    return [(t, text) for t, text in lines if text]


def answer_job(backend: Backend, view: ContextView, question: str, t: float, *, latest: tuple[float, str] | None,
               restate: bool, max_new_tokens: int, asked_at: float | None = None,
               no_repeat_ngram: int = 4) -> AnswerJob:
    """A question on top of a context view, ready to decode."""
    recalled = recalled_lines(backend, view, restate)
    chunk = prompts.question_chunk(backend, t, question, latest, recalled)
    return AnswerJob(backend, view, chunk, max_new_tokens, asked_at=time.monotonic() if asked_at is None else asked_at,
                     no_repeat_ngram=no_repeat_ngram, recalled=recalled)


def answer(backend: Backend, memory: HierarchicalMemory, question: str, t: float, *,
           latest: tuple[float, str] | None, restate: bool, max_new_tokens: int,
           no_repeat_ngram: int = 4) -> tuple[AnswerJob, ContextView]:
    """The whole recipe at once (no interleaving): retrieve, restate, decode to the end."""
    asked_at = time.monotonic()
    view = memory.context(question, t)
    job = answer_job(backend, view, question, t, latest=latest, restate=restate, max_new_tokens=max_new_tokens,
                     asked_at=asked_at, no_repeat_ngram=no_repeat_ngram)
    job.run()
    return job, view
