"""The session's threads: capture -> frame queue -> perception -> runtime; hearing beside them.

    capture  : source.frames() -> sample -> pace -> FrameQueue (drops oldest when live; blocks with --fast)
    perceive : FrameQueue -> LitePerceiver (when there is one) -> typed Observation, the frame riding along
               -> runtime.submit(ObservationEvent). On the VLM path the frame goes on at once, and a
    beside   : thread runs the lite perceivers on it (the newest frame when it is behind, or every frame),
               in a child process of their own (assistant.perceiver_process) so they never hold the GIL
               -> runtime.submit(PerceptionEvent): text for the index, evidence for alerts, narration
    hear     : audio blocks (the file's audio track, paced by the frames; or the microphone) -> VAD -> ASR
               -> runtime.submit(TranscriptEvent); speech starting while the assistant talks is barge-in
    runtime  : Runtime.run(), the only thread that owns the model and its cache

Capture and perception never touch torch. Every thread is named, tracked, and joined with a bounded wait
on shutdown, but the runtime thread, whose last work (sealing and writing what is left) is waited for.
A source failure ends the stream with its one-line error; the end of a live source ends the session even
while the microphone is on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from assistant.events import ObservationEvent, PerceptionEvent, Shutdown, SpeechStarted, StreamEnded, TranscriptEvent
from assistant.perceiver_process import PerceiverProcessError, ProcessPerceiver
from assistant.queues import CLOSED, FrameQueue
from assistant.runtime import Runtime
from model.backend import launching_thread
from perception.config import PerceptionConfig
from perception.lite import LitePerceiver
from perception.observation import Observation
from perception.sources import Clock, RealClock, Source, SourceError, pace, sample
from perception.speech import Hearing
from perception.visual import FramePrep

log = logging.getLogger("onlooker.pipeline")


@dataclass
class PipelineResult:
    error: str | None
    frames_read: int
    frames_sampled: int
    frames_dropped: int
    wall_s: float
    perception_skipped: int = 0          # VLM path, "latest": frames the perceiver beside it never saw
    threads_alive: list[str] = field(default_factory=list)
    interrupted: bool = False


class Pipeline:
    def __init__(self, source: Source, runtime: Runtime, config: PerceptionConfig,
                 perceiver: LitePerceiver | None, clock: Clock | None = None, hearing: Hearing | None = None) -> None:
        self.source = source
        self.runtime = runtime
        self.config = config
        self.perceiver = perceiver
        self.clock = clock or RealClock()
        # live sources drop the oldest frame under load; files/synthetic with --fast never drop
        self.frames = FrameQueue(config.frame_queue, drop_oldest=source.live or config.realtime)
        self._stop = threading.Event()
        self._hearing_stop = threading.Event()   # set with _stop, or when a live source ends
        self._runtime_done = threading.Event()
        self._error: str | None = None
        self._frames_sampled = 0
        self._threads: list[threading.Thread] = []
        self.hearing = hearing
        # the VLM path's perceiver beside the model: a queue of one that keeps the newest frame ("latest"),
        # or a bounded queue that makes the frames wait for perception ("every")
        self.beside: FrameQueue | None = None
        if perceiver is not None and runtime.backend.accepts_frames:
            mode = config.beside_vlm
            if mode == "auto":
                mode = "latest" if source.live or config.realtime else "every"
            self.beside = FrameQueue(1 if mode == "latest" else config.frame_queue, drop_oldest=mode == "latest")
        # the VLM path: frame groups are patchified here, on the perception thread, not on the runtime's
        self._prep = FramePrep(runtime.backend, runtime.visual.config) if runtime.visual is not None else None
        self._stream_t = 0.0                     # latest sampled frame's stream time (paces a file's audio)
        self._capture_done = threading.Event()
        self.latest_frame: np.ndarray | None = None   # for a UI preview: the newest sampled frame
        self.thumbnails: dict[int, np.ndarray] = {}   # whole stream second -> a small copy of its first frame
        self.mic_level: float | None = None      # RMS of the last audio block, 0..1 (None: not hearing)
        self._producers = 1 + (hearing is not None) + (self.beside is not None)
        self._producers_lock = threading.Lock()
        self.interrupted = False

    def _producer_done(self) -> None:
        """The stream ends when both the frames and the audio are through."""
        with self._producers_lock:
            self._producers -= 1
            last = self._producers == 0
        if last:
            self.runtime.submit(StreamEnded(self._error))

    def _capture(self) -> None:
        try:
            for frame in pace(sample(self.source.frames(), self.config.sample_fps), self.clock,
                              self.config.realtime and not self.source.live):
                if self._stop.is_set():
                    break
                self._frames_sampled += 1
                self._stream_t = frame.t
                self.latest_frame = frame.image
                sec = int(frame.t)
                if sec not in self.thumbnails and len(self.thumbnails) < 7200:
                    self.thumbnails[sec] = cv2.resize(frame.image, (48, 27), interpolation=cv2.INTER_AREA)
                self.frames.put(frame)
        except SourceError as e:
            self._error = str(e)
        except Exception as e:  # a capture bug must still end the stream, with its reason
            log.exception("capture failed")
            self._error = f"capture failed: {e}"
        finally:
            self._capture_done.set()
            if self.source.live:               # the microphone must not keep a dead stream's session open
                self._hearing_stop.set()
            self.source.close()
            self.frames.close()

    def _perceive(self) -> None:
        try:
            while True:
                frame = self.frames.get(timeout=0.5)
                if frame is CLOSED or self._stop.is_set():
                    break
                if frame is None:
                    continue
                if self._prep is not None:                   # pixels go on now; perception follows beside
                    prepared = self._prep.take(frame.image, frame.t)
                    self.runtime.submit(ObservationEvent(Observation(frame.t, perceived=False, image=frame.image,
                                                                     prepared=prepared)))
                    if self.beside is not None:
                        self.beside.put(frame)
                    continue
                if self.perceiver is None:
                    obs, repeat = Observation(frame.t, perceived=False), False
                else:
                    obs, repeat = self.perceiver.process(frame)
                self.runtime.submit(ObservationEvent(obs, repeat))
        except Exception as e:
            log.exception("perception failed")
            self._error = self._error or f"perception failed: {e}"
        finally:
            if self.beside is not None:
                self.beside.close()
            self._producer_done()

    def _perceive_beside(self) -> None:
        assert self.beside is not None and self.perceiver is not None
        perceiver: LitePerceiver | ProcessPerceiver = self.perceiver
        try:
            if self.config.beside_process:
                try:
                    perceiver = ProcessPerceiver(self.config)
                except PerceiverProcessError as e:
                    log.warning("perception beside the model runs on a thread (%s)", e)
            while True:
                frame = self.beside.get(timeout=0.5)
                if frame is CLOSED or self._stop.is_set():
                    break
                if frame is not None:
                    obs, repeat = perceiver.process(frame)
                    self.runtime.submit(PerceptionEvent(obs, repeat))
        except Exception as e:            # perception beside a VLM is help, not the stream: the frames go on
            log.warning("perception beside the model is off from here on: %s", e)
        finally:
            if isinstance(perceiver, ProcessPerceiver):
                perceiver.close()
            self._producer_done()

    def _hear(self) -> None:
        h = self.hearing
        assert h is not None
        try:
            for block in h.blocks(self._hearing_stop):
                if h.paced_by_frames:      # a file's audio never runs ahead of its frames
                    while block.t > self._stream_t + 0.5 and not self._capture_done.is_set() \
                            and not self._hearing_stop.is_set():
                        time.sleep(0.01)
                if self._hearing_stop.is_set():
                    break
                self.mic_level = min(1.0, float(np.sqrt(np.mean(block.samples ** 2))) * 4) if len(block.samples) \
                    else 0.0
                for kind, payload in h.feed(block):
                    if kind == "start":
                        speaker = self.runtime.speaker
                        if speaker is not None:
                            speaker.interrupt()            # here, not on the runtime thread: < 200 ms
                        self.runtime.submit(SpeechStarted(payload))
                    else:
                        t0, t1, text = payload
                        self.runtime.submit(TranscriptEvent(t0, t1, text))
        except Exception as e:
            log.warning("audio is off from here on: %s", e)
        finally:
            self.mic_level = None
            self._producer_done()

    def _run_runtime(self) -> None:
        try:
            launching_thread(self.runtime.backend.device)
            self.runtime.run()
        except Exception as e:
            log.exception("runtime failed")
            self._error = self._error or f"runtime failed: {type(e).__name__}: {e}"
            self._stop.set()
            self._hearing_stop.set()
            self.frames.close()
        finally:
            self._runtime_done.set()

    def run(self) -> PipelineResult:
        start = time.monotonic()
        targets: list[tuple[Any, str]] = [(self._capture, "capture"), (self._perceive, "perceive"),
                                          (self._run_runtime, "runtime")]
        if self.hearing is not None:
            targets.append((self._hear, "hear"))
        if self.beside is not None:
            targets.append((self._perceive_beside, "beside"))
        self._threads = [threading.Thread(target=fn, name=f"onlooker-{name}", daemon=True) for fn, name in targets]
        for th in self._threads:
            th.start()
        try:
            while not self._runtime_done.wait(0.2):
                pass
        except KeyboardInterrupt:
            log.warning("interrupted; stopping")
            self.interrupted = True
            self.stop()
        return self._finish(start)

    def stop(self) -> None:
        self._stop.set()
        self._hearing_stop.set()
        self.frames.close()
        if self.beside is not None:
            self.beside.close()
        self.runtime.data.close()
        self.runtime.submit(Shutdown("stop"))

    def _wait_for_runtime(self, quiet_s: float = 3.0) -> None:
        """The runtime thread seals what is left in memory and writes it (bounded work): wait for it, since a
        process leaving while it runs loses those segments (and aborts inside torch). A second Ctrl-C leaves
        them unsaved. Waits on an event, not Thread.join: a Ctrl-C inside join() on Python 3.11 can mark a
        thread that still runs as stopped."""
        waited, told = 0.0, False
        try:
            while self._threads and not self._runtime_done.wait(0.2):
                waited += 0.2
                if waited >= quiet_s and not told:
                    told = True
                    log.warning("saving what is left in memory; Ctrl-C again leaves it unsaved")
        except KeyboardInterrupt:
            log.warning("interrupted again: what is left in memory may go unsaved")

    def _finish(self, start: float) -> PipelineResult:
        self._stop.set()
        self._hearing_stop.set()
        self.frames.close()
        if self.beside is not None:
            self.beside.close()
        self.runtime.data.close()
        self._wait_for_runtime()
        for th in self._threads:
            th.join(timeout=5.0)
        skipped = self.beside.num_dropped if self.beside is not None else 0
        alive = [th.name for th in self._threads if th.is_alive() and th is not self._threads[2]]
        if self._threads and not self._runtime_done.is_set():
            alive.append(self._threads[2].name)
        return PipelineResult(self._error, self.source.stats.frames_read, self._frames_sampled,
                              self.frames.num_dropped, round(time.monotonic() - start, 3), skipped, alive,
                              self.interrupted)
