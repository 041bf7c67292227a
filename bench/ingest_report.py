"""The tables `bench ingest` prints: one row per run, and medians over interleaved repeats."""

from __future__ import annotations

import numpy as np

MARKS_S = (60, 600, 3600)  # GPU memory is sampled after 1, 10 and 60 minutes of stream


def format_medians(rows: list[dict], names: list[str], repeat: int) -> str:
    """Median frames/s per configuration over the repeats, and each as a ratio to onlooker's."""
    med = {n: float(np.median([r["frames_per_s"] for r in rows if r["config"] == n])) for n in dict.fromkeys(names)}
    base = med.get("onlooker")
    lines = [f"| config | median frames/s over {repeat} runs | vs onlooker |", "|---|---|---|"]
    for n, v in med.items():
        lines.append(f"| {n} | {v:.1f} | {v / base:.2f}x |" if base else f"| {n} | {v:.1f} | - |")
    return "\n".join(lines)


def format_table(header: str, rows: list[dict]) -> str:
    def gb(v) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = [header, "", "| config | frames/s | visual tokens per frame (kept / produced) | ViT runs (reused) | "
             "GPU GB at 1 / 10 / 60 min | GPU peak GB | stream covered | TTFT ms after the stream | MFU | "
             "perceived (skipped) | captions, s per stream-hour |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        at = " / ".join(gb(r["gpu_gb_at"].get(str(m))) for m in MARKS_S)
        covered = f"{r['stream_s'] / 60:.1f} min"
        if r["oom_at_stream_s"] is not None:
            covered += " (out of memory)"
        elif r["stopped_by_cap"]:
            covered += " (time cap)"
        ttft = f"{r['ttft_ms']:.0f}" if r.get("ttft_ms") is not None else "-"
        seen = "-" if r.get("perceived") is None else f"{r['perceived']} ({r['perception_skipped']})"
        if r.get("perception_error"):
            seen += f" stopped: {r['perception_error']}"
        cap = "-" if r.get("captions") is None else f"{r['captions']}, {r['caption_s_per_stream_hour']:.0f}"
        lines.append(f"| {r['config']} | {r['frames_per_s']:.1f} | {r['tokens_per_frame']:.0f} / "
                     f"{r['tokens_total_per_frame']:.0f} | {r['vit_groups']} ({r['vit_reused']}) | {at} | "
                     f"{gb(r['gpu_peak_gb'])} | {covered} | {ttft} | {100 * r['mfu']:.1f}% | {seen} | {cap} |")
    return "\n".join(lines)
