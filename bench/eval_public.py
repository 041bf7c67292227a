"""Public streaming-video benchmarks for `onlooker eval --public`: StreamingBench (the real-time split) and
OVO-Bench (backward tracing and real-time perception), read from their published question files, asked through
the real pipeline on the user's copy of the videos. No score is recorded here: the videos are not on this
machine, and these questions need a real VLM (`--model PATH` on a GPU).

    onlooker eval --public streamingbench:questions_real.json --videos DIR --model PATH [--out FILE]
    onlooker eval --public ovo:ovo_bench_new.json --videos DIR --model PATH

Formats, as published:
  StreamingBench  a JSON list of {"video_path", "questions": [{"task_type", "question", "time_stamp": "HH:MM:SS",
                  "options": ["A. ...", ...], "answer": "B"}]}; video_path is relative ("./videos/x.mp4")
  OVO-Bench       a JSON list of {"id", "video", "task", "question", "options": [...], "gt": index,
                  "realtime": seconds}; the backward tasks EPM ASI HLD, the real-time tasks STU OJR ATR ACR OCR
                  FPD (the forward tasks need a different protocol and are not read)
Each question is asked at its time stamp, in one run per video (every question of a video in that run), with
its options and "Answer with the letter of the right option."; the answer's first option letter is scored.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError

OVO_SPLITS = {"EPM": "backward", "ASI": "backward", "HLD": "backward", "STU": "realtime", "OJR": "realtime",
              "ATR": "realtime", "ACR": "realtime", "OCR": "realtime", "FPD": "realtime"}


@dataclass(frozen=True)
class Choice:
    """One multiple-choice question of a public benchmark."""
    video: str                 # path under the user's videos folder
    t: float                   # stream seconds at which it is asked
    question: str
    options: tuple[str, ...]   # without their letters
    answer: str                # "A", "B", ...
    task: str

    def prompt(self) -> str:
        opts = " ".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(self.options))
        return f"{self.question} Options: {opts} Answer with the letter of the right option."


def _seconds(stamp: str) -> float:
    parts = [float(p) for p in stamp.strip().split(":")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(stamp)
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def _strip_letter(option: str) -> str:
    return re.sub(r"^\s*[A-Z]\s*[.)]\s*", "", option).strip()


def load_streamingbench(path: str) -> list[Choice]:
    out = []
    for entry in _json_list(path):
        video = str(entry["video_path"]).removeprefix("./")
        for q in entry["questions"]:
            out.append(Choice(video, _seconds(q["time_stamp"]), q["question"].strip(),
                              tuple(_strip_letter(o) for o in q["options"]), q["answer"].strip()[:1].upper(),
                              q.get("task_type", "")))
    return out


def load_ovo(path: str) -> list[Choice]:
    out = []
    for entry in _json_list(path):
        if entry["task"] not in OVO_SPLITS:
            continue                                 # a forward task: another protocol, not read
        out.append(Choice(str(entry["video"]), float(entry["realtime"]), entry["question"].strip(),
                          tuple(str(o).strip() for o in entry["options"]), chr(65 + int(entry["gt"])),
                          f"{OVO_SPLITS[entry['task']]} {entry['task']}"))
    return out


LOADERS = {"streamingbench": load_streamingbench, "ovo": load_ovo}


def _json_list(path: str) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise BenchError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise BenchError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, list):
        raise BenchError(f"{path}: expected a JSON list of entries")
    return data


def load(spec: str) -> list[Choice]:
    name, sep, path = spec.partition(":")
    if not sep or name not in LOADERS:
        raise BenchError(f"--public: expected streamingbench:FILE or ovo:FILE, got {spec!r}")
    try:
        return LOADERS[name](path)
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError(f"{path}: not in the {name} format ({type(e).__name__}: {e})") from None


def chosen_letter(answer: str, n: int) -> str | None:
    """The first option letter the answer names ("B", "(B)", "B. ...", "The answer is B")."""
    letters = "".join(chr(65 + i) for i in range(n))
    m = re.search(rf"(?<![A-Za-z])([{letters}])(?![a-z])", answer.strip())
    return m.group(1) if m else None


def run_public(spec: str, videos: str, model: str, data_dir: str) -> list[dict]:
    """Every question through `onlooker run --source VIDEO`, one run per video; a row per question."""
    from assistant.cli import main as onlooker

    choices = load(spec)
    if not choices:
        raise BenchError(f"{spec}: no questions of the supported splits")
    by_video: dict[str, list[Choice]] = {}
    for c in choices:
        by_video.setdefault(c.video, []).append(c)
    missing = [v for v in by_video if not (Path(videos) / v).exists()]
    if missing:
        raise BenchError(f"{len(missing)} of {len(by_video)} videos are not under {videos} (first: {missing[0]})")
    rows = []
    os.environ["ONLOOKER_DATA_DIR"] = data_dir
    for video, qs in by_video.items():
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            rc = onlooker(["run", "--source", str(Path(videos) / video), "--model", model, "--headless", "--fast",
                           "--no-audio", *(f"--ask={c.t:g}:{c.prompt()}" for c in qs)])
        if rc != 0:
            raise RuntimeError(f"onlooker run exited {rc} on {video}")
        answers = [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith('{"type": "answer"')]
        for c in qs:
            got = next((a["text"] for a in answers if a["question"] == c.prompt()), "")
            letter = chosen_letter(got, len(c.options))
            rows.append({"video": video, "t": c.t, "task": c.task, "want": c.answer, "got": got, "letter": letter,
                         "right": letter == c.answer})
    return rows
