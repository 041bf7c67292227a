"""When to speak: standing instructions ("tell me when a person appears") watched over the stream.

After each ingested chunk, every standing instruction gets a score in [0, 1]:

    model     P(yes) read from the next-token logits of a yes/no probe prefilled on a fork of the
              current context (no generation, the cached stream is reused as it is)
    evidence  what perception already knows, read from the typed Observation's fields when the condition
              names it: a word it must read (quoted or in capitals: 'the sign says "STOP"'), people or
              faces being visible
    score     evidence_weight * evidence + (1 - evidence_weight) * model   (model alone without evidence)

An alert fires when the score crosses `on` while armed; it re-arms only after the score has fallen
below `off` (hysteresis) and `cooldown_s` of stream time has passed, so one event gives one alert. When no
evidence applies (the condition names nothing perception reads, or no perceiver ran: the VLM deciding from
its own pixels), the model's P(yes) alone is held to `probe_on` / `probe_off` instead.
Plain synchronous code: the runtime calls `Watcher.update` on its own thread.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from model.backend import Backend
from perception.observation import Observation
from reasoning import prompts

_PEOPLE = re.compile(r"\b(person|people|someone|somebody|anyone|anybody|man|woman|human|visitor)s?\b")
_FACE = re.compile(r"\bfaces?\b")


@dataclass
class TimingConfig:
    on: float = 0.6                  # fire at or above this score
    off: float = 0.4                 # re-arm below this score
    cooldown_s: float = 8.0          # at least this much stream time between two alerts of one instruction
    evidence_weight: float = 0.7     # share of perception evidence in the score, when the condition has some
    probe_on: float = 0.6            # fire / re-arm thresholds for the probe alone (no evidence)
    probe_off: float = 0.4


@dataclass(frozen=True)
class Fire:
    """An instruction whose score crossed `on`: the runtime turns it into an alert event."""
    t: float
    condition: str
    score: float
    evidence: float | None


def condition_words(condition: str) -> list[str]:
    """Words the scene must show: quoted ('"STOP"') or written in capitals (STOP)."""
    quoted = re.findall(r"[\"“']([^\"”']+)[\"”']", condition)
    if quoted:
        return [w.upper() for q in quoted for w in re.findall(r"[A-Za-z0-9]+", q)]
    return [w for w in re.findall(r"\b[A-Z][A-Z0-9]{1,}\b", condition)]


def evidence(condition: str, obs: Observation | None) -> float | None:
    """1.0 / 0.0 when perception can tell from the observation's fields, None when the condition names
    nothing it reads (or no perceiver ran)."""
    if obs is None or not obs.perceived:
        return None
    checks: list[bool] = []
    words = condition_words(condition)
    if words:
        text = obs.text.upper()
        checks.append(all(re.search(rf"\b{re.escape(w)}\b", text) for w in words))
    if _PEOPLE.search(condition.lower()):
        checks.append(obs.people > 0)
    elif _FACE.search(condition.lower()):
        checks.append(obs.faces > 0)
    if not checks:
        return None
    return 1.0 if all(checks) else 0.0


def yes_no_ids(tokenizer) -> tuple[list[int], list[int]]:
    def ids(words: list[str]) -> list[int]:
        out = set()
        for w in words:
            toks = tokenizer(w, add_special_tokens=False)["input_ids"]
            if len(toks) == 1:
                out.add(toks[0])
        return sorted(out)
    return ids(["yes", "Yes", " yes", " Yes", "YES"]), ids(["no", "No", " no", " No", "NO"])


def p_yes(logits: torch.Tensor, yes: list[int], no: list[int]) -> float:
    ly = torch.logsumexp(logits[yes].float(), 0)
    ln = torch.logsumexp(logits[no].float(), 0)
    return float(1.0 / (1.0 + math.exp(float(ln - ly))))


@dataclass
class Watch:
    condition: str
    armed: bool = True
    last_alert_t: float = -math.inf
    scores: list[tuple[float, float]] = field(default_factory=list)    # (t, score)


class Watcher:
    """Standing instructions and their alert state."""

    def __init__(self, backend: Backend, config: TimingConfig | None = None) -> None:
        self.backend = backend
        self.config = config or TimingConfig()
        self.watches: list[Watch] = []
        self.yes, self.no = yes_no_ids(backend.tokenizer)
        self.probes = 0

    def add(self, condition: str) -> None:
        if condition.strip() and all(w.condition != condition.strip() for w in self.watches):
            self.watches.append(Watch(condition.strip()))

    def remove(self, condition: str | None = None) -> None:
        self.watches = [] if condition is None else [w for w in self.watches if w.condition != condition]

    def model_score(self, context, t: float, condition: str) -> float:
        """P(yes) of the probe on a fork of `context` (a memory ContextView); nothing is generated."""
        chunk = prompts.probe_chunk(self.backend, t, condition)
        logits = self.backend.prefill(chunk, context.cache, context.next_pos)
        self.probes += 1
        return p_yes(logits, self.yes, self.no)

    def update(self, t: float, obs: Observation | None, context_fn) -> list[Fire]:
        """Score every instruction after a new chunk at stream time `t`; returns the ones that fire.
        `context_fn()` gives a fresh fork of the memory context (called once per instruction)."""
        alerts: list[Fire] = []
        cfg = self.config
        for w in self.watches:
            ev = evidence(w.condition, obs)
            model = self.model_score(context_fn(), t, w.condition)
            score = model if ev is None else cfg.evidence_weight * ev + (1 - cfg.evidence_weight) * model
            on, off = (cfg.probe_on, cfg.probe_off) if ev is None else (cfg.on, cfg.off)
            w.scores.append((t, score))
            if not w.armed and score < off:
                w.armed = True
            if w.armed and score >= on and t - w.last_alert_t >= cfg.cooldown_s:
                w.armed = False
                w.last_alert_t = t
                alerts.append(Fire(t, w.condition, score, ev))
        return alerts
