"""Sources, sampling, pacing, and every bad input the CLI must turn into one line and exit 2."""

from __future__ import annotations

import socket

import cv2
import numpy as np
import pytest

from perception.config import PerceptionConfig
from perception.sources import FileSource, LiveSource, SourceError, VideoFrame, open_source, pace, sample
from perception.synthetic import SyntheticScene
from tests.conftest import BOTTLE


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        if seconds > 0:
            self.t += seconds


def test_synthetic_is_deterministic_and_scripted():
    a, b = SyntheticScene("signs"), SyntheticScene("signs")
    assert np.array_equal(a.render(123), b.render(123))
    script = a.script()
    assert script == b.script()
    assert script[0]["t0"] == 0.0 and script[-1]["t1"] == 60.0
    assert all(x["text"] != y["text"] for x, y in zip(script, script[1:]))   # every change is visible
    for entry in script:
        assert a.word_at((entry["t0"] + entry["t1"]) / 2) == entry["text"]


def test_synthetic_source_frames_carry_stream_time():
    src = open_source("synthetic:short", PerceptionConfig())
    frames = list(src.frames())
    assert len(frames) == 60 and frames[0].t == 0.0 and frames[-1].t == pytest.approx(59 / 5)
    assert all(f.wall > 0 for f in frames)


def test_file_source_reads_in_order_with_times():
    src = open_source(BOTTLE, PerceptionConfig())
    assert isinstance(src, FileSource) and src.fps == pytest.approx(29.83, abs=0.01)
    sampled = list(sample(src.frames(), 1.0))
    assert len(sampled) == 40
    ts = [f.t for f in sampled]
    assert ts == sorted(ts) and all(abs(t - round(t)) < 1 / src.fps for t in ts)
    assert src.stats.frames_read == src.num_frames == 1189


def test_sample_rate_and_jump():
    frames = (VideoFrame(np.zeros((2, 2, 3), np.uint8), i * 0.1, 0.0, i) for i in range(50))
    assert [round(f.t, 1) for f in sample(frames, 2.0)] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    jumpy = [0.0, 0.4, 5.0, 5.2, 5.5, 6.0]   # a 4.6 s stall: no burst of catch-up frames after it
    frames = (VideoFrame(np.zeros((2, 2, 3), np.uint8), t, 0.0, i) for i, t in enumerate(jumpy))
    assert [f.t for f in sample(frames, 2.0)] == [0.0, 5.0, 5.5, 6.0]


def test_pacing_real_time_and_fast():
    def frames():
        return (VideoFrame(np.zeros((2, 2, 3), np.uint8), t, 0.0, i) for i, t in enumerate([0.0, 1.0, 2.5]))
    clock = FakeClock()
    list(pace(frames(), clock, realtime=True))
    assert clock.sleeps == [0.0, 1.0, 1.5] and clock.t == pytest.approx(102.5)
    clock = FakeClock()
    list(pace(frames(), clock, realtime=False))
    assert clock.sleeps == []


# -- bad input ---------------------------------------------------------------------------------

def _truncated_copy(tmp_path, keep_fraction: float, name: str) -> str:
    data = open(BOTTLE, "rb").read()
    p = tmp_path / name
    p.write_bytes(data[: int(len(data) * keep_fraction)])
    return str(p)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not_video", "truncated", "bad_ext",
                                  "camera", "camera_spec", "rtsp", "http", "scheme", "scene"])
def test_bad_input_raises_one_line(case, tmp_path):
    spec = {
        "missing": str(tmp_path / "nope.mp4"),
        "directory": str(tmp_path),
        "empty": str(tmp_path / "empty.mp4"),
        "not_video": str(tmp_path / "notes.mp4"),
        "truncated": None,
        "bad_ext": str(tmp_path / "notes.txt"),
        "camera": "camera:57",
        "camera_spec": "camera:front",
        "rtsp": f"rtsp://127.0.0.1:{_closed_port()}/live",
        "http": f"http://127.0.0.1:{_closed_port()}/video.mp4",
        "scheme": "ftp://example.org/x.mp4",
        "scene": "synthetic:nope",
    }[case]
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "notes.mp4").write_text("not a video\n" * 100)
    (tmp_path / "notes.txt").write_text("hello")
    if case == "truncated":
        spec = _truncated_copy(tmp_path, 0.5, "half.mp4")   # moov atom is at the end: cut off
    with pytest.raises(SourceError) as err:
        open_source(spec, PerceptionConfig(stall_timeout_s=2.0))
    msg = str(err.value)
    assert msg and "\n" not in msg and "Traceback" not in msg


def test_file_cut_short_mid_stream_is_reported(tmp_path):
    # a file written frame by frame (MJPG in AVI, index at the end) and cut mid-way: either it cannot be
    # opened, or it ends early against its declared frame count; both are a SourceError, never silence
    path = str(tmp_path / "clip.avi")
    w = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(100):
        w.write(np.full((48, 64, 3), i, np.uint8))
    w.release()
    data = open(path, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:8192] + data[len(data) // 2:])   # header kept, middle of the data gone
    with pytest.raises(SourceError):
        src = open_source(str(cut), PerceptionConfig())
        list(src.frames())


class _FailingCapture:
    def __init__(self, frames_before_fail: int) -> None:
        self.left = frames_before_fail

    def read(self):
        if self.left > 0:
            self.left -= 1
            return True, np.zeros((4, 4, 3), np.uint8)
        return False, None

    def release(self):
        pass


def test_stalled_stream_retries_with_backoff_then_reports(monkeypatch):
    clock = FakeClock()
    cfg = PerceptionConfig(max_retries=3, retry_backoff_s=0.5)
    src = LiveSource("rtsp://cam/stream", "rtsp://cam/stream", cfg, clock)
    attempts = iter([_FailingCapture(2), _FailingCapture(2), None, None, None])
    monkeypatch.setattr(src, "_open_capture", lambda: next(attempts))
    src.open()
    got = []
    with pytest.raises(SourceError, match="stalled"):
        for f in src.frames():
            got.append(f)
    # 2 frames, a stall, reconnect after 0.5 s (its probe read takes one frame), 1 more frame,
    # a stall, then 3 failed attempts after 0.5, 1 and 2 s
    assert len(got) == 3 and src.stats.stalls == 2 and src.stats.reconnects == 1
    assert clock.sleeps == [0.5, 0.5, 1.0, 2.0]


def test_lite_perception_without_opencvs_people_detector_warns_once_and_reads_text(monkeypatch, caplog):
    """OpenCV 5.x has no HOGDescriptor or CascadeClassifier: the perceiver says so and goes on reading the frame,
    counting no people, instead of ending the run (it did on the GPU machine, which has OpenCV 5.0)."""
    import cv2

    from perception.config import PerceptionConfig
    from perception.lite import LitePerceiver
    from perception.sources import VideoFrame
    from perception.synthetic import SignScene
    monkeypatch.delattr(cv2, "HOGDescriptor")
    monkeypatch.delattr(cv2, "CascadeClassifier")
    scene = SignScene.random(3, 20, "heldout")
    with caplog.at_level("WARNING", logger="onlooker.perception"):
        p = LitePerceiver(PerceptionConfig())
    assert "no HOG people detector" in caplog.text
    obs, _ = p.process(VideoFrame(scene.render(2.0), 2.0, 0.0, 0))
    assert obs.people == 0 and obs.faces == 0 and scene.sign_at(2.0).word in obs.text.upper()
