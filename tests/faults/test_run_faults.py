"""Faults during a run and the flow guarantees: SIGTERM, a complete file over HTTP, a live source ending
while the microphone is on, the bounded data inbox, and the speech handle's states."""

from __future__ import annotations

import functools
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from assistant.cli import main
from assistant.events import ObservationEvent, StreamEnded, TranscriptEvent
from assistant.runtime import Runtime
from assistant.speech_out import OUT_BLOCK, Player, Speaker
from assistant.threads import Pipeline
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.audio import BLOCK, AudioBlock
from perception.config import PerceptionConfig
from perception.observation import Observation
from perception.sources import Source, VideoFrame
from reasoning.config import ReasoningConfig
from tests.conftest import BOTTLE
from tests.faults.range_server import RangeHandler

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_sigterm_stops_like_ctrl_c_with_a_summary(tmp_path):
    env = {**os.environ, "ONLOOKER_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "assistant.cli", "run", "--source", BOTTLE, "--headless",
                             "--no-audio"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline()                 # the first observation: the run is under way (real time)
    assert first.startswith("{"), first + proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    records = [json.loads(line) for line in (first + out).splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and "Traceback" not in err, err
    summary = records[-1]
    assert summary["type"] == "summary" and summary["interrupted"] is True and summary["stream_t"] < 30
    listing = subprocess.run([sys.executable, "-m", "assistant.cli", "sessions"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=60).stdout
    line = next(row for row in listing.splitlines() if summary["session_id"] in row)
    assert "running" not in line                    # the session was closed, with its end time
    segs = int(line.split()[4])                     # ID, date, time, LENGTH, SEGS: what was left was sealed
    assert segs == summary["segments_sealed"] >= 1, (line, summary)


def test_a_complete_video_file_over_http_ends_like_a_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                          functools.partial(RangeHandler, directory=os.path.dirname(BOTTLE)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_port}/{os.path.basename(BOTTLE)}"
        assert main(["run", "--source", url, "--headless", "--fast", "--no-audio"]) == 0
    finally:
        srv.shutdown()
    summary = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert summary["frames_read"] == 1189 and summary["frames_sampled"] == 40 and summary["reconnects"] == 0


class _LiveFrames(Source):
    """A live source that delivers three frames, then its stream is gone for good."""
    live = True
    name = "fake-camera"

    def open(self) -> None:
        pass

    def frames(self):
        for i in range(3):
            yield VideoFrame(np.zeros((48, 64, 3), np.uint8), float(i), time.time(), i)


class _EndlessMic:
    """A microphone that never runs dry: only the session's stop ends it."""
    paced_by_frames = False

    def blocks(self, stop):
        n = 0
        while not stop.is_set():
            yield AudioBlock(np.zeros(BLOCK, np.float32), n * BLOCK / 16000)
            n += 1
            time.sleep(0.005)

    def feed(self, block):
        return iter(())


def test_the_end_of_a_live_source_ends_the_session_even_with_the_microphone_on(lite_backend):
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()), ReasoningConfig(), lambda e: None,
                 live=True)
    pipe = Pipeline(_LiveFrames(), rt, PerceptionConfig(), None, hearing=_EndlessMic())  # type: ignore[arg-type]
    start = time.monotonic()
    result = pipe.run()
    assert time.monotonic() - start < 30 and not result.threads_alive and result.frames_sampled == 3


def test_a_live_inbox_drops_the_oldest_frames_never_transcripts(lite_backend):
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()), ReasoningConfig(), lambda e: None,
                 live=True, max_data=4)
    rt.submit(TranscriptEvent(0.0, 0.5, "The delivery is at noon."))
    for i in range(10):
        rt.submit(ObservationEvent(Observation(float(i), f"WORD{i}")))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    s = rt.summary()
    assert s["frames_dropped_behind"] == 7 and s["transcripts"] == 1 and s["frames_sampled"] == 3
    assert rt.data.num_dropped == 7 and rt._status()["frames_dropped_behind"] == 7


def test_a_file_inbox_holds_producers_back_and_drops_nothing(lite_backend):
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig(window_tokens=256)), ReasoningConfig(),
                 lambda e: None, live=False, max_data=4)
    th = threading.Thread(target=rt.run, daemon=True)
    th.start()
    while rt._thread_id is None:
        time.sleep(0.01)
    for i in range(40):
        rt.submit(ObservationEvent(Observation(float(i), f"WORD{i}")))
        assert len(rt.data) <= 4
    rt.submit(StreamEnded())
    th.join(timeout=120)
    assert rt.summary()["frames_sampled"] == 40 and rt.data.num_dropped == 0


class _Tone:
    engine = "test"

    def synth(self, text: str) -> np.ndarray:
        return (0.3 * np.sin(np.arange(2205) * 0.1)).astype(np.float32)      # 0.1 s


def _tick(player: Player, n: int) -> None:
    for _ in range(n):
        player.callback(np.zeros((OUT_BLOCK, 1), np.float32), OUT_BLOCK)


def test_the_speech_handle_returns_to_listening_after_playout():
    states: list[str] = []
    player = Player()
    speaker = Speaker(_Tone(), player, states.append).start()
    assert speaker.interrupt() is False and speaker.state == "listening"      # no barge-in while listening
    speaker.begin_answer()
    assert speaker.state == "thinking"
    speaker.say("The sign reads TIGER.")
    deadline = time.monotonic() + 10
    while speaker.state != "speaking" and time.monotonic() < deadline:
        time.sleep(0.01)
    speaker.end_answer()
    _tick(player, 10)                    # 0.2 s of blocks: the 0.1 s phrase plays out, then silence
    assert states == ["thinking", "speaking", "listening"] and speaker.state == "listening"
    speaker.begin_answer()
    assert speaker.interrupt() is True and speaker.state == "listening"       # barge-in while thinking
    speaker.close()
