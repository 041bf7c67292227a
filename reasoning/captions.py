"""Captions at seal time (VLM path): the model writes one line about each sealed segment, decoded on a view
that holds only the sink and that segment, a few tokens per call so ingest and answers are never held up.
The caption joins the segment's index text (found by words and embeddings, shown by `sessions show`).

    seal -> offer(segment) -> queue (bounded; `caption_every_s` thins it) -> step() when the runtime has
    slack -> memory.add_text(segment, "Caption: ...")

Plain synchronous code, called by the runtime on its own thread.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from memory.manager import HierarchicalMemory
from memory.segments import Segment
from model.backend import Backend
from reasoning import prompts
from reasoning.answerer import AnswerJob
from reasoning.config import ReasoningConfig


@dataclass
class CaptionStats:
    written: int = 0
    skipped: int = 0              # queue full, or the segment's KV was gone before its turn
    decode_ms: float = 0.0        # model time spent on captions


class Captioner:
    def __init__(self, backend: Backend, memory: HierarchicalMemory, config: ReasoningConfig) -> None:
        self.backend, self.memory, self.config = backend, memory, config
        self.enabled = config.captions and backend.accepts_frames
        self.stats = CaptionStats()
        self._queue: deque[Segment] = deque()
        self._job: AnswerJob | None = None
        self._seg: Segment | None = None
        self._last_t = -math.inf

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._job is not None

    def offer(self, seg: Segment) -> None:
        """A segment was sealed; queue it for a caption if captions are on and it is due."""
        if not self.enabled or seg.t0 - self._last_t < self.config.caption_every_s:
            return
        self._last_t = seg.t0
        self._queue.append(seg)
        if len(self._queue) > self.config.caption_queue:
            self._queue.popleft()
            self.stats.skipped += 1

    def step(self, max_tokens: int) -> tuple[Segment, str] | None:
        """Decode a few caption tokens; returns (segment, caption) when one is finished."""
        start = time.monotonic()
        try:
            if self._job is None:
                while self._queue and self._job is None:
                    queued = self._queue.popleft()
                    view = self.memory.segment_view(queued)
                    if view is None:
                        self.stats.skipped += 1
                        continue
                    self._seg = queued
                    self._job = AnswerJob(self.backend, view, prompts.caption_chunk(self.backend, queued.t0,
                                                                                     queued.t1),
                                          self.config.caption_tokens)
                if self._job is None:
                    return None
            job, seg = self._job, self._seg
            assert seg is not None
            job.step(max_tokens)
            if not job.done:
                return None
            self._job = self._seg = None
            text = " ".join(job.text.strip().splitlines()[:1]).strip()
            if not text:
                self.stats.skipped += 1
                return None
            self.memory.add_text(seg, prompts.caption_note(text))
            self.stats.written += 1
            return seg, text
        finally:
            self.stats.decode_ms += (time.monotonic() - start) * 1000
