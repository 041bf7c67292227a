"""Every message that flows between threads. Small records, each with a monotonic `ts`.

Data events (frames, observations) are ordered and may be dropped under load (counted); control
events (StreamEnded, Shutdown) are never dropped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


def _now() -> float:
    return time.monotonic()


@dataclass(slots=True)
class FrameEvent:                 # a sampled frame, for backends that take frames (VLM)
    frame: Any                    # perception.sources.VideoFrame
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class ObservationEvent:           # lite perception's verdict on one sampled frame
    t: float                      # stream time of the frame
    text: str | None              # None: nothing new (repeat of the previous observation)
    scene_change: float = 0.0
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class TranscriptEvent:            # an utterance heard and written down (ASR)
    t0: float                     # stream time the speech started / ended
    t1: float
    text: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Question:
    t: float | None               # stream time it refers to; None = "now" (the runtime fills it in)
    text: str
    question_id: int = 0
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class AnswerToken:
    question_id: int
    text: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Answer:
    question_id: int
    t: float
    question: str
    text: str
    ttft_ms: float
    total_ms: float
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SegmentSealed:              # a segment left the recent window: its KV went to host RAM (or disk)
    t0: float
    t1: float
    text: str
    num_tokens: int
    kept_tokens: int
    tier: str                     # where its KV is now: host | disk | dropped
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SpeechStarted:              # control: the user started speaking (VAD); barge-in if the assistant talks
    t: float
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Command:                    # control from the UI: watch | unwatch | search | mute
    kind: str
    arg: str = ""
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class StreamEnded:                # control: the source is exhausted or failed
    error: str | None = None
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Shutdown:                   # control: stop now
    reason: str = ""
    ts: float = field(default_factory=_now)

