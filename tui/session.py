"""A live session for the TUI: the pipeline in background threads, events posted back to the app."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any


class LiveSession:
    def __init__(self, cfg, asks: list[tuple[float, str]]) -> None:
        from assistant.cli import build_session
        self.cfg = cfg
        self._post: Callable[[Any], None] | None = None
        self.built = build_session(cfg, asks, self._emit)      # bad input raises here, before the UI starts
        self.error: str | None = None
        self.summary: dict | None = None
        self._thread: threading.Thread | None = None

    def _emit(self, event: Any) -> None:
        if self._post is not None:
            self._post(event)

    def start(self, post: Callable[[Any], None]) -> None:
        self._post = post
        self._thread = threading.Thread(target=self._run, name="onlooker-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from assistant.cli import session_summary
        b = self.built
        try:
            result = b.pipeline.run()
            self.summary = session_summary(self.cfg, b, result)
            b.store.finish(b.session_id, json.dumps(self.summary))
            if result.error:
                self.error = result.error
                self._emit({"type": "session_error", "error": result.error})
            else:
                self._emit({"type": "session_ended", "summary": f"{self.summary['observations']} chunks, "
                            f"{self.summary['questions']} questions; session {b.session_id}"})
        except Exception as e:                  # the UI must learn of it, not freeze
            self.error = f"{type(e).__name__}: {e}"
            self._emit({"type": "session_error", "error": self.error})

    def submit(self, event: Any) -> None:
        self.built.runtime.submit(event)

    def status(self) -> dict:
        b = self.built
        return {**b.runtime.status, "source": self.cfg.source, "model": b.backend.name,
                "frames_dropped": b.pipeline.frames.num_dropped, "error": self.error, "mic_level": None}

    def latest_frame(self):
        return self.built.pipeline.latest_frame

    def frame_at(self, t: float):
        thumbs = self.built.pipeline.thumbnails
        return thumbs.get(int(t)) if thumbs else None

    def stop(self) -> None:
        self.built.pipeline.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
