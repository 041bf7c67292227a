"""A session without a model: event records come back on another thread, like the real one."""

from __future__ import annotations

import threading

from perception.synthetic import SyntheticScene


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
        events = [{"type": "segment_sealed", "t0": 0.0, "t1": 4.0, "text": '[0:00] Text on screen: "APPLE".'},
                  {"type": "segment_sealed", "t0": 4.0, "t1": 8.0, "text": '[0:04] Text on screen: "RIVER".'},
                  {"type": "transcript", "t0": 5.0, "t1": 6.2, "text": "The delivery is at noon."}]
        if self.fail:
            self.error = self.fail
            events.append({"type": "session_error", "error": self.fail})
        self._later(*events)

    def ask(self, text: str) -> None:
        self.submitted.append(("ask", text))
        self._qid += 1
        q = self._qid
        self._later({"type": "question", "t": 9.0, "question": text},
                    {"type": "token", "question_id": q, "text": "The sign "},
                    {"type": "token", "question_id": q, "text": "reads RIVER."},
                    {"type": "answer", "t": 9.0, "question": text, "text": "The sign reads RIVER.", "ttft_ms": 120.0,
                     "total_ms": 300.0})

    def command(self, kind: str, arg: str) -> None:
        self.submitted.append((kind, arg))
        if kind == "search":
            self._later({"type": "search", "query": arg,
                         "results": [{"t0": 4.0, "t1": 8.0, "text": '[0:04] Text on screen: "RIVER".'}]})
            return
        watches = [arg] if kind == "watch" else []
        self._later({"type": "command", "kind": kind, "arg": arg, "watches": watches, "muted": kind == "mute"})
        if kind == "watch":
            self._later({"type": "alert", "t": 10.0, "condition": arg, "text": 'At 0:10: Text on screen: "STOP".',
                         "score": 0.9})

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
