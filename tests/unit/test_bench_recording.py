"""`python -m bench.recording` (the ingest issue's item 7): a recording written at 2 frames/s, a random-weight model
saved as `onlooker run --model DIR` loads it, and the product's own command indexing the whole file."""

from __future__ import annotations

import json

import cv2

from bench import recording


def test_the_recording_has_every_frame_at_two_per_second(tmp_path):
    path = tmp_path / "r.mp4"
    n = recording.write_recording(path, minutes=0.25, fps=2.0, size=112)
    cap = cv2.VideoCapture(str(path))
    read = 0
    while cap.read()[0]:
        read += 1
    assert n == read == 30
    assert abs(cap.get(cv2.CAP_PROP_FPS) - 2.0) < 1e-6


def test_onlooker_run_fast_indexes_the_whole_recording(tmp_path, monkeypatch):
    """The tiny architecture on the CPU: every frame of a 30-s recording is indexed by `onlooker run --fast` in a
    child process, and the row says so."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "rec.jsonl"
    assert recording.main(["--size", "tiny", "--device", "cpu", "--minutes", "0.5", "--frame", "112",
                           "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["frames_in_file"] == 60 and row["frames_sampled"] == 60 and row["error"] is None
    assert row["segments_sealed"] > 0 and row["stream_s"] >= 29.0
    assert 0 < row["session_wall_s"] <= row["command_wall_s"]
    # the runtime thread's time by part: appends (segment files, index rows and embeddings among them) and the visual
    # stream, each within the session's wall; a stored session writes files and rows
    assert 0 < row["ingest_s"] + row["visual_s"] <= row["session_wall_s"]
    assert 0 < row["segment_write_s"] and 0 < row["index_write_s"]
    assert row["segment_write_s"] + row["index_write_s"] + (row["embed_s"] or 0) <= row["session_wall_s"]
    model = tmp_path / "w" / "model" / "model.safetensors"
    stamp = model.stat().st_mtime_ns
    assert recording.main(["--size", "tiny", "--device", "cpu", "--minutes", "0.5", "--frame", "112", "--beside", "off",
                           "--work", str(tmp_path / "w"), "--out", str(out)]) == 0
    again = json.loads(out.read_text().splitlines()[-1])
    assert model.stat().st_mtime_ns == stamp and again["frames_sampled"] == 60 and again["beside"] == "off"
    assert again["embed_s"] in (None, 0.0)          # nothing beside the model: no words to embed, the model never ran


def test_fast_on_a_gpu_batches_frame_pairs_and_live_runs_do_not(tmp_path):
    """`onlooker run --fast --device cuda` encodes and prefills 16 frame pairs per call, as `bench ingest` measures;
    a real-time or CPU run keeps 1 (a batch would add its seconds of latency), and a config file's other size stays."""
    from assistant.cli import _config, build_parser

    def batch(*flags: str) -> int:
        return _config(build_parser().parse_args(["run", "--source", "x.mp4", *flags])).visual.batch_groups
    assert batch("--fast", "--device", "cuda") == 16
    assert batch("--device", "cuda") == 1 and batch("--fast", "--device", "cpu") == 1 and batch("--fast") == 1
    toml = tmp_path / "c.toml"
    toml.write_text("[visual]\nbatch_groups = 2\n")
    assert batch("--fast", "--device", "cuda", "--config", str(toml)) == 2


def test_fast_runs_on_a_gpu_compile_the_tower_unless_the_config_says_not(tmp_path):
    """`run --fast --device cuda` compiles the tower's blocks and pads short batches (one shape to compile and
    graph); a config file's `compile_vision = false` stays, and a CPU or real-time run compiles nothing."""
    from assistant.cli import _config, build_parser

    def visual(*flags: str):
        return _config(build_parser().parse_args(["run", "--source", "x.mp4", *flags])).visual
    v = visual("--fast", "--device", "cuda")
    assert v.compile_vision is True and v.pad_batches and v.fill_batches and v.graph_vision and v.tower_stream
    assert not visual("--fast").compile_vision and not visual("--device", "cuda").compile_vision
    toml = tmp_path / "c.toml"
    toml.write_text("[visual]\ncompile_vision = false\n")
    assert visual("--fast", "--device", "cuda", "--config", str(toml)).compile_vision is False
