"""`python -m bench.recording`: how long `onlooker run --source FILE --fast` takes to index a long recording.

The ingest-speed issue's item 7: the product's own command, timed end to end, on a recording of `--minutes` of
stream. Builds what it needs inside `--work` (default: a temporary folder, removed afterwards):

    model/           the Qwen2.5-VL-7B (`--size 7b`) or Qwen3-VL-8B architecture with random weights, saved with the
                     tokenizer (`--tokenizer`, default the lite model's), as `onlooker run --model DIR` loads it
    recording-*.mp4  the benchmark's frames (tests/data videos and the synthetic signs scene, as `bench ingest`
                     uses) at 448x448, looped to `--minutes` at 2 frames per second (mp4v)

(a kept `--work` folder reuses them), then runs `onlooker run --source recording-*.mp4 --fast --fps 2 --model model
--device DEVICE --headless` in a child process and reports its wall time (the model load included, and separately
without it from the session's summary), the frames it indexed and the segments it sealed. The target in the issue
is 30 s for 60 minutes at 2 frames/s on one H200. `--size tiny` runs the same on a CPU in a minute
(tests/unit/test_bench_recording.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchError


def write_recording(path: Path, minutes: float, fps: float, size: int) -> int:
    """The benchmark's frames at `size`x`size`, looped to `minutes` of video at `fps`; the frame count."""
    import cv2

    from bench.ingest_feed import MEDIA, load_frames
    media = sorted(MEDIA.glob("*.mp4"))
    frames, _ = load_frames(media, fps)
    frames = [cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames]
    n = int(round(minutes * 60 * fps))
    out = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), fps, (size, size))
    if not out.isOpened():
        raise BenchError(f"OpenCV cannot write {path} (mp4v)")
    try:
        for i in range(n):
            out.write(frames[i % len(frames)])
    finally:
        out.release()
    return n


def save_model(path: Path, size: str, device: str, tokenizer: Path) -> str:
    """The architecture with random weights, saved with its tokenizer; its name."""
    from bench.ingest_shapes import build_backend
    backend = build_backend(size, device, tokenizer)
    backend.model.save_pretrained(path)
    backend.tokenizer.save_pretrained(path)
    name = backend.name
    del backend
    return name


# the session summary's times of the runtime thread, by part (`run` says what each is)
THREAD_PARTS = ("ingest_s", "visual_s", "segment_write_s", "checkpoint_write_s", "index_write_s", "embed_s",
                "landing_wait_s", "mask_wait_s")


def run(args: argparse.Namespace, work: Path) -> dict:
    from bench.ingest import default_tokenizer
    tok = Path(args.tokenizer) if args.tokenizer else default_tokenizer()
    t0 = time.perf_counter()
    made = work / "model" / "bench-recording.json"          # what a kept --work folder already holds
    if made.exists() and json.loads(made.read_text()).get("size") == args.size:
        name = json.loads(made.read_text())["name"]
    else:
        name = save_model(work / "model", args.size, args.device, tok)
        made.write_text(json.dumps({"size": args.size, "name": name}))
    t1 = time.perf_counter()
    video = work / f"recording-{args.minutes:g}min-{args.frame}px.mp4"
    frames = int(round(args.minutes * 60 * 2.0))
    if not video.exists():
        frames = write_recording(video, args.minutes, 2.0, args.frame)
    t2 = time.perf_counter()
    print(f"model ready in {t1 - t0:.1f} s, recording of {frames} frames ready in {t2 - t1:.1f} s", file=sys.stderr)
    cmd = [sys.executable, "-m", "assistant.cli", "run", "--source", str(video), "--fast",
           "--fps", "2", "--model", str(work / "model"), "--device", args.device, "--headless", "--no-audio"]
    if args.beside:
        cmd += ["--perceive-beside", args.beside]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    env = dict(os.environ, HF_HUB_OFFLINE="1", ONLOOKER_DATA_DIR=str(work / "data"))
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout_s)
    wall = time.perf_counter() - start
    summary = next((json.loads(line) for line in proc.stdout.splitlines()
                    if line.startswith("{") and '"type": "summary"' in line), None)
    if proc.returncode != 0 or summary is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BenchError(f"onlooker run exited {proc.returncode}: {' | '.join(tail)}")
    return {"model": name, "device": args.device, "beside": args.beside or "auto", "config": args.config,
            "minutes": args.minutes,
            "frames_in_file": frames,
            "frames_sampled": summary.get("frames_sampled"), "segments_sealed": summary.get("segments_sealed"),
            "stream_s": summary.get("stream_t"), "session_wall_s": summary.get("wall_s"), "command_wall_s": wall,
            "frames_per_s": (summary.get("frames_sampled") or 0) / max(summary.get("wall_s") or wall, 1e-9),
            # the runtime thread's time by part (the session summary): memory appends (prefill, sealing, landing and
            # the writes below), the visual stream, segment files, index rows, text embeddings; checkpoint files are
            # written on memory.landing's helper threads on a GPU; of those parts, the time blocked on segments
            # still landing and on keep masks still on their way to the host
            **{k: summary.get(k) for k in THREAD_PARTS},
            # the visual stream: tower runs, pairs that reused the last features, visual tokens kept
            **{k: summary.get(k) for k in ("vit_groups", "vit_reused_groups", "visual_tokens_kept_pct")},
            "error": summary.get("error"), "command": " ".join(cmd[1:])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.recording", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["7b", "8b", "tiny", "tiny3"], default="7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--minutes", type=float, default=60.0, help="length of the recording (2 frames per second)")
    p.add_argument("--frame", type=int, default=448, help="frame side in pixels")
    p.add_argument("--tokenizer", help="a ChatML tokenizer directory (default: the lite model's)")
    p.add_argument("--work", help="keep the model and the recording in this folder (default: a temporary one)")
    p.add_argument("--beside", choices=["auto", "latest", "every", "off"],
                   help="the run's --perceive-beside (default: the product's, auto)")
    p.add_argument("--config", help="the run's --config (a TOML file of settings, e.g. [visual] compile_vision = true)")
    p.add_argument("--timeout-s", type=float, default=3600.0)
    p.add_argument("--out", help="append the result as a JSON line to this file")
    args = p.parse_args(argv)
    if not args.minutes > 0:
        raise BenchError("--minutes must be > 0")
    if args.config and not Path(args.config).is_file():
        raise BenchError(f"--config {args.config} is not a file")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="onlooker-recording-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        row = run(args, work)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("| model | perception beside | recording | frames indexed | segments sealed | session wall s | "
          "command wall s (model load included) | frames/s |\n|---|---|---|---|---|---|---|---|\n"
          f"| {row['model']} on {row['device']} | {row['beside']} | {row['minutes']:g} min | "
          f"{row['frames_sampled']} | {row['segments_sealed']} | {row['session_wall_s']:.1f} | "
          f"{row['command_wall_s']:.1f} | {row['frames_per_s']:.1f} |")
    print("runtime thread: " + ", ".join(f"{k} {row[k]}" for k in THREAD_PARTS), file=sys.stderr)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench recording: {e}", file=sys.stderr)
        sys.exit(2)
