"""A live session for the TUI (it satisfies tui.protocol.SessionView): the session runs in a background
thread; every event goes to the app as its record."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from assistant.config import AssistantConfig
from assistant.events import Command, Question, SessionEnded, SessionError
from assistant.output import to_record
from assistant.session import Session, open_session


class LiveSession:
    def __init__(self, cfg: AssistantConfig, asks: list[tuple[float, str]]) -> None:
        self.cfg = cfg
        self._post: Callable[[dict[str, Any]], None] | None = None
        self.session: Session = open_session(cfg, asks, self._emit)   # bad input raises here, before the UI
        self.error: str | None = None
        self.summary: dict | None = None
        self._thread: threading.Thread | None = None

    def _emit(self, event: Any) -> None:
        rec = to_record(event)
        if self._post is not None and rec is not None:
            self._post(rec)

    def start(self, post: Callable[[dict[str, Any]], None]) -> None:
        self._post = post
        self._thread = threading.Thread(target=self._run, name="onlooker-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        s = self.session
        try:
            result = s.run()
            self.summary = s.close(result).fields
            if result.error:
                self.error = result.error
                self._emit(SessionError(result.error))
            else:
                self._emit(SessionEnded(f"{self.summary['observations']} chunks, {self.summary['questions']} "
                                        f"questions; session {s.session_id}"))
        except Exception as e:                  # the UI must learn of it, not freeze
            self.error = f"{type(e).__name__}: {e}"
            self._emit(SessionError(self.error))

    def ask(self, text: str) -> None:
        self.session.runtime.submit(Question(None, text))

    def command(self, kind: str, arg: str) -> None:
        self.session.runtime.submit(Command(kind, arg))

    def status(self) -> dict:
        s = self.session
        return {**s.runtime.status, "source": self.cfg.source, "model": s.backend.name,
                "frames_dropped": s.pipeline.frames.num_dropped, "error": self.error,
                "mic_level": s.pipeline.mic_level}

    def latest_frame(self) -> Any:
        return self.session.pipeline.latest_frame

    def frame_at(self, t: float) -> Any:
        return self.session.pipeline.thumbnails.get(int(t))

    def stop(self) -> None:
        self.session.pipeline.stop()
        if self._thread is not None:
            self._thread.join(timeout=10)
