"""Standing instructions: evidence from perception, the yes/no probe, hysteresis and cool-down."""

from __future__ import annotations

import pytest

from memory.config import MemoryConfig
from memory.manager import HierarchicalMemory
from perception.observation import Observation
from reasoning import prompts
from reasoning.timing import TimingConfig, Watcher, condition_words, evidence, p_yes, yes_no_ids


@pytest.mark.parametrize("condition,observation,expected", [
    ('the sign says "STOP"', Observation(0.0, "STOP"), 1.0),
    ('the sign says "STOP"', Observation(0.0, "STOPWATCH"), 0.0),
    ("tell me when the sign says STOP", Observation(0.0, "STOP", people=1), 1.0),
    ("a person appears", Observation(0.0, "TIGER", people=2), 1.0),
    ("someone walks in", Observation(0.0), 0.0),
    ("a face is visible", Observation(0.0, faces=1), 1.0),
    ('a person holds a sign saying "EXIT"', Observation(0.0, "EXIT"), 0.0),   # both must hold
    ("the scene gets dark", Observation(0.0, "EXIT"), None),                   # nothing perception reads
    ('the sign says "STOP"', Observation(0.0, perceived=False), None),        # no perceiver ran (VLM path)
])
def test_evidence_from_observations(condition, observation, expected):
    assert evidence(condition, observation) == expected


def test_condition_words():
    assert condition_words('the sign says "Stop here"') == ["STOP", "HERE"]
    assert condition_words("when EXIT shows") == ["EXIT"]
    assert condition_words("a person appears") == []


class _Scripted(Watcher):
    """The model's P(yes) replaced by a script, to test the state machine alone."""

    def __init__(self, backend, scores, config=None):
        super().__init__(backend, config)
        self._scores = iter(scores)

    def model_score(self, context, t, condition):
        return next(self._scores)


def test_one_event_one_alert_then_rearm_after_off_and_cooldown(lite_backend):
    w = _Scripted(lite_backend, [0.1, 0.9, 0.95, 0.7, 0.9, 0.2, 0.9, 0.3, 0.9],
                  TimingConfig(on=0.6, off=0.4, cooldown_s=5.0, evidence_weight=0.7))
    w.add("the scene gets dark")            # no evidence: the model's score alone
    fired = []
    for t in range(9):
        fired += [a.t for a in w.update(float(t * 2), Observation(float(t * 2)), lambda: None)]
    # 0.9 at t=2 fires; stays high (no re-fire); 0.2 at t=10 re-arms; 0.9 at t=12 fires (cool-down 5 s passed);
    # 0.3 at t=14 re-arms but 0.9 at t=16 is within the cool-down of t=12
    assert fired == [2.0, 12.0]


def test_evidence_outweighs_the_model(lite_backend):
    w = _Scripted(lite_backend, [0.0, 0.0, 1.0], TimingConfig(evidence_weight=0.7))
    w.add('the sign says "STOP"')
    assert [a.t for a in w.update(1.0, Observation(1.0, "STOP"), lambda: None)] == [1.0]
    w2 = _Scripted(lite_backend, [1.0], TimingConfig(evidence_weight=0.7))
    w2.add('the sign says "STOP"')
    assert w2.update(1.0, Observation(1.0, "GO"), lambda: None) == []      # 0.3 < on


def test_probe_reads_p_yes_without_touching_memory(lite_backend):
    b = lite_backend
    mem = HierarchicalMemory(b, MemoryConfig())
    mem.set_sink(prompts.system_chunk(b))
    mem.append(prompts.text_observation_chunk(b, 1.0, 'Text on screen: "STOP".'))
    n = mem.num_tokens
    w = Watcher(b)
    p = w.model_score(mem.context(), 1.0, 'the sign says "STOP"')
    assert 0.0 < p < 1.0 and mem.num_tokens == n and w.probes == 1
    yes, no = yes_no_ids(b.tokenizer)
    assert yes and no and not set(yes) & set(no)
    import torch
    logits = torch.zeros(len(b.tokenizer) + 8)
    logits[yes[0]] = 5.0
    assert p_yes(logits, yes, no) > 0.9
