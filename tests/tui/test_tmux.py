"""The real app, in a real terminal: `onlooker demo` under tmux, read back with capture-pane."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pane(name: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout


def _wait(name: str, text: str, timeout: float) -> str:
    end = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < end:
        screen = _pane(name)
        if text in screen:
            return screen
        time.sleep(0.5)
    raise AssertionError(f"{text!r} did not appear on the screen:\n{screen}")


def test_demo_runs_in_a_real_terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux; .ci/run installs it)")
    name = f"onl-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "ONLOOKER_DATA_DIR": str(tmp_path / "data"), "TERM": "xterm-256color"}
    exe = Path(sys.executable).parent / "onlooker"
    cmd = f"{exe} demo --realtime; echo EXIT=$?; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "48", "-c", str(ROOT), cmd],
                   check=True, env=env)
    try:
        screen = _wait(name, "synthetic:signs", 60)              # the status bar is up
        assert "timeline" in screen and "chat" in screen
        screen = _wait(name, "Onlooker:", 90)                    # a scheduled question was answered
        assert "you: " in screen
        subprocess.run(["tmux", "send-keys", "-t", name, "/quit", "Enter"], check=True)
        screen = _wait(name, "EXIT=0", 30)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
