"""Where runtime events go: JSON lines (headless) or plain console lines. `to_record` is the one JSON shape
of every event (the TUI reads the same records).

Printers are called on the runtime thread; a lock keeps lines whole."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

from assistant import events as ev
from model.chunk import format_time
from reasoning.prompts import observation_sentence


def _r(x: float) -> float:
    return round(x, 3)


def to_record(event: Any) -> dict | None:
    """The JSON-lines shape of an event, or None if it is not printed."""
    match event:
        case ev.ObservationEvent(observation=o, repeat=False) | ev.PerceptionEvent(observation=o, repeat=False):
            return {"type": "observation", "t": _r(o.t), "text": observation_sentence(o) if o.perceived else None,
                    "people": o.people, "faces": o.faces}
        case ev.QuestionStarted():
            return {"type": "question", "t": _r(event.t), "question": event.question,
                    "context_tokens": event.context_tokens, "time_ref": event.time_ref,
                    "retrieved": [[_r(a), _r(b)] for a, b in event.retrieved],
                    "recalled_t": [_r(t) for t in event.recalled_t],
                    "latest_observation_t": event.latest_observation_t}
        case ev.AnswerToken():
            return {"type": "token", "question_id": event.question_id, "text": event.text}
        case ev.Answer():
            return {"type": "answer", "t": _r(event.t), "question": event.question, "text": event.text,
                    "ttft_ms": event.ttft_ms, "total_ms": event.total_ms}
        case ev.Interrupted():
            return {"type": "interrupted", "t": _r(event.t), "question": event.question, "said": event.said}
        case ev.SegmentSealed():
            return {"type": "segment_sealed", "t0": _r(event.t0), "t1": _r(event.t1), "text": event.text,
                    "tokens": event.num_tokens, "kept_tokens": event.kept_tokens, "tier": event.tier}
        case ev.TranscriptEvent():
            return {"type": "transcript", "t0": _r(event.t0), "t1": _r(event.t1), "text": event.text}
        case ev.Caption():
            return {"type": "caption", "t0": _r(event.t0), "t1": _r(event.t1), "text": event.text}
        case ev.Alert():
            return {"type": "alert", "t": _r(event.t), "condition": event.condition, "text": event.text,
                    "score": round(event.score, 3), "source": event.source, "thumbnail": event.thumbnail}
        case ev.Narration():
            return {"type": "narration", "t": _r(event.t), "text": event.text}
        case ev.SearchResults():
            return {"type": "search", "query": event.query,
                    "results": [{"t0": _r(a), "t1": _r(b), "text": text} for a, b, text in event.results]}
        case ev.CommandDone():
            return {"type": "command", "kind": event.kind, "arg": event.arg, "watches": event.watches,
                    "muted": event.muted}
        case ev.SessionEnded():
            return {"type": "session_ended", "summary": event.summary}
        case ev.SessionError():
            return {"type": "session_error", "error": event.error}
        case ev.Summary():
            return {"type": "summary", **event.fields}
    return None


_QUIET = {"token"}          # streamed to the UI, not written as JSON lines


class JsonPrinter:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.records: list[dict] = []

    def __call__(self, event: Any) -> None:
        rec = to_record(event)
        if rec is None or rec["type"] in _QUIET:
            return
        with self.lock:
            self.records.append(rec)
            self.out.write(json.dumps(rec) + "\n")
            self.out.flush()


class ConsolePrinter:
    """Human-readable lines; answer tokens stream as they come."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.records: list[dict] = []
        self._streaming: int | None = None

    def __call__(self, event: Any) -> None:
        rec = to_record(event)
        with self.lock:
            if rec is not None and rec["type"] not in _QUIET:
                self.records.append(rec)
            line = self._line(event)
            if line:
                self.out.write(line)
            self.out.flush()

    def _line(self, event: Any) -> str:
        match event:
            case ev.AnswerToken():
                head = "" if self._streaming == event.question_id else "  Onlooker: "
                self._streaming = event.question_id
                return head + event.text
            case ev.Answer():
                head = "" if self._streaming == event.question_id else f"  Onlooker: {event.text}"
                self._streaming = None
                return f"{head}   ({event.ttft_ms:.0f} ms to first token)\n"
            case ev.Alert():
                return f"[{format_time(event.t)}] ALERT ({event.condition}): {event.text}\n"
            case ev.Narration():
                return f"[{format_time(event.t)}] Onlooker: {event.text}\n"
            case ev.TranscriptEvent():
                return f"[{format_time(event.t0)}] heard: {event.text}\n"
            case ev.ObservationEvent(observation=o, repeat=False) | ev.PerceptionEvent(observation=o, repeat=False) \
                    if o.perceived:
                return f"[{format_time(o.t)}] saw: {observation_sentence(o)}\n"
            case ev.QuestionStarted():
                return f"[{format_time(event.t)}] you: {event.question}\n"
            case ev.SearchResults():
                hits = "; ".join(f"{format_time(a)}-{format_time(b)} {text}" for a, b, text in event.results)
                return f"search {event.query!r}: {hits or 'nothing found'}\n"
        return ""
