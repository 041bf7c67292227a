"""`onlooker bench ingest`: how fast a VLM takes a stream in, and what that costs in GPU memory.

The full-size Qwen2.5-VL-7B architecture (`--size 8b`: Qwen3-VL-8B) with random weights (speed does not depend
on weight values; nothing is downloaded), bf16, SDPA attention (flash-attn when it is installed). Frames: the
sample videos of tests/data and the synthetic scene, sampled at 2 frames per second of stream time and looped;
the stream is simulated as fast as the GPU allows. A thread prepares the pairs inside the timed loop, as the
runtime's perception thread does (resize to 448x448, patchify, pinned memory; bench/ingest_feed.py;
`--pre-patchify` does it before the clock instead). The table measures the whole path: preparing, vision
tower, token drop, LM prefill, memory.

    transformers   plain transformers as a user would write it: one forward per pair with pixel_values_videos
               and a growing DynamicCache (bench/ingest_baseline.py): until out of memory or its time cap
    naive      growing full KV cache through Onlooker's path, no eviction, no pruning
    window     sink + recent window only, no pruning (StreamingVLM-style)
    onlooker   token drop + ViT feature reuse + hierarchical memory (sealed segments int8 on the host)
    onlooker+perception   the same, with the lite perceivers (OCR, people, faces, scene change) beside it as
               on the VLM path (a thread feeding a child process the newest frame whenever it is free);
               what they read is annotated into memory on the loop's thread, as the runtime does
    onlooker+captions     the same, with a caption decoded for every sealed segment right after it is sealed
               (in the loop, so frames/s carries the cost; a live run captions only when it has slack); random
               weights never stop early, every caption runs its whole token budget (an upper bound)
    onlooker-tf-vision    onlooker with transformers' own tower attention (model/vision_attention.py off)
    onlooker-tf-lm        onlooker with transformers' own language-model forward (model/fast_lm.py off)
    onlooker+compiled-lm  onlooker with the lean language-model forward's layers under torch.compile
    onlooker-eager-lm     onlooker with the lean forward's layers launched eagerly (no CUDA graphs at all; the
               default graphs only questions and decode steps, model.lm_graphs.SMALL)
    onlooker+lm-graphs    onlooker with every prefill size graphed (model.lm_graphs.BUCKETS)
    onlooker+int4         onlooker with sealed segments in int4 (MemoryConfig.quantize_bits = 4) instead of int8
    onlooker+int4+keep45  the same, 45% of each sealed segment's tokens kept (keep_ratio 0.45, by value norm): the
               setting for 2 GB per stream-hour on the 7B; what it costs answers: bench.tiny_vl_path

Reports sustained frames/s, visual tokens kept per frame, GPU memory after 1, 10 and 60 minutes of stream,
TTFT of a question after the stream, and model FLOP utilisation against the measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.common import BenchError, gpu_gb, measure_matmul_peak, positive_int, sync, write_rows
from bench.ingest_baseline import run_transformers
from bench.ingest_beside import Beside
from bench.ingest_feed import MEDIA, Feed, Prepared, load_frames
from bench.ingest_profile import profile
from bench.ingest_report import MARKS_S, format_medians, format_table
from bench.ingest_shapes import FRAME, SIZES, build_backend
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from model.qwen_vl import attention_for
from perception.visual import VisualConfig, VisualStream
from reasoning import prompts
from reasoning.answerer import answer_job

log = logging.getLogger("onlooker.bench")
WARM_MINUTES = 2.0        # of stream, each configuration before the clock: past its first seals
CONFIGS = ("transformers", "naive", "window", "onlooker", "onlooker+perception", "onlooker+captions",
           "onlooker-tf-vision", "onlooker-tf-lm", "onlooker+compiled-lm", "onlooker-eager-lm", "onlooker+int4",
           "onlooker+int4+keep45", "onlooker+lm-graphs")


@contextlib.contextmanager
def lm_forward(backend, name: str):
    """The language-model forward a configuration runs: transformers' own, the lean one compiled, the lean one
    without CUDA graphs, or the lean one with them (the default)."""
    if name == "onlooker-tf-lm":
        with backend.transformers_forward():
            yield
        return
    compiled = name == "onlooker+compiled-lm" and not backend.fast.compiled     # (--compile-lm: all configs)
    graphs = backend.fast.graphs
    if compiled:
        backend.fast.compile(True)
    if name == "onlooker-eager-lm":
        backend.fast.graphs = None
    if name == "onlooker+lm-graphs":                 # every prefill size graphed, captured before the clock
        from model.lm_graphs import BUCKETS
        backend.fast.use_graphs(True, buckets=BUCKETS)
        backend.warm_lm_graphs()
    try:
        yield
    finally:
        backend.fast.graphs = graphs
        if name == "onlooker+lm-graphs" and torch.cuda.is_available():
            torch.cuda.empty_cache()
        if compiled:
            backend.fast.compile(False)


def run_config(name: str, backend, feed_factory, *, minutes: float, fps: float, device: str, window: int,
               batch: int, wall_cap_s: float, param_counts: tuple[int, int], max_wall_s: float = 1e9,
               frames: list[np.ndarray] | None = None, beside_factory=None, questions: int = 3,
               pipeline: bool = True, per_batch: bool = True, full: bool = False, tower_stream: bool = False) -> dict:
    from model import vision_attention
    from perception.sources import VideoFrame
    from reasoning.captions import Captioner
    from reasoning.config import ReasoningConfig
    naive = name == "naive"
    onl = name.startswith("onlooker")
    vision_attention.set_batched(backend.model.model.visual, name != "onlooker-tf-vision")
    mcfg = MemoryConfig(window_tokens=10**9 if naive else window, retrieval=onl, use_embeddings=False,
                        quantize=onl, retain=onl, host_mb=64_000, shrink_on_oom=not naive, segment_seconds=4.0,
                        segment_tokens=4096, quantize_bits=4 if name.startswith("onlooker+int4") else 8,
                        keep_ratio=0.45 if name == "onlooker+int4+keep45" else 1.0)
    vcfg = VisualConfig(batch_groups=batch, pipeline=pipeline, pad_batches=full, fill_batches=full,
                        tower_stream=tower_stream,
                        **({} if onl else {"drop_threshold": 1.0, "reuse_threshold": 0.0}))
    mem = HierarchicalMemory(backend, mcfg, label=name)
    vs = VisualStream(backend, vcfg)

    def prefills(chunks: list) -> list[list]:        # one LM prefill per batch, or one per chunk (to compare)
        return ([chunks] if chunks else []) if per_batch else [[c] for c in chunks]
    mem.set_sink(prompts.system_chunk(backend))
    beside = beside_factory() if beside_factory else Beside() if name == "onlooker+perception" else None
    captioner = Captioner(backend, mem, ReasoningConfig(captions=True)) if name == "onlooker+captions" else None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    vit_params, lm_params = param_counts
    hidden = backend.num_heads * backend.head_dim
    feed = feed_factory()
    n_groups = int(minutes * 60 * fps / 2)
    group_s = 2 / fps
    marks: dict[int, float | None] = {m: None for m in MARKS_S if m <= minutes * 60}
    lm_flops = 0.0
    oom_at = None
    stream_t = 0.0
    last_times: list[float] | None = None
    sync(device)
    start, cpu_start = time.perf_counter(), time.thread_time()
    bar = tqdm(range(n_groups), desc=f"{name}", unit="pair", file=sys.stderr, mininterval=5)
    for g in bar:
        patches, grid = feed.get(g)
        patches_per_group = int(patches.shape[0])
        t0 = g * group_s
        if beside is not None and frames is not None:
            k = (2 * g) % len(frames)
            beside.queue.put(VideoFrame(frames[k], t0, time.time(), k))
            while beside.out:
                obs = beside.out.popleft()
                mem.annotate(obs.t, prompts.perception_note(obs))
        try:
            t1 = t0 + group_s / 2                   # the feed's reuse check is against the pair handed over before
            hint = (feed.change, last_times) if feed.change is not None and last_times is not None else None
            last_times = [t0, t1]
            for part in prefills(vs.push_group(patches, grid, t0, t1, change=hint)):
                ctx, n = mem.num_tokens, sum(c.num_tokens for c in part)
                sealed = mem.append_all(part).sealed
                lm_flops += 2 * lm_params * n + 4 * backend.num_layers * hidden * n * (ctx + n / 2)
                for seg in sealed if captioner is not None else []:
                    captioner.offer(seg)
                    while captioner.busy:
                        captioner.step(8)
        except torch.OutOfMemoryError:
            oom_at = stream_t
            break
        stream_t = t0 + group_s
        for m in marks:
            if marks[m] is None and stream_t >= m:
                sync(device)
                marks[m] = gpu_gb(device)
        if time.perf_counter() - start > (wall_cap_s if naive else max_wall_s):
            break
    bar.close()
    if oom_at is None:
        try:
            for part in prefills(vs.flush()):
                mem.append_all(part)
        except torch.OutOfMemoryError:
            oom_at = stream_t
    mem.landing.land(wait=True)                     # every sealed segment on the host, inside the clock
    sync(device)
    wall, main_cpu = time.perf_counter() - start, time.thread_time() - cpu_start
    feed.close()
    perceived, skipped = beside.close() if beside is not None else (None, None)
    n_frames = int(stream_t * fps)
    st = vs.stats
    vit_flops = st.vit_groups * (2 * vit_params * patches_per_group)
    peak_gb = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    row = {"config": name, "frames": n_frames, "stream_s": stream_t, "wall_s": wall, "main_cpu_s": main_cpu,
           "frames_per_s": n_frames / wall, "tokens_per_frame": st.tokens_kept / max(1, n_frames),
           "tokens_total_per_frame": st.tokens_total / max(1, n_frames),
           "perceived": perceived, "perception_skipped": skipped,
           "perception_error": beside.error if beside is not None else None,
           "captions": captioner.stats.written if captioner is not None else None,
           "caption_s_per_stream_hour": None if captioner is None else   # (ms / 1000) / (stream s / 3600)
           captioner.stats.decode_ms * 3.6 / max(stream_t, 1e-9),
           "vit_groups": st.vit_groups, "vit_reused": st.reused_groups, "reuse_checks_on_loop": st.changes_here,
           "gpu_gb_at": {str(k): v for k, v in marks.items()}, "gpu_peak_gb": peak_gb, "oom_at_stream_s": oom_at,
           "stopped_by_cap": (not oom_at and n_frames < n_groups * 2), "flops": lm_flops + vit_flops,
           "host_mb": mem.stats.host_bytes / 2**20,
           "index_mb": (mem.slabs.nbytes + mem.keybank.nbytes) / 2**20,    # mean keys, embeddings, the key bank
           "segments_sealed": mem.stats.segments_sealed,
           "device_kv_mb": mem.device_bytes() / 2**20,
           # what the loop's thread waited on without working: sealed segments still landing (memory.landing), the
           # keep masks of the batch before (perception.visual), the next prepared pair (the feed's thread)
           "wait_s": {"landing": mem.landing.wait_s, "keep_masks": st.mask_wait_s, "feed": feed.wait_s}}
    if not naive and oom_at is None:
        row["ttft_ms"] = question_ttft(backend, mem, stream_t, device, questions)
    del mem, vs
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


QUESTIONS = ("What happened at 12:00?", "What did the sign show two minutes ago?", "What is on screen now?",
             "What did the sign say at 30:00?", "When was the bottle on screen?", "What colour was the board at 5:00?",
             "What happened ten minutes ago?", "Was anyone in view at 45:10?", "What did the sign read at 0:20?",
             "What changed in the last minute?")


def question_ttft(backend, mem: HierarchicalMemory, now: float, device: str, questions: int = 3) -> float:
    """Time to first token of questions asked at the end of the stream, about the past and the present (the
    median over the first `questions` of QUESTIONS)."""
    times = []
    for q in QUESTIONS[:questions]:
        sync(device)
        asked = time.monotonic()
        view = mem.context(q, now)
        job = answer_job(backend, view, q, now, latest=None, restate=mem.config.restate, max_new_tokens=4,
                         asked_at=asked)
        job.step(1)
        sync(device)
        times.append(job.ttft_ms or 0.0)
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    from assistant.housekeeping import huge_pages_for_large_tensors
    huge_pages_for_large_tensors()                 # as `onlooker run` does, before the first tensor
    p = argparse.ArgumentParser(prog="onlooker bench ingest", description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=list(SIZES), default="7b", help="architecture: 7b (Qwen2.5-VL-7B), 8b "
                   "(Qwen3-VL-8B), tiny, tiny3 (tiny Qwen2.5-VL / Qwen3-VL for the CPU)")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--minutes", type=float, default=60.0, help="stream length in minutes")
    p.add_argument("--stream-fps", type=float, default=2.0, help="frames per second of stream time")
    p.add_argument("--batch", type=positive_int, default=4, help="frame pairs per vision/prefill batch")
    p.add_argument("--window", type=positive_int, default=4096, help="recent window in tokens")
    p.add_argument("--configs", default="transformers,window,onlooker", help="comma-separated configurations")
    p.add_argument("--naive-wall-s", type=float, default=90.0, help="time cap for the transformers and naive runs")
    p.add_argument("--max-wall-s", type=float, default=240.0, help="time cap for the other runs")
    p.add_argument("--tokenizer", help="a ChatML tokenizer directory (default: the lite model's)")
    p.add_argument("--media", default=str(MEDIA),
                   help="a folder of .mp4 files to loop (default: tests/data of this repository)")
    p.add_argument("--media-limit-s", type=float, help="use only the first seconds of each video")
    p.add_argument("--repeat", type=positive_int, default=1, help="run the configurations this many times, interleaved "
                   "(A B A B: drift of the machine falls on all alike)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--questions", type=int, default=3, choices=range(1, len(QUESTIONS) + 1), metavar="N",
                   help=f"TTFT: the median over this many questions after the stream (1-{len(QUESTIONS)})")
    p.add_argument("--pre-patchify", action="store_true", help="patchify every pair before the clock starts (as "
                   "before); by default a thread prepares them inside the timed loop, as a live run does")
    p.add_argument("--cudnn-sdpa", action="store_true", help="leave PyTorch's cuDNN attention on (it is off "
                   "on every GPU load path: model.backend.no_cudnn_attention), to compare")
    p.add_argument("--compile-vision", action="store_true", help="vision blocks under torch.compile (all configs)")
    p.add_argument("--compile-lm", action="store_true", help="the LM layers' elementwise work under torch.compile")
    p.add_argument("--graph-vision", action="store_true", help="the vision tower replayed as one CUDA graph per "
                   "batch shape (model.vision_graphs; all configs)")
    p.add_argument("--full-batches", dest="full", action="store_true", help="every tower batch full, as run --fast "
                   "runs it: a batch waits for --batch pairs that need the tower, a short one is padded (all configs)")
    p.add_argument("--tower-stream", action="store_true", help="the tower on a CUDA stream of its own, beside the "
                   "prefill of the batch before (perception.visual's `tower_stream`; all configs)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="turn each batch into chunks "
                   "before the next batch's tower is launched (perception.visual's `pipeline` off), to compare")
    p.add_argument("--prefill-per-chunk", dest="per_batch", action="store_false", help="one LM prefill per chunk "
                   "(memory.append) instead of one per batch (memory.append_all), to compare")
    p.add_argument("--profile", type=float, metavar="MIN", help="then each config for MIN min under the profiler")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return run_ingest_bench(p.parse_args(argv))


def default_tokenizer() -> Path:
    """The lite model's tokenizer (ChatML), for the random-weight shapes."""
    from assistant.store import default_cache_dir
    from model.backend import BackendError
    from model.causal_lm import lite_model_dir
    try:
        return lite_model_dir(default_cache_dir(), convert=False)
    except BackendError:
        raise BenchError("this benchmark needs a ChatML tokenizer: --tokenizer DIR, or run onlooker download lite")\
            from None


def run_ingest_bench(args) -> int:
    from model.backend import launching_thread
    from model.loading import check_device
    check_device(args.device)
    launching_thread(args.device)            # as the runtime's thread does: its CPU work on one thread
    tok = Path(args.tokenizer) if args.tokenizer else default_tokenizer()
    media_dir = Path(args.media) if args.media else None
    media = sorted(media_dir.glob("*.mp4")) if media_dir else []
    frames, names = load_frames(media, args.stream_fps, limit_s=args.media_limit_s)
    backend = build_backend(args.size, args.device, tok)
    pin = args.device.startswith("cuda")
    prepared = Prepared(backend, frames, pin)
    feed = (lambda: prepared) if args.pre_patchify else (lambda: Feed(backend, frames, pin))
    vit_params = sum(p.numel() for p in backend.model.model.visual.parameters())
    lm = backend.language_model()
    lm_params = sum(p.numel() for p in lm.parameters()) - lm.embed_tokens.weight.numel()
    peak = measure_matmul_peak(args.device)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    header = (f"bench ingest: {backend.name}, {attention_for(args.device)}, {device_name}, {args.minutes:g} min of "
              f"stream at {args.stream_fps:g} frames/s, {FRAME}x{FRAME}, batches of {args.batch} pairs, window "
              f"{args.window} tokens, loop of {len(frames)} frames: {', '.join(names)}; matmul peak "
              f"{peak / 1e12:.0f} TFLOP/s; torch {torch.__version__}"
              f"{'; cuDNN SDPA on' if args.cudnn_sdpa else ''}"
              f"{'; vision blocks compiled' if args.compile_vision else ''}"
              f"{'; vision tower graphed' if args.graph_vision else ''}{'; LM compiled' if args.compile_lm else ''}"
              f"{'' if args.pipeline else '; not pipelined'}{'' if args.per_batch else '; a prefill per chunk'}"
              f"{'; full tower batches' if args.full else ''}"
              f"{'; tower on its own stream' if args.tower_stream else ''}")
    print(header, file=sys.stderr)
    if args.cudnn_sdpa:                      # after every attention_for() call, which turns it off
        torch.backends.cuda.enable_cudnn_sdp(True)
    if args.compile_vision:
        backend.compile_vision()
    if args.graph_vision:
        backend.graph_vision()
    backend.fast.compile(args.compile_lm)
    if args.compile_vision or args.graph_vision:    # every batch size ingest can make, before the clock runs
        for k in [args.batch] if args.full else range(1, args.batch + 1):
            backend.encode_patches([prepared.groups[0][0]] * k, [prepared.groups[0][1]] * k)
    start = time.perf_counter()          # the LM's CUDA graphs for every token bucket, before the clock runs
    if backend.warm_lm_graphs():
        print(f"LM CUDA graphs captured in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    names = [c.strip() for c in args.configs.split(",")]
    # warm-up, not recorded: kernel selection, allocator, cuBLAS handles, compiling; every configuration for long
    # enough to seal (a configuration's first token drop, int8 and pruning kernels are Triton's, compiled at first
    # use: on the H200 the first 5 s of a cold onlooker run took 88 pairs, then 120 per second)
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise BenchError(f"unknown configuration {unknown[0]!r} ({', '.join(CONFIGS)})")
    for warm in dict.fromkeys(n for n in names if n != "transformers"):
        with lm_forward(backend, warm):
            run_config(warm, backend, feed, minutes=WARM_MINUTES, fps=args.stream_fps, device=args.device,
                       window=args.window, batch=args.batch, wall_cap_s=60, param_counts=(vit_params, lm_params),
                       frames=frames, pipeline=args.pipeline, per_batch=args.per_batch, full=args.full,
                       tower_stream=args.tower_stream)
    rows = []
    for name in names * max(1, args.repeat):
        if name == "transformers":
            row = run_transformers(backend, feed, minutes=args.minutes, fps=args.stream_fps, device=args.device,
                                   wall_cap_s=args.naive_wall_s, param_counts=(vit_params, lm_params))
        else:
            with lm_forward(backend, name):
                row = run_config(name, backend, feed, minutes=args.minutes, fps=args.stream_fps, device=args.device,
                                 window=args.window, batch=args.batch, wall_cap_s=args.naive_wall_s,
                                 param_counts=(vit_params, lm_params), max_wall_s=args.max_wall_s, frames=frames,
                                 questions=args.questions, pipeline=args.pipeline, per_batch=args.per_batch,
                                 full=args.full, tower_stream=args.tower_stream)
        row["mfu"] = row["flops"] / row["wall_s"] / peak
        rows.append(row)
        waits = ", ".join(f"{k} {v:.1f} s" for k, v in row.get("wait_s", {}).items())
        print(f"  {name}: {row['frames_per_s']:.1f} frames/s; the loop's thread: {row['main_cpu_s']:.1f} s on the CPU "
              f"of {row['wall_s']:.1f} s{'; waited ' + waits if waits else ''}", file=sys.stderr)
    print(format_table(header, rows))
    if args.repeat > 1:
        print("\n" + format_medians(rows, names, args.repeat))
    for name in names if args.profile else []:
        print("\n" + profile(name, lambda name=name: run_config(
            name, backend, feed, minutes=args.profile, fps=args.stream_fps, device=args.device, window=args.window,
            batch=args.batch, wall_cap_s=1e9, param_counts=(vit_params, lm_params), frames=frames,
            pipeline=args.pipeline, per_batch=args.per_batch, full=args.full, tower_stream=args.tower_stream)))
    write_rows(args.out, header, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
