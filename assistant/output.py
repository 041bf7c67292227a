"""Where runtime events go: JSON lines (headless) or plain console lines (a terminal, until the TUI).

Printers are called on the runtime thread; a lock keeps lines whole."""

from __future__ import annotations

import json
import sys
import threading
from typing import Any, TextIO

from assistant.events import Answer, AnswerToken, ObservationEvent, SegmentSealed, TranscriptEvent
from reasoning.prompts import format_time
from reasoning.timing import Alert


def event_record(event: Any) -> dict | None:
    """The headless JSON shape of an event, or None if it is not printed."""
    if isinstance(event, ObservationEvent):
        return {"type": "observation", "t": round(event.t, 3), "text": event.text}
    if isinstance(event, Answer):
        return {"type": "answer", "t": round(event.t, 3), "question": event.question, "text": event.text,
                "ttft_ms": event.ttft_ms, "total_ms": event.total_ms}
    if isinstance(event, SegmentSealed):
        return {"type": "segment_sealed", "t0": round(event.t0, 3), "t1": round(event.t1, 3),
                "tokens": event.num_tokens, "kept_tokens": event.kept_tokens, "tier": event.tier}
    if isinstance(event, TranscriptEvent):
        return {"type": "transcript", "t0": round(event.t0, 3), "t1": round(event.t1, 3), "text": event.text}
    if isinstance(event, Alert):
        return {"type": "alert", "t": round(event.t, 3), "condition": event.condition, "text": event.text,
                "score": round(event.score, 3)}
    if isinstance(event, dict):
        return event
    return None


class JsonPrinter:
    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.lock = threading.Lock()
        self.records: list[dict] = []

    def __call__(self, event: Any) -> None:
        rec = event_record(event)
        if rec is None:
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
        rec = event_record(event)
        with self.lock:
            if rec is not None:
                self.records.append(rec)
            if isinstance(event, AnswerToken):
                if self._streaming != event.question_id:
                    self.out.write("  Onlooker: ")
                    self._streaming = event.question_id
                self.out.write(event.text)
            elif isinstance(event, Answer):
                if self._streaming != event.question_id:
                    self.out.write(f"  Onlooker: {event.text}")
                self.out.write(f"   ({event.ttft_ms:.0f} ms to first token)\n")
                self._streaming = None
            elif isinstance(event, Alert):
                self.out.write(f"[{format_time(event.t)}] ALERT ({event.condition}): {event.text}\n")
            elif isinstance(event, dict) and event.get("type") == "narration":
                self.out.write(f"[{format_time(event['t'])}] Onlooker: {event['text']}\n")
            elif isinstance(event, TranscriptEvent):
                self.out.write(f"[{format_time(event.t0)}] heard: {event.text}\n")
            elif isinstance(event, ObservationEvent):
                self.out.write(f"[{format_time(event.t)}] saw: {event.text}\n")
            elif isinstance(event, dict) and event.get("type") == "question":
                self.out.write(f"[{format_time(event['t'])}] you: {event['question']}\n")
            self.out.flush()
