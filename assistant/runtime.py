"""The runtime: the one thread that owns the model and the KV cache.

`step()` is the whole loop body, callable directly from tests:

    drain inbox -> ingest at most one stream event -> start the next question if idle
                -> decode a few answer tokens -> emit

Ingest and decode alternate, so a long answer never holds up the stream: each answer decodes on a
fork of the memory taken when the question was asked, while new chunks keep landing in memory.
Scheduled questions (`--ask T:question`) fire once the stream passes T, before the first frame
later than T is ingested, so they see exactly the stream up to T.
"""

from __future__ import annotations

import logging
import queue
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assistant.events import (
    Answer,
    AnswerToken,
    Command,
    FrameEvent,
    ObservationEvent,
    Question,
    SegmentSealed,
    Shutdown,
    SpeechStarted,
    StreamEnded,
    TranscriptEvent,
)
from assistant.sessions import SessionStore
from memory.hierarchy import ContextView, HierarchicalMemory
from perception.visual import VisualConfig, VisualStream
from reasoning.answerer import AnswerJob
from reasoning.backends.base import Backend
from reasoning.config import ReasoningConfig
from reasoning.timing import TimingConfig, Watcher

log = logging.getLogger("onlooker.runtime")


@dataclass
class RuntimeStats:
    frames_sampled: int = 0        # stream events seen (one per sampled frame)
    observations: int = 0          # chunks ingested into memory
    repeats: int = 0               # sampled frames whose observation repeated the previous one
    segments_sealed: int = 0
    questions: int = 0
    ingest_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    answer_ms: list[float] = field(default_factory=list)
    max_ingest_wait_ms: float = 0.0   # longest a stream event waited in the inbox behind other work
    max_ingest_stall_answering_ms: float = 0.0   # the same, for events that arrived while an answer was decoding
    alerts: int = 0
    transcripts: int = 0
    barge_ins: int = 0
    probe_ms: list[float] = field(default_factory=list)


def question_record(q: Question, context: ContextView, latest: tuple[float, str] | None,
                    recalled: list[tuple[float, str]]) -> dict:
    r = context.retrieval
    return {"type": "question", "t": round(q.t, 3), "question": q.text, "context_tokens": context.num_tokens,
            "time_ref": None if r is None or r.time_ref is None else r.time_ref.kind,
            "retrieved": [[round(s.t0, 3), round(s.t1, 3)] for s in context.placed],
            "recalled_t": [round(t, 3) for t, _ in recalled],
            "latest_observation_t": latest[0] if latest and not recalled else None}


def memory_summary(memory: HierarchicalMemory) -> dict:
    st = memory.stats
    return {"tokens_in_memory": memory.num_tokens, "device_kv_bytes": memory.device_bytes(),
            "device_peak_kv_bytes": st.device_peak_bytes, "host_kv_bytes": st.host_bytes,
            "disk_kv_bytes": st.disk_bytes, "segments_spilled": st.segments_spilled,
            "segments_dropped": st.segments_dropped, "segment_read_errors": st.segment_read_errors,
            "tokens_pruned": st.tokens_pruned, "oom_window_shrinks": st.oom_shrinks}


def visual_summary(visual: VisualStream) -> dict:
    st = visual.stats
    return {"visual_groups": st.groups, "vit_groups": st.vit_groups, "vit_reused_groups": st.reused_groups,
            "visual_tokens_kept_pct": round(100 * st.kept_fraction, 1)}


class Runtime:
    def __init__(self, backend: Backend, memory: HierarchicalMemory, config: ReasoningConfig,
                 emit: Callable[[Any], None], store: SessionStore | None = None, session_id: str | None = None,
                 asks: list[tuple[float, str]] | None = None, visual: VisualConfig | None = None,
                 watches: list[str] | None = None, timing: TimingConfig | None = None, narrate: bool = False,
                 speaker=None) -> None:
        self.backend = backend
        self.memory = memory
        self.config = config
        self.emit = emit
        self.store = store
        self.session_id = session_id
        self.inbox: queue.Queue = queue.Queue()
        self.stats = RuntimeStats()
        self.stream_t = 0.0
        self.stream_ended = False
        self.error: str | None = None
        self.shutdown = False
        self._stream_events: deque = deque()
        # each waiting question holds the memory as it was when asked (a free fork), so frames ingested
        # while it waits behind another answer do not leak into it
        self._questions: deque[tuple[Question, ContextView, tuple[float, str] | None]] = deque()
        self._scheduled = sorted(asks or [], key=lambda a: a[0])
        self._next_question_id = 1
        self._job: AnswerJob | None = None
        self._job_question: Question | None = None
        self._latest_obs: tuple[float, str] | None = None
        self.visual = VisualStream(backend, visual) if backend.accepts_frames else None
        self.watcher = Watcher(backend, timing)
        for w in watches or []:
            self.watcher.add(w)
        self.narrate = narrate
        self.speaker = speaker                 # assistant.speech_out.Speaker, or None (silent)
        self.muted = False
        self.status: dict = {}
        self._status_at = 0.0
        self._ingest_times: deque[float] = deque(maxlen=30)
        self._splitter = None
        self._last_text: str | None = None
        self.memory.set_sink(backend.system_chunk())

    # -- called from other threads ------------------------------------------------------------
    def submit(self, event: Any) -> None:
        self.inbox.put(event)

    # -- the loop body ------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        if self.shutdown:
            return True
        return (self.stream_ended and not self._stream_events and not self._scheduled and not self._questions
                and self._job is None and self.inbox.empty() and (self.visual is None or not self.visual.pending))

    def step(self, timeout: float = 0.0) -> bool:
        """One turn; returns True if it did any work. Waits up to `timeout` for an event when idle."""
        busy = bool(self._stream_events or self._questions or self._job)
        self._drain(0.0 if busy else timeout)
        did = False
        if self._stream_events:
            self._ingest(self._stream_events.popleft())
            did = True
        elif self.stream_ended and self.visual is not None and self.visual.pending:
            self._append_chunks(self.visual.flush())        # frames still waiting for their pair
            did = True
        elif self.stream_ended and self._scheduled:
            self._fire_scheduled(float("inf"))
        if self._job is None and self._questions:
            self._start_answer(*self._questions.popleft())
        if self._job is not None:
            self._decode()
            did = True
        now = time.monotonic()
        if now - self._status_at >= 0.2:
            self._status_at = now
            self.status = self._status()
        return did

    def _status(self) -> dict:
        """A snapshot for the UI, made on this thread (the UI never calls into the runtime)."""
        st, ms = self.stats, self.memory.stats
        n = len(self._ingest_times)
        fps = (n - 1) / (self._ingest_times[-1] - self._ingest_times[0]) if n > 1 and \
            self._ingest_times[-1] > self._ingest_times[0] else 0.0
        state = "speaking" if self.speaker is not None and self.speaker.state == "speaking" else \
            ("thinking" if self._job is not None else "listening")
        return {"stream_t": self.stream_t, "ingest_fps": fps, "device_mb": self.memory.device_bytes() / 2**20,
                "host_mb": ms.host_bytes / 2**20, "disk_mb": ms.disk_bytes / 2**20,
                "kept_pct": 100 * self.visual.stats.kept_fraction if self.visual is not None else None,
                "ttft_ms": st.ttft_ms[-1] if st.ttft_ms else None, "state": state,
                "watches": [w.condition for w in self.watcher.watches], "muted": self.muted,
                "segments": ms.segments_sealed + len(self.memory.window)}

    def run(self) -> None:
        while not self.finished:
            self.step(timeout=0.05)
        self.close()

    def close(self) -> None:
        """Seal what is left in the window and write every segment to disk (stored sessions)."""
        for seg in self.memory.flush(self.stream_t):
            self._sealed(seg)

    # -- internals ----------------------------------------------------------------------------
    def _drain(self, timeout: float) -> None:
        try:
            event = self.inbox.get(timeout=timeout) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self._accept(event)
            try:
                event = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _accept(self, event: Any) -> None:
        if isinstance(event, (FrameEvent, ObservationEvent, TranscriptEvent)):
            self._stream_events.append(event)
        elif isinstance(event, Question):
            self.ask(event.text, event.t)
        elif isinstance(event, SpeechStarted):
            self._barge_in(event)
        elif isinstance(event, Command):
            self._command(event)
        elif isinstance(event, StreamEnded):
            self.stream_ended = True
            self.error = event.error
        elif isinstance(event, Shutdown):
            self.shutdown = True
        else:
            raise TypeError(f"runtime cannot take {type(event).__name__}")

    def ask(self, text: str, t: float | None = None) -> Question:
        q = Question(self.stream_t if t is None else t, text, self._next_question_id)
        self._next_question_id += 1
        latest = self._latest_obs if self._latest_obs and self._latest_obs[0] <= q.t else None
        self._questions.append((q, self.memory.context(q.text, q.t), latest))
        self.stats.questions += 1
        return q

    def _fire_scheduled(self, before_t: float) -> None:
        while self._scheduled and self._scheduled[0][0] < before_t:
            t, text = self._scheduled.pop(0)
            self.ask(text, t)

    def _ingest(self, event: FrameEvent | ObservationEvent | TranscriptEvent) -> None:
        if isinstance(event, TranscriptEvent):
            self._hear(event)
            return
        t = event.frame.t if isinstance(event, FrameEvent) else event.t
        self._fire_scheduled(t)   # questions for times before this frame see the stream up to them
        waited = (time.monotonic() - event.ts) * 1000
        self.stats.max_ingest_wait_ms = max(self.stats.max_ingest_wait_ms, waited)
        if self._job is not None:
            self.stats.max_ingest_stall_answering_ms = max(self.stats.max_ingest_stall_answering_ms, waited)
        self.stats.frames_sampled += 1
        self._ingest_times.append(time.monotonic())
        self.stream_t = t
        if isinstance(event, ObservationEvent):
            if event.text is None:
                self.stats.repeats += 1
                return
            chunk = self.backend.observation_chunk(t, event.text)
            self._latest_obs = (t, event.text)
            self.emit(event)
            self._append_chunks([chunk])
            self._narrate(t, event)
            self._watch(t, event.text)
        else:
            assert self.visual is not None
            chunks = self.visual.push(event.frame.image, t)
            self._append_chunks(chunks)
            if chunks:
                self._watch(t, chunks[-1].text)

    def _command(self, cmd: Command) -> None:
        if cmd.kind == "watch":
            self.watcher.add(cmd.arg)
        elif cmd.kind == "unwatch":
            self.watcher.remove(cmd.arg or None)
        elif cmd.kind == "mute":
            self.muted = not self.muted
            if self.muted and self.speaker is not None:
                self.speaker.interrupt()
        elif cmd.kind == "search":
            self.emit({"type": "search", "query": cmd.arg, "results": self.search(cmd.arg)})
            return
        else:
            raise ValueError(f"unknown command {cmd.kind!r}")
        self.emit({"type": "command", "kind": cmd.kind, "arg": cmd.arg,
                   "watches": [w.condition for w in self.watcher.watches], "muted": self.muted})

    def search(self, text: str, k: int = 5) -> list[dict]:
        """Segments (sealed and in the window) best matching `text`, by time reference or content."""
        from memory.retrieval import retrieve
        cands = self.memory.candidates()
        embed = None
        if self.memory.embedder is not None:
            embed = lambda q: self.memory.embedder.encode([q])[0]   # noqa: E731
        r = retrieve(text, self.stream_t, cands, query=None, embed=embed, top_k=k, max_tokens=10**9)
        by_key = {c.key: c for c in cands}
        order = [c.key for c in r.recalled] + [key for sig in r.scores.values() for key in sig[:k]]
        seen, out = set(), []
        for key in order:
            if key not in seen and len(out) < k:
                seen.add(key)
                c = by_key[key]
                out.append({"t0": round(c.t0, 3), "t1": round(c.t1, 3), "text": c.text})
        return out

    def _barge_in(self, event: SpeechStarted) -> None:
        """The user started talking: stop speaking now and cancel the answer being decoded."""
        speaking = self.speaker is not None and self.speaker.state == "speaking"
        if not speaking and self._job is None:
            return
        if self.speaker is not None:
            self.speaker.interrupt()
        if self._job is not None and self._job_question is not None:
            self.emit({"type": "interrupted", "t": round(event.t, 3), "question": self._job_question.text,
                       "said": self._job.text.strip()})
            self._job = self._job_question = None
            self._splitter = None
        self.stats.barge_ins += 1

    def _speak(self, text: str, final: bool = False) -> None:
        if self.speaker is None or self.muted:
            return
        from assistant.speech_out import SentenceSplitter
        if self._splitter is None:
            self._splitter = SentenceSplitter()
        for sentence in self._splitter.feed(text) + (self._splitter.flush() if final else []):
            self.speaker.say(sentence)
        if final:
            self._splitter = None

    def _hear(self, event: TranscriptEvent) -> None:
        """What was said goes into memory like an observation; said to the assistant, it is also a question."""
        from perception.speech import addressed_question
        self._fire_scheduled(event.t1)
        self.stream_t = max(self.stream_t, event.t1)
        self.stats.transcripts += 1
        self.emit(event)
        self._append_chunks([self.backend.observation_chunk(event.t0, f'Heard: "{event.text}"')])
        question = addressed_question(event.text)
        if question:
            self.ask(question, event.t1)

    def _watch(self, t: float, observation: str) -> None:
        if not self.watcher.watches:
            return
        start = time.monotonic()
        alerts = self.watcher.update(t, observation, self.memory.context)
        self.stats.probe_ms.append((time.monotonic() - start) * 1000)
        for alert in alerts:
            self.stats.alerts += 1
            self.emit(alert)
            if self.speaker is not None and not self.muted:
                self.speaker.say(f"Heads up: {alert.text}")
            if self.store is not None and self.session_id is not None:
                self.store.add_alert(self.session_id, alert.t, alert.condition, alert.text)

    def _narrate(self, t: float, event: ObservationEvent) -> None:
        """Narration mode: say so when new text is read or the scene changes."""
        if not self.narrate or event.text is None:
            return
        text = event.text.split('"')[1] if event.text.count('"') >= 2 else None
        if (text and text != self._last_text) or event.scene_change >= 0.5:
            self.emit({"type": "narration", "t": round(t, 3), "text": f"Now: {event.text}"})
        if text:
            self._last_text = text

    def _append_chunks(self, chunks: list) -> None:
        for chunk in chunks:
            start = time.monotonic()
            result = self.memory.append(chunk)
            self.stats.ingest_ms.append((time.monotonic() - start) * 1000)
            self.stats.observations += 1
            for seg in result.sealed:
                self._sealed(seg)

    def _sealed(self, seg) -> None:
        self.stats.segments_sealed += 1
        self.emit(SegmentSealed(seg.t0, seg.t1, seg.text, seg.num_tokens, seg.kept_tokens, seg.tier))

    def _start_answer(self, q: Question, context: ContextView, latest: tuple[float, str] | None) -> None:
        r = context.retrieval
        # text observations are restated beside the question; a frame has no text worth repeating
        restate = self.memory.config.restate and not self.backend.accepts_frames
        recalled = [(c.t0, c.text) for c in r.recalled] if r is not None and restate else []
        chunk = self.backend.question_chunk(q.t, q.text, latest, recalled)
        self._job = AnswerJob(self.backend, context, chunk, self.config.max_new_tokens, asked_at=q.ts)
        self._job_question = q
        self.emit(question_record(q, context, latest, recalled))

    def _decode(self) -> None:
        assert self._job is not None and self._job_question is not None
        job, q = self._job, self._job_question
        piece = job.step(self.config.decode_tokens_per_step)
        if piece:
            self.emit(AnswerToken(q.question_id, piece))
        self._speak(piece, final=job.done)
        if job.done:
            text = job.text.strip()
            ttft, total = job.ttft_ms or 0.0, job.total_ms or 0.0
            self.stats.ttft_ms.append(ttft)
            self.stats.answer_ms.append(total)
            self.emit(Answer(q.question_id, q.t, q.text, text, round(ttft, 1), round(total, 1)))
            if self.store is not None and self.session_id is not None:
                self.store.add_answer(self.session_id, q.t, q.text, text, ttft, total)
            self._job = self._job_question = None

    def summary(self) -> dict:
        def med(xs: list[float]) -> float | None:
            return round(statistics.median(xs), 1) if xs else None

        s = self.stats
        return {
            "frames_sampled": s.frames_sampled,
            "observations": s.observations,
            "repeats_skipped": s.repeats,
            "segments_sealed": s.segments_sealed,
            **memory_summary(self.memory),
            **({} if self.visual is None else visual_summary(self.visual)),
            "questions": s.questions,
            "ttft_ms_median": med(s.ttft_ms),
            "ttft_ms_max": round(max(s.ttft_ms), 1) if s.ttft_ms else None,
            "answer_ms_median": med(s.answer_ms),
            "ingest_ms_median": med(s.ingest_ms),
            "max_ingest_wait_ms": round(s.max_ingest_wait_ms, 1),
            "max_ingest_stall_answering_ms": round(s.max_ingest_stall_answering_ms, 1),
            "alerts": s.alerts, "probe_ms_median": med(s.probe_ms), "transcripts": s.transcripts,
            "barge_ins": s.barge_ins,
            "stream_t": round(self.stream_t, 3),
        }
