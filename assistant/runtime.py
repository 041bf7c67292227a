"""The runtime: the one thread that owns the model and the KV cache.

`step()` is the whole loop body, callable directly from tests:

    drain control (never dropped, never behind data) -> ingest at most one data event
        -> start the next question if idle -> decode a few answer tokens -> emit

Ingest and decode alternate, so a long answer never holds up the stream: each answer decodes on a fork of
the memory taken when the question was asked, while new chunks keep landing in memory. Scheduled questions
(`--ask T:question`) fire once the stream passes T, before the first frame later than T is ingested, with the
pairs still waiting for their batch ingested first, so they see the stream up to T. The data inbox is bounded:
a live source's oldest frame is dropped (counted), else producers wait. `housekeeping` (retention) runs here."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from assistant import events as ev
from assistant.queues import DataInbox
from assistant.runtime_stats import RuntimeStats, runtime_summary
from assistant.speech_out import SentenceSplitter, Speaker
from assistant.store import SessionStore
from memory.manager import ContextView, HierarchicalMemory
from model.backend import Backend
from model.chunk import Chunk, format_time
from perception.observation import Observation
from perception.speech import addressed_question
from perception.visual import VisualConfig, VisualStream
from reasoning import prompts
from reasoning.answerer import AnswerJob, answer_job
from reasoning.captions import Captioner
from reasoning.config import ReasoningConfig
from reasoning.timing import TimingConfig, Watcher

log = logging.getLogger("onlooker.runtime")

Emit = Callable[[Any], None]


class Runtime:
    def __init__(self, backend: Backend, memory: HierarchicalMemory, config: ReasoningConfig, emit: Emit,
                 store: SessionStore | None = None, session_id: str | None = None,
                 asks: list[tuple[float, str]] | None = None, visual: VisualConfig | None = None,
                 watches: list[str] | None = None, timing: TimingConfig | None = None, narrate: bool = False,
                 speaker: Speaker | None = None, live: bool = False, max_data: int = 64) -> None:
        self.backend = backend
        self.memory = memory
        self.config = config
        self.emit = emit
        self.store = store
        self.session_id = session_id
        self.control: queue.Queue[Any] = queue.Queue()
        self.data = DataInbox(max_data, drop_oldest=live,
                              droppable=lambda e: isinstance(e, ev.ObservationEvent))
        self.stats = RuntimeStats()
        self.stream_t, self.stream_ended = 0.0, False
        self.error: str | None = None
        self.shutdown = False
        self._thread_id: int | None = None       # set while run() owns a thread
        # each waiting question holds the memory as it was when asked (a free fork), so frames ingested
        # while it waits behind another answer do not leak into it
        self._questions: deque[tuple[ev.Question, ContextView, tuple[float, str] | None]] = deque()
        self._scheduled = sorted(asks or [], key=lambda a: a[0])
        self._next_question_id = 1
        self._job: AnswerJob | None = None
        self._job_question: ev.Question | None = None
        self._latest_obs: tuple[float, str] | None = None
        self.visual = VisualStream(backend, visual) if backend.accepts_frames else None
        timing = timing or TimingConfig(probe_on=config.probe_on, probe_off=config.probe_off,
                                        cooldown_s=config.cooldown_s)
        self.watcher = Watcher(backend, timing)
        self.captioner = Captioner(backend, memory, config)
        self._beside: Observation | None = None      # VLM path: the newest observation from the perceivers beside it
        for w in watches or []:
            self.watcher.add(w)
        self.narrate, self.speaker = narrate, speaker
        self.muted, self.status, self._house_stream_t = False, {}, 0.0
        self._status_at = self._house_at = time.monotonic()
        self.housekeeping: tuple[float, Callable[[], Any]] | None = None   # (every s of wall or stream, fn)
        self._ingest_times: deque[float] = deque(maxlen=30)
        self._splitter: SentenceSplitter | None = None
        self._last_text: str | None = None
        self.memory.set_sink(prompts.system_chunk(backend))

    # -- called from other threads ------------------------------------------------------------
    def submit(self, event: Any) -> None:
        """Hand an event to the runtime. Control events are never dropped; data may wait or be dropped."""
        if isinstance(event, ev.DATA_EVENTS):
            other_thread = self._thread_id is not None and threading.get_ident() != self._thread_id
            self.data.put(event, block=other_thread)
        elif isinstance(event, ev.CONTROL_EVENTS):
            self.control.put(event)
        else:
            raise TypeError(f"runtime cannot take {type(event).__name__}")

    # -- the loop body ------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        if self.shutdown:
            return True
        return (self.stream_ended and not len(self.data) and not self._scheduled and not self._questions
                and self._job is None and self.control.empty() and (self.visual is None or not self.visual.pending)
                and not self.captioner.busy)

    def step(self, timeout: float = 0.0) -> bool:
        """One turn; returns True if it did any work. Waits up to `timeout` for an event when idle."""
        busy = bool(len(self.data) or self._questions or self._job)
        self._drain_control(0.0 if busy else timeout)
        did = False
        event = None if self.shutdown else self.data.get_nowait()
        if event is not None:
            self._ingest(event)
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
        elif event is None and self.captioner.busy:          # slack: nothing to ingest, no answer decoding
            self._caption()
            did = True
        now = time.monotonic()
        if now - self._status_at >= 0.2:
            self._status_at, self.status = now, self._status()
        if self.housekeeping is not None and max(now - self._house_at, self.stream_t - self._house_stream_t) \
                >= self.housekeeping[0]:                  # a fast replay churns per stream second, as live does
            self._house_at, self._house_stream_t = now, self.stream_t
            self.housekeeping[1]()
        return did

    def _status(self) -> dict:
        """A snapshot for the UI, made on this thread (the UI never calls into the runtime)."""
        st, ms = self.stats, self.memory.stats
        times = self._ingest_times
        span = times[-1] - times[0] if len(times) > 1 else 0.0
        state = self.speaker.state if self.speaker is not None else ("thinking" if self._job else "listening")
        return {"stream_t": self.stream_t, "ingest_fps": (len(times) - 1) / span if span > 0 else 0.0,
                "device_mb": self.memory.device_bytes() / 2**20,
                "host_mb": ms.host_bytes / 2**20, "disk_mb": ms.disk_bytes / 2**20,
                "kept_pct": 100 * self.visual.stats.kept_fraction if self.visual is not None else None,
                "ttft_ms": st.ttft_ms[-1] if st.ttft_ms else None, "state": state,
                "watches": [w.condition for w in self.watcher.watches], "muted": self.muted,
                "segments": ms.segments_sealed + len(self.memory.window),
                "frames_dropped_behind": self.data.num_dropped}

    def run(self) -> None:
        self._thread_id = threading.get_ident()
        try:
            while not self.finished:
                self.step(timeout=0.05)
            self.close()
        finally:
            self.data.close()
            self._thread_id = None

    def close(self) -> None:
        """Seal what is left in the window and write every segment to disk (stored sessions)."""
        for seg in self.memory.flush(self.stream_t):
            self._sealed(seg)

    def summary(self) -> dict:
        return runtime_summary(self.stats, self.memory, self.visual, self.stream_t, self.data.num_dropped,
                               self.captioner.stats if self.captioner.enabled else None)

    # -- control ------------------------------------------------------------------------------
    def _drain_control(self, timeout: float) -> None:
        try:
            event = self.control.get(timeout=timeout) if timeout > 0 and not len(self.data) else \
                self.control.get_nowait()
        except queue.Empty:
            return
        while True:
            self._control(event)
            try:
                event = self.control.get_nowait()
            except queue.Empty:
                return

    def _control(self, event: Any) -> None:
        if isinstance(event, ev.Question):
            self.ask(event.text, event.t)
        elif isinstance(event, ev.SpeechStarted):
            self._barge_in(event)
        elif isinstance(event, ev.Command):
            self._command(event)
        elif isinstance(event, ev.StreamEnded):
            self.stream_ended = True
            self.error = event.error
        elif isinstance(event, ev.Shutdown):
            self.shutdown = True

    def ask(self, text: str, t: float | None = None) -> ev.Question:
        q = ev.Question(self.stream_t if t is None else t, text, self._next_question_id)
        assert q.t is not None
        self._next_question_id += 1
        latest = self._latest_obs if self._latest_obs and self._latest_obs[0] <= q.t else None
        if self.visual is not None:           # pairs waiting for their batch (a GPU replay) join memory first
            self._append_chunks(self.visual.drain())
        self._questions.append((q, self.memory.context(q.text, q.t), latest))
        self.stats.questions += 1
        return q

    def _fire_scheduled(self, before_t: float) -> None:
        while self._scheduled and self._scheduled[0][0] < before_t:
            t, text = self._scheduled.pop(0)
            self.ask(text, t)

    def _command(self, cmd: ev.Command) -> None:
        if cmd.kind == "watch":
            self.watcher.add(cmd.arg)
        elif cmd.kind == "unwatch":
            self.watcher.remove(cmd.arg or None)
        elif cmd.kind == "mute":
            self.muted = not self.muted
            if self.muted and self.speaker is not None:
                self.speaker.interrupt()
        elif cmd.kind == "search":
            hits = self.memory.search(cmd.arg, self.stream_t)
            self.emit(ev.SearchResults(cmd.arg, [(h.t0, h.t1, h.text) for h in hits]))
            return
        else:
            log.warning("unknown command %r ignored", cmd.kind)
            return
        self.emit(ev.CommandDone(cmd.kind, cmd.arg, [w.condition for w in self.watcher.watches], self.muted))

    def _barge_in(self, event: ev.SpeechStarted) -> None:
        """The user started talking: stop speaking now and cancel the answer being decoded."""
        interrupted = self.speaker.interrupt() if self.speaker is not None else False
        if self._job is not None and self._job_question is not None:
            self.emit(ev.Interrupted(event.t, self._job_question.text, self._job.text.strip()))
            self._job = self._job_question = None
            self._splitter = None
            interrupted = True
        if interrupted:
            self.stats.barge_ins += 1

    # -- data ---------------------------------------------------------------------------------
    def _ingest(self, event: Any) -> None:
        if isinstance(event, ev.TranscriptEvent):
            self._hear(event)
            return
        if isinstance(event, ev.PerceptionEvent):
            self._perceived(event)
            return
        obs: Observation = event.observation
        t = obs.t
        self._fire_scheduled(t)   # questions for times before this frame see the stream up to them
        waited = (time.monotonic() - event.ts) * 1000
        self.stats.max_ingest_wait_ms = max(self.stats.max_ingest_wait_ms, waited)
        if self._job is not None:
            self.stats.max_ingest_stall_answering_ms = max(self.stats.max_ingest_stall_answering_ms, waited)
        self.stats.frames_sampled += 1
        self._ingest_times.append(time.monotonic())
        self.stream_t = t
        if self.visual is not None:                      # the VLM path: the frame itself goes into memory
            chunks = self.stats.timed("visual_s", self.visual.push, obs.image, t, obs.prepared)
            self._append_chunks(chunks)
            if chunks:
                beside = self._beside
                fresh = beside is not None and t - beside.t <= self.config.evidence_max_age_s
                self._watch(t, beside if fresh else None, obs.image)
            return
        if event.repeat:
            self.stats.repeats += 1
            return
        sentence = prompts.observation_sentence(obs)
        self._latest_obs = (t, sentence)
        self.emit(event)
        self._append_chunks([prompts.observation_chunk(self.backend, obs)])
        self._narrate(obs, sentence)
        self._watch(t, obs)

    def _perceived(self, event: ev.PerceptionEvent) -> None:
        """VLM path: what the perceivers beside the model read in a frame already in memory. It joins the
        segment's index text, is the watcher's evidence, and is narrated; the model's KV is not touched."""
        obs = event.observation
        self._beside = obs
        if event.repeat:
            self.stats.repeats += 1
            return
        sentence = prompts.observation_sentence(obs)
        self._latest_obs = (obs.t, sentence)
        self.memory.annotate(obs.t, prompts.perception_note(obs))
        self.emit(event)
        self._narrate(obs, sentence)

    def _hear(self, event: ev.TranscriptEvent) -> None:
        """What was said goes into memory like an observation; said to the assistant, it is also a question."""
        self._fire_scheduled(event.t1)
        self.stream_t = max(self.stream_t, event.t1)
        self.stats.transcripts += 1
        self.emit(event)
        self._append_chunks([prompts.heard_chunk(self.backend, event.t0, event.text)])
        question = addressed_question(event.text)
        if question:
            self.ask(question, event.t1)

    def _watch(self, t: float, obs: Observation | None, image: Any = None) -> None:
        if not self.watcher.watches:
            return
        start = time.monotonic()
        fired = self.watcher.update(t, obs, self.memory.context)
        self.stats.probe_ms.append((time.monotonic() - start) * 1000)
        for f in fired:
            seen = prompts.observation_sentence(obs) if obs is not None and f.evidence is not None else \
                f"the model judged this true: {f.condition}"
            thumb = None
            if image is not None and self.store is not None and self.session_id is not None:
                thumb = self.store.save_thumbnail(self.session_id, f.t, image)
            alert = ev.Alert(f.t, f.condition, f"At {format_time(f.t)}: {seen}", f.score,
                             "model" if f.evidence is None else "perception", thumb)
            self.stats.alerts += 1
            self.emit(alert)
            if self.speaker is not None and not self.muted:
                self.speaker.say(f"Heads up: {alert.text}")
            if self.store is not None and self.session_id is not None:
                self.store.add_alert(self.session_id, alert.t, alert.condition, alert.text, thumb)

    def _narrate(self, obs: Observation, sentence: str) -> None:
        """Narration mode: say so when new text is read or the scene changes."""
        if not self.narrate:
            return
        if (obs.text and obs.text != self._last_text) or obs.changed:
            self.emit(ev.Narration(obs.t, f"Now: {sentence}"))
        if obs.text:
            self._last_text = obs.text

    def _append_chunks(self, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        start, result = time.monotonic(), self.memory.append_all(chunks)        # one prefill for all of them
        self.stats.ingest_ms.append((time.monotonic() - start) * 1000)
        self.stats.observations += len(chunks)
        for seg in result.sealed:
            self._sealed(seg)

    def _sealed(self, seg: Any) -> None:
        self.stats.segments_sealed += 1
        self.emit(ev.SegmentSealed(seg.t0, seg.t1, seg.text, seg.num_tokens, seg.kept_tokens, seg.tier))
        self.captioner.offer(seg)

    def _caption(self) -> None:
        done = self.captioner.step(self.config.decode_tokens_per_step)
        if done is not None:
            seg, text = done
            self.emit(ev.Caption(seg.t0, seg.t1, text))

    # -- answers ------------------------------------------------------------------------------
    def _start_answer(self, q: ev.Question, context: ContextView, latest: tuple[float, str] | None) -> None:
        assert q.t is not None
        job = answer_job(self.backend, context, q.text, q.t, latest=latest, restate=self.memory.config.restate,
                         asked_at=q.ts, **self.config.decoding())
        self._job, self._job_question = job, q
        r = context.retrieval
        self.emit(ev.QuestionStarted(q.question_id, q.t, q.text, context.num_tokens,
                                     None if r is None or r.time_ref is None else r.time_ref.kind,
                                     [(s.t0, s.t1) for s in context.placed], [t for t, _ in job.recalled],
                                     latest[0] if latest and not job.recalled else None))
        if self.speaker is not None and not self.muted:
            self.speaker.begin_answer()

    def _speak(self, text: str, final: bool = False) -> None:
        if self.speaker is None or self.muted:
            return
        if self._splitter is None:
            self._splitter = SentenceSplitter()
        for sentence in self._splitter.feed(text) + (self._splitter.flush() if final else []):
            self.speaker.say(sentence)
        if final:
            self._splitter = None
            self.speaker.end_answer()

    def _decode(self) -> None:
        assert self._job is not None and self._job_question is not None
        job, q = self._job, self._job_question
        piece = job.step(self.config.decode_tokens_per_step)
        if piece:
            self.emit(ev.AnswerToken(q.question_id, piece))
        self._speak(piece, final=job.done)
        if job.done:
            assert q.t is not None
            text = job.text.strip()
            ttft, total = job.ttft_ms or 0.0, job.total_ms or 0.0
            self.stats.ttft_ms.append(ttft)
            self.stats.answer_ms.append(total)
            self.emit(ev.Answer(q.question_id, q.t, q.text, text, round(ttft, 1), round(total, 1)))
            if self.store is not None and self.session_id is not None:
                self.store.add_answer(self.session_id, q.t, q.text, text, ttft, total)
            self._job = self._job_question = None
