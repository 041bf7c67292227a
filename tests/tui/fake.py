"""A session without a model: answers and results come back on another thread, like the real one."""

from __future__ import annotations

import threading

from assistant.events import Answer, AnswerToken, Command, Question, SegmentSealed, TranscriptEvent
from perception.synthetic import SyntheticScene
from reasoning.timing import Alert


class FakeSession:
    def __init__(self, fail_after_start: str | None = None) -> None:
        self.submitted: list = []
        self.post = None
        self.frame = SyntheticScene("short").render(0)
        self.stopped = False
        self.fail = fail_after_start
        self.error = None
        self._qid = 0

    def _later(self, *events) -> None:
        def send():
            for e in events:
                self.post(e)
        threading.Thread(target=send, daemon=True).start()

    def start(self, post) -> None:
        self.post = post
        events = [SegmentSealed(0.0, 4.0, '[0:00] Text on screen: "APPLE".', 12, 12, "host"),
                  SegmentSealed(4.0, 8.0, '[0:04] Text on screen: "RIVER".', 12, 12, "host"),
                  TranscriptEvent(5.0, 6.2, "The delivery is at noon.")]
        if self.fail:
            self.error = self.fail
            events.append({"type": "session_error", "error": self.fail})
        self._later(*events)

    def submit(self, event) -> None:
        self.submitted.append(event)
        if isinstance(event, Question):
            self._qid += 1
            q = self._qid
            self._later({"type": "question", "t": 9.0, "question": event.text},
                        AnswerToken(q, "The sign "), AnswerToken(q, "reads RIVER."),
                        Answer(q, 9.0, event.text, "The sign reads RIVER.", 120.0, 300.0))
        elif isinstance(event, Command) and event.kind == "search":
            self._later({"type": "search", "query": event.arg,
                         "results": [{"t0": 4.0, "t1": 8.0, "text": '[0:04] Text on screen: "RIVER".'}]})
        elif isinstance(event, Command):
            watches = [event.arg] if event.kind == "watch" else []
            self._later({"type": "command", "kind": event.kind, "arg": event.arg, "watches": watches,
                         "muted": event.kind == "mute"})
            if event.kind == "watch":
                self._later(Alert(10.0, event.arg, 'At 0:10: Text on screen: "STOP".', 0.9))

    def status(self) -> dict:
        return {"source": "synthetic:short", "model": "fake", "stream_t": 9.0, "ingest_fps": 1.0,
                "frames_dropped": 0, "kept_pct": None, "device_mb": 4.0, "host_mb": 1.0, "disk_mb": 0.0,
                "ttft_ms": 120.0, "state": "listening", "muted": False, "mic_level": None, "error": self.error}

    def latest_frame(self):
        return self.frame

    def frame_at(self, t):
        return self.frame

    def stop(self) -> None:
        self.stopped = True
