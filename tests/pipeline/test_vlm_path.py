"""The VLM path does what the lite path does (issue: the VLM path's whole mission), on a tiny random Qwen2.5-VL:
the perceivers beside the model feed the index text, alert evidence and narration; the model's own yes/no probe
decides alone where perception reads nothing (scripted probe scores: the random model's own would say nothing);
alerts carry the frame time and a thumbnail; captions are written at seal time, only when the runtime has slack,
and are searchable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from assistant import events as ev
from assistant.cli import main
from assistant.runtime import Runtime
from assistant.store import SessionStore
from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.observation import Observation
from perception.synthetic import SyntheticScene
from perception.visual import VisualConfig
from reasoning.config import ReasoningConfig
from reasoning.timing import Watcher


def _runtime(backend, tmp_path: Path | None = None, window: int = 4096, **reasoning) -> tuple[Runtime, list]:
    out: list = []
    store = sid = index = spill = None
    if tmp_path is not None:
        store = SessionStore(tmp_path / "data")
        sid = store.start("test", backend.name)
        index, spill = store.segment_index(sid), store.session_dir(sid) / "kv"
    memory = HierarchicalMemory(backend, MemoryConfig(window_tokens=window, segment_seconds=2.0), index=index,
                                spill_dir=spill)
    rt = Runtime(backend, memory, ReasoningConfig(max_new_tokens=4, **reasoning), out.append, store, sid)
    return rt, out


def _feed(rt: Runtime, seconds: int, perceived: dict[float, Observation] | None = None) -> None:
    """Frames at 2 per second (one pair per second) and, beside them, what the perceivers read."""
    scene = SyntheticScene("short")
    for i in range(seconds * 2):
        t = i * 0.5
        rt.submit(ev.ObservationEvent(Observation(t, perceived=False, image=scene.render(t))))
        if perceived and t in perceived:
            rt.submit(ev.PerceptionEvent(perceived[t]))
    rt.submit(ev.StreamEnded())
    while not rt.finished:
        rt.step()


def test_perception_beside_the_vlm_reaches_index_evidence_and_narration(tiny_qwen):
    rt, out = _runtime(tiny_qwen)
    rt.watcher.add('the sign says "STOP"')
    rt.narrate = True
    seen = {0.0: Observation(0.0, "TIGER"), 3.0: Observation(3.0, "STOP"), 6.0: Observation(6.0, "GO", people=1)}
    _feed(rt, 8, seen)
    alerts = [e for e in out if isinstance(e, ev.Alert)]
    assert [a.t for a in alerts] == [3.5] and alerts[0].source == "perception" and "STOP" in alerts[0].text
    assert [n.t for n in out if isinstance(n, ev.Narration)] == [0.0, 3.0, 6.0]
    texts = [s.text for s in rt.memory.segments] + [w.text for w in rt.memory.window]
    assert any('Text on screen: "TIGER"' in t for t in texts) and any("1 person visible" in t for t in texts)
    hits = rt.memory.search("tiger", rt.stream_t)
    assert hits and hits[0].t0 <= 0.0 < hits[0].t1 + 1.0            # found by the word the perceivers read


def test_without_perception_the_vlm_has_no_evidence(tiny_qwen):
    """The same stream with nothing perceived beside the model: the word condition is the probe's alone, and a
    probe held at 0.5 (under probe_on) never fires."""
    rt, out = _runtime(tiny_qwen)
    rt.watcher.add('the sign says "STOP"')
    rt.watcher.model_score = lambda context, t, condition: 0.5          # type: ignore[method-assign]
    _feed(rt, 8)
    assert not [e for e in out if isinstance(e, ev.Alert)]


@pytest.fixture
def real_probe(monkeypatch):
    """Script the probe's P(yes) by stream time; the probe itself still runs on a real fork of memory."""
    original = Watcher.model_score

    def script(scores: dict[float, float]) -> None:
        def score(self, context, t, condition):
            original(self, context, t, condition)
            return scores.get(t, 0.0)
        monkeypatch.setattr(Watcher, "model_score", score)
    return script


@pytest.mark.parametrize("probe_on, fired", [(0.6, [2.5, 14.5]), (0.95, [14.5])])
def test_probe_alone_fires_with_its_own_threshold_hysteresis_and_cooldown(tiny_qwen, tmp_path, real_probe,
                                                                          probe_on, fired):
    """Pairs end at 0.5, 1.5, ... s. Scores: up at 2.5 (fire), stays up (armed off), falls under probe_off at 4.5
    (re-arms), up again at 5.5 (inside the 8 s cool-down: no alert), up at 14.5 (fires)."""
    real_probe({2.5: 0.9, 3.5: 0.93, 4.5: 0.2, 5.5: 0.9, 6.5: 0.1, 14.5: 0.97})
    rt, out = _runtime(tiny_qwen, tmp_path, probe_on=probe_on, probe_off=0.4)
    rt.watcher.add("the light on the wall turns red")                 # nothing a perceiver reads
    _feed(rt, 16)
    alerts = [e for e in out if isinstance(e, ev.Alert)]
    assert [a.t for a in alerts] == fired and all(a.source == "model" for a in alerts)
    assert rt.watcher.probes == 16                                   # one real probe per pair
    for a in alerts:
        assert a.thumbnail and Path(a.thumbnail).exists() and Path(a.thumbnail).stat().st_size > 200
    rows = rt.store.alerts(rt.session_id)
    assert [r["t"] for r in rows] == fired and rows[0]["thumbnail"] == alerts[0].thumbnail


def test_captions_are_written_on_slack_stored_and_searchable(tiny_qwen, tmp_path):
    rt, out = _runtime(tiny_qwen, tmp_path, window=40, captions=True, caption_tokens=6)
    _feed(rt, 12)
    caps = [e for e in out if isinstance(e, ev.Caption)]
    sealed = [e for e in out if isinstance(e, ev.SegmentSealed)]
    assert caps and len(caps) + rt.captioner.stats.skipped == len(sealed)
    # all frames were queued before the first step, so ingest left no slack until they were in: every caption
    # came after the last seal
    last_seal = max(i for i, e in enumerate(out) if isinstance(e, ev.SegmentSealed))
    assert min(i for i, e in enumerate(out) if isinstance(e, ev.Caption)) > last_seal
    rows = rt.store.segments(rt.session_id)
    captioned = [r for r in rows if "Caption: " in r["text"]]
    assert len(captioned) == len(caps) and caps[0].text in captioned[0]["text"]
    word = next((w for c in caps for w in c.text.split() if w.isalpha() and len(w) > 3), None)
    if word is not None:                                   # random weights: search by whatever word it wrote
        assert any(word in h.text for h in rt.memory.search(word, rt.stream_t, k=10))
    s = rt.summary()
    assert s["captions"] == len(caps) and s["caption_s_per_stream_hour"] > 0


def test_caption_every_n_seconds_thins_them(tiny_qwen):
    rt, out = _runtime(tiny_qwen, window=40, captions=True, caption_tokens=2, caption_every_s=1000.0)
    _feed(rt, 12)
    assert len([e for e in out if isinstance(e, ev.Caption)]) + rt.captioner.stats.skipped == 1


def test_the_cli_runs_perception_beside_a_vlm(capsys, monkeypatch, tmp_path, tiny_qwen, tiny_qwen_dir):
    """Through the threads: frames go on as pixels (patchified on the perception thread), the perceivers beside
    them read the sign, the stored index holds what they read, and `sessions show` prints it."""
    import threading

    from model.qwen_vl import QwenVLBackend
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    model_dir = tiny_qwen_dir
    patchified_on: list[str] = []                        # which thread made each pair's patches
    real = QwenVLBackend.patchify
    monkeypatch.setattr(QwenVLBackend, "patchify",
                        lambda self, *a, **k: (patchified_on.append(threading.current_thread().name),
                                               real(self, *a, **k))[1])
    assert main(["run", "--source", "synthetic:short", "--model", str(model_dir), "--headless", "--fast",
                 "--no-audio", "--window", "200"]) == 0
    assert patchified_on == ["onlooker-perceive"] * 6    # off the runtime's thread, which launches the kernels
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    seen = [r for r in records if r["type"] == "observation"]
    assert seen and all(r["text"] for r in seen)
    s = records[-1]
    assert s["visual_groups"] == 6 and s["perception_skipped"] == 0       # --fast: every frame perceived
    assert main(["sessions", "show", "latest"]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert any("Text on screen" in r["text"] for r in shown if r["type"] == "segment")


def test_spoken_questions_on_the_vlm_path(tiny_qwen):
    """What is heard goes in between frame pairs as text, and a sentence addressed to the assistant asks."""
    rt, out = _runtime(tiny_qwen)
    scene = SyntheticScene("short")
    for i in range(8):
        rt.submit(ev.ObservationEvent(Observation(i * 0.5, perceived=False, image=scene.render(i * 0.5))))
        if i == 4:
            rt.submit(ev.TranscriptEvent(1.6, 2.0, "Onlooker, what is on the sign?"))
    rt.submit(ev.StreamEnded())
    while not rt.finished:
        rt.step()
    asked = [e for e in out if isinstance(e, ev.QuestionStarted)]
    answers = [e for e in out if isinstance(e, ev.Answer)]
    assert [q.question for q in asked] == ["what is on the sign?"] and len(answers) == 1
    assert rt.summary()["transcripts"] == 1 and rt.summary()["visual_groups"] == 4


def test_a_stored_vlm_session_answers_onlooker_ask(capsys, monkeypatch, tmp_path, tiny_qwen, tiny_qwen_dir):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))
    model_dir = tiny_qwen_dir
    assert main(["run", "--source", "synthetic:short", "--model", str(model_dir), "--headless", "--fast",
                 "--no-audio", "--window", "60"]) == 0
    capsys.readouterr()
    assert main(["ask", "--json", "What was on the sign at 0:02?"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["type"] == "answer" and rec["time_ref"] == "point" and rec["retrieved"]
    assert rec["missing_segments"] == 0
    from safetensors import safe_open
    files = list((tmp_path / "data").rglob("segment-*.safetensors"))
    assert files
    for path in files:                                   # sealed KV is int8 on the VLM path unless set otherwise
        with safe_open(str(path), framework="pt") as f:
            assert f.get_tensor("keys").dtype == torch.int8 and "key_scale" in f.keys()


def test_sealed_kv_is_int8_on_the_vlm_path_unless_set():
    from assistant.config import AssistantConfig
    cfg = AssistantConfig()
    assert cfg.memory.quantize is None
    assert cfg.memory_for(True).quantize is True and cfg.memory_for(False).quantize is False
    cfg.memory.quantize = False                          # `quantize = false` in [memory]
    assert cfg.memory_for(True).quantize is False
    cfg.memory.quantize = True                           # --int8
    assert cfg.memory_for(False).quantize is True and cfg.memory_for(True).quantize is True


def test_a_question_sees_the_pairs_still_waiting_for_their_batch(tiny_qwen):
    """A GPU replay batches pairs (and pipelines the batches): a question at 5.2 s is answered from memory holding
    every complete pair before it, up to 4.5 s, not from the last full batch; the lone frame at 5.0 waits."""
    memory = HierarchicalMemory(tiny_qwen, MemoryConfig(segment_seconds=2.0))
    rt = Runtime(tiny_qwen, memory, ReasoningConfig(max_new_tokens=2), [].append, asks=[(5.2, "What is on screen?")],
                 visual=VisualConfig(batch_groups=4, pipeline=True))
    seen, context = [], memory.context

    def spy(question, t):
        seen.append(max((c.t1 for w in memory.window for c in w.chunks), default=-1.0))
        return context(question, t)
    memory.context = spy
    _feed(rt, 8)
    assert seen == [4.5]
    assert rt.visual is not None and rt.visual.stats.groups == 8 and not rt.visual.pending
