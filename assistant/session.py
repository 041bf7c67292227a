"""The one composition root: open a session (source, model, memory, runtime, threads, speech), run it,
close it, summarise it. Used by the CLI, the TUI (through assistant.live) and the benchmarks.

Opening raises SourceError / BackendError / StoreError / OcrMissingError on bad input, before any thread
starts; the CLI turns them into one line and exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assistant import retention
from assistant.config import AssistantConfig
from assistant.events import Question, Summary
from assistant.housekeeping import Housekeeper, pin_mmap_threshold
from assistant.runtime import Runtime
from assistant.speech_out import Speaker
from assistant.store import SessionStore, default_cache_dir, default_data_dir
from assistant.threads import Pipeline, PipelineResult
from memory.embed import load_embedder
from memory.manager import HierarchicalMemory
from model.backend import Backend
from model.loading import load_backend
from perception.lite import LitePerceiver
from perception.sources import Source, open_source
from perception.speech import Hearing

log = logging.getLogger("onlooker")


def notice(line: str) -> None:
    """One line for the user on stderr (audio off, speech off, ...)."""
    print(f"onlooker: {line}", file=sys.stderr)


@dataclass
class Session:
    cfg: AssistantConfig
    source: Source
    backend: Backend
    store: SessionStore
    session_id: str
    runtime: Runtime
    pipeline: Pipeline
    speaker: Speaker | None
    _closed: bool = False

    def run(self) -> PipelineResult:
        return self.pipeline.run()

    def summary(self, result: PipelineResult) -> dict:
        return {"session_id": self.session_id, "source": self.cfg.source, "model": self.backend.name,
                "frames_read": result.frames_read, "frames_sampled": result.frames_sampled,
                "frames_dropped": result.frames_dropped, "perception_skipped": result.perception_skipped,
                "stalls": self.source.stats.stalls,
                "reconnects": self.source.stats.reconnects, **self.runtime.summary(), "wall_s": result.wall_s,
                "interrupted": result.interrupted, "store_error": self.store.write_error,
                "error": result.error}

    def close(self, result: PipelineResult) -> Summary:
        """Store the summary, stop speech; idempotent. Returns the summary event."""
        summary = Summary(self.summary(result))
        if not self._closed:
            self._closed = True
            self.store.finish(self.session_id, json.dumps(summary.fields))
            if self.speaker is not None:
                self.speaker.close()
            if result.threads_alive:
                log.warning("threads still running at exit: %s", ", ".join(result.threads_alive))
        return summary

    def read_stdin_questions(self) -> None:
        def read() -> None:
            for line in sys.stdin:
                if line.strip():
                    self.runtime.submit(Question(None, line.strip()))

        threading.Thread(target=read, name="onlooker-stdin", daemon=True).start()
        notice("type a question and press Enter; Ctrl-C stops.")


def open_session(cfg: AssistantConfig, asks: list[tuple[float, str]], emit: Callable[[Any], None],
                 store: SessionStore | None = None, backend: Backend | None = None) -> Session:
    """Open the source, load the model (unless a built `backend` is given: the benchmarks' random-weight
    shapes), wire memory, runtime and threads (not started)."""
    source = open_source(cfg.source, cfg.perception)
    try:
        backend = backend or load_backend(cfg.model, cfg.device, default_cache_dir())
        beside_off = backend.accepts_frames and cfg.perception.beside_vlm == "off"
        perceiver = None if beside_off else LitePerceiver(cfg.perception)
        store = store or SessionStore(Path(cfg.data_dir) if cfg.data_dir else default_data_dir())
        retention.enforce(store, cfg.storage)
        session_id = store.start(cfg.source, backend.name, cfg.model)
    except BaseException:
        source.close()
        raise
    embedder = load_embedder() if cfg.memory.retrieval and cfg.memory.use_embeddings else None
    memory = HierarchicalMemory(backend, cfg.memory_for(backend.accepts_frames), embedder=embedder,
                                index=store.segment_index(session_id),
                                spill_dir=store.session_dir(session_id) / "kv")
    speaker = open_speaker() if cfg.speak else None
    runtime = Runtime(backend, memory, cfg.reasoning, emit, store, session_id, asks, visual=cfg.visual,
                      watches=cfg.watch, narrate=cfg.narrate, speaker=speaker,
                      live=source.live or cfg.perception.realtime)
    pin_mmap_threshold()
    keeper = Housekeeper(lambda: retention.enforce(store, cfg.storage, keep={session_id}), cfg.storage.check_every_s)
    runtime.housekeeping = (keeper.every_s, keeper)
    hearing = open_hearing(cfg, source) if cfg.audio else None
    pipeline = Pipeline(source, runtime, cfg.perception, perceiver, hearing=hearing)
    log.info("session %s: %s with %s", session_id, cfg.source, backend.name)
    return Session(cfg, source, backend, store, session_id, runtime, pipeline, speaker)


def open_hearing(cfg: AssistantConfig, source: Source) -> Hearing | None:
    """The hearing thread's source for this run, or None with one line saying why audio is off."""
    from perception.audio import AudioUnavailable, Microphone, blocks, decode_file
    from perception.speech import Transcriber, whisper_dir
    if cfg.source.startswith("synthetic:") and not cfg.audio_file:
        return None
    audio_in: Any
    try:
        if cfg.audio_file:
            audio_in, paced = blocks(decode_file(cfg.audio_file)), True
        elif source.live:
            audio_in, paced = Microphone(int(cfg.mic) if cfg.mic and cfg.mic.isdigit() else cfg.mic), False
        else:
            samples = decode_file(cfg.source)
            if not len(samples):
                return None
            audio_in, paced = blocks(samples), True
        transcriber = Transcriber(whisper_dir(default_cache_dir()))
    except AudioUnavailable as e:
        if "no audio track" not in str(e):
            notice(str(e) if str(e).startswith("audio is off") else f"audio is off: {e}")
        return None
    except (FileNotFoundError, ImportError) as e:
        notice(f"audio is off: speech recognition is not installed ({e}); run: onlooker download speech")
        return None
    return Hearing(audio_in, transcriber, paced_by_frames=paced)


def open_speaker() -> Speaker | None:
    """Speech output, or None with one line saying why it is off."""
    from assistant.speech_out import Player, Synthesizer
    from perception.audio import AudioUnavailable
    try:
        synth = Synthesizer()
        player = Player()
        player.open()
    except (AudioUnavailable, RuntimeError, OSError) as e:
        notice(f"speech output is off: {e}")
        return None
    return Speaker(synth, player).start()
