"""Every message that flows between threads: small `@dataclass(slots=True)` records with a monotonic `ts`.

    data     ObservationEvent, PerceptionEvent,        ordered; the runtime's data inbox is bounded and
             TranscriptEvent                           drops the oldest when the source is live (counted)
    control  Question, Command, SpeechStarted,         never dropped, never queued behind data: the
             StreamEnded, Shutdown                     runtime drains them first, every step
    out      QuestionStarted, AnswerToken, Answer,     from the runtime to the printers, the TUI and the
             Interrupted, SegmentSealed, Caption, Alert,        store; `assistant.output.to_record` gives each its
             Narration, SearchResults, CommandDone,    JSON-lines shape
             SessionEnded, SessionError, Summary
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from perception.observation import Observation


def _now() -> float:
    return time.monotonic()


# -- data ---------------------------------------------------------------------------------------------
@dataclass(slots=True)
class ObservationEvent:           # one sampled frame as perception saw it (the frame rides along for VLMs)
    observation: Observation
    repeat: bool = False          # nothing new against the previous observation (the lite path skips it)
    ts: float = field(default_factory=_now)

    @property
    def t(self) -> float:
        return self.observation.t


@dataclass(slots=True)
class PerceptionEvent:            # VLM path: the side perceiver's reading of a frame already sent on as pixels
    observation: Observation
    repeat: bool = False
    ts: float = field(default_factory=_now)

    @property
    def t(self) -> float:
        return self.observation.t


@dataclass(slots=True)
class TranscriptEvent:            # an utterance heard and written down (ASR)
    t0: float                     # stream time the speech started / ended
    t1: float
    text: str
    ts: float = field(default_factory=_now)


DATA_EVENTS = (ObservationEvent, PerceptionEvent, TranscriptEvent)


# -- control ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Question:
    t: float | None               # stream time it refers to; None = "now" (the runtime fills it in)
    text: str
    question_id: int = 0
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Command:                    # from the UI: watch | unwatch | search | mute
    kind: str
    arg: str = ""
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SpeechStarted:              # the user started speaking (VAD); barge-in if the assistant talks
    t: float
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class StreamEnded:                # the source is exhausted or failed
    error: str | None = None
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Shutdown:                   # stop now
    reason: str = ""
    ts: float = field(default_factory=_now)


CONTROL_EVENTS = (Question, Command, SpeechStarted, StreamEnded, Shutdown)


# -- out ----------------------------------------------------------------------------------------------
@dataclass(slots=True)
class QuestionStarted:            # a question's context is assembled and its answer starts decoding
    question_id: int
    t: float
    question: str
    context_tokens: int
    time_ref: str | None
    retrieved: list[tuple[float, float]]
    recalled_t: list[float]
    latest_observation_t: float | None
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
class Interrupted:                # barge-in cancelled the answer being decoded
    t: float
    question: str
    said: str
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
class Caption:                    # VLM path: the model's one line about a sealed segment
    t0: float
    t1: float
    text: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Alert:                      # a standing instruction fired
    t: float                      # stream time of the frame it was seen in
    condition: str
    text: str
    score: float
    source: str = "model"         # what decided: "perception" (evidence) or "model" (the yes/no probe alone)
    thumbnail: str | None = None  # path of a small JPEG of that frame (VLM path, stored sessions)
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Narration:                  # narration mode: new text read or the scene changed
    t: float
    text: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SearchResults:
    query: str
    results: list[tuple[float, float, str]]          # (t0, t1, text)
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class CommandDone:
    kind: str
    arg: str
    watches: list[str]
    muted: bool
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SessionEnded:
    summary: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class SessionError:
    error: str
    ts: float = field(default_factory=_now)


@dataclass(slots=True)
class Summary:                    # the last record of a session
    fields: dict[str, Any]
    ts: float = field(default_factory=_now)
