"""The real sounddevice path: an output stream plays into a PulseAudio null sink and an input stream
records its monitor. The fixture starts PulseAudio itself (as .ci/run does); the test is skipped, with
the reason, only where PortAudio or PulseAudio cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest

SINK = "onlooker_test_sink"


@pytest.fixture(scope="module")
def null_sink():
    if shutil.which("pulseaudio") is None or shutil.which("pactl") is None:
        pytest.skip("PulseAudio is not installed (apt-get install pulseaudio)")
    from perception.audio import AudioUnavailable, _sounddevice
    try:
        _sounddevice()
    except AudioUnavailable as e:
        pytest.skip(str(e))
    if subprocess.run(["pactl", "info"], capture_output=True).returncode != 0:
        subprocess.run(["pulseaudio", "--start", "--exit-idle-time=-1"], capture_output=True)
        for _ in range(50):
            if subprocess.run(["pactl", "info"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        else:
            pytest.skip("PulseAudio would not start here")
    mod = subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={SINK}"],
                         capture_output=True, text=True)
    if mod.returncode != 0:
        pytest.skip(f"no null sink: {mod.stderr.strip()}")
    old = {k: os.environ.get(k) for k in ("PULSE_SINK", "PULSE_SOURCE")}
    os.environ["PULSE_SINK"], os.environ["PULSE_SOURCE"] = SINK, f"{SINK}.monitor"
    # PortAudio lists devices once per initialisation: re-initialise so it sees the PulseAudio devices
    import sounddevice as sd
    sd._terminate()
    sd._initialize()
    yield "pulse"
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    subprocess.run(["pactl", "unload-module", mod.stdout.strip()], capture_output=True)


def test_player_output_reaches_the_microphone_input(null_sink):
    from assistant.speech_out import OUT_RATE, Player
    from perception.audio import SAMPLE_RATE, Microphone, list_devices
    assert "pulse" in list_devices()
    tone = (0.5 * np.sin(np.arange(int(1.5 * OUT_RATE)) * 2 * np.pi * 440 / OUT_RATE)).astype(np.float32)
    player = Player()
    recorded = []
    with Microphone(null_sink) as mic:
        player.open(null_sink)
        player.enqueue(tone)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            b = mic.read(timeout=0.5)
            if b is not None:
                recorded.append(b.samples)
        player.close()
    x = np.concatenate(recorded)
    assert player.first_sample_at is not None
    assert float(np.sqrt(np.mean(x ** 2))) > 0.05, "nothing came back through the null sink"
    spectrum = np.abs(np.fft.rfft(x))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(x)
    assert abs(peak_hz - 440) < 10, peak_hz
