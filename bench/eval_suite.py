"""The held-out suite of `onlooker eval`: scenes, questions, standing instructions, and how each is scored.

What is held out, and from what (write new uses down here):
  words      the "eval" split of perception.synthetic (crc32 % 10 == 1): never trained on (tiny-vl trains on
             "train"), never in a test or another benchmark (they use "heldout" or the demo's WORDS)
  scenes     SignScene.random(seed, 60, "eval") with seeds 1001-1040 (EVAL_SEEDS). Other seeds in use: the tests
             3, 21-24, 44-47; bench.tiny_vl_path 61-65; looked at while training tiny-vl 11-15, 31-35, 41-43
  phrasings  PHRASINGS below. No prompt, threshold or rule was chosen on them: the prompts, the watcher's
             thresholds and the restate rule were set before this suite existed, on the demo's and the tests'
             phrasings ("What word is on the sign?", "What did the sign say at 0:05?", ...), which use "sign";
             these say "board"
Development split: seeds 1041-1050 (DEV_SEEDS) with the same words may be looked at to debug the suite; they
are never scored.

Question types (each asked in every scene where the scene allows it; times are mid-interval, so a 2-s
sampling step never makes the right answer ambiguous):
  now          the word on the board now                          right: the word (and no other of the scene's)
  past_time    the word at a time 25 s or more before the asking  right: the word then (the same)
  past_content was W ever on the board (half present, half not)   right: yes / no
  when         when did the board show W                          right: its first m:ss inside W's interval (+-1 s)
  before_after the word right before / after W                    right: that word (the same)
  count        how many different words so far                    right: the number
Standing instructions: the board showing a word that comes later in the scene, and a person walking in;
an alert is a hit within 5 s of the event's start, false when the condition was not true (2 s of grace).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, replace

from perception.synthetic import SignScene, words
from reasoning.prompts import format_time

EVAL_SEEDS = list(range(1001, 1041))
DEV_SEEDS = list(range(1041, 1051))
SUITES = {"quick": EVAL_SEEDS[:2], "full": EVAL_SEEDS[:10]}
DURATION = 60.0
ASK_END = 57.0            # past questions are asked from here on, one per second (the stream ends at 60 s)

PHRASINGS = {
    "now": "Which word is written on the board right now?",
    "past_time": "Which word was written on the board at {t}?",
    "past_content": "Was the word {w} ever written on the board?",
    "when": "At what time was {w} written on the board?",
    "before": "Which word was on the board just before {w}?",
    "after": "Which word was on the board just after {w}?",
    "count": "How many different words has the board shown so far?",
    "watch_word": 'the board shows "{w}"',
    "watch_person": "a person walks into view",
    "poll_word": "Does the board show {w} right now? Answer yes or no.",
}

WORD_KINDS = ("now", "past_time", "before_after")    # answered with a word of the board: naming another is wrong


@dataclass(frozen=True)
class Ask:
    t: float
    kind: str
    question: str
    want: str                          # the word, "yes"/"no", a number, or "t0-t1" for `when`
    others: tuple[str, ...] = ()       # the scene's other words: an answer naming one of them too is wrong
    subject: str = ""                  # past_content: the word asked about


@dataclass(frozen=True)
class Watch:
    kind: str                          # "word" or "person"
    condition: str
    events: tuple[tuple[float, float], ...]      # when the condition was true
    word: str = ""                     # "word": the word the board must show


def scene(seed: int) -> SignScene:
    return SignScene.random(seed, DURATION, "eval")


def asks(sc: SignScene, seed: int) -> list[Ask]:
    """The questions for one scene, at stream times; a fixed function of the seed."""
    rng = random.Random(seed * 7 + 1)
    long = [s for s in sc.signs if s.t1 - s.t0 >= 4.0]
    out = [Ask(round((s.t0 + s.t1) / 2, 1), "now", PHRASINGS["now"], s.word) for s in long if s.t1 <= ASK_END][:3]
    t = ASK_END
    past = [s for s in long if (s.t0 + s.t1) / 2 <= ASK_END - 25.0]
    for s in rng.sample(past, min(2, len(past))):
        mid = int((s.t0 + s.t1) / 2)
        out.append(Ask(t, "past_time", PHRASINGS["past_time"].format(t=format_time(mid)), s.word))
        t += 0.5
    shown = [s for s in sc.signs if s.t1 <= ASK_END - 15.0]
    seen = {s.word for s in sc.signs}
    if shown:
        present = rng.choice(shown).word
        absent = rng.choice([w for w in words("eval") if w not in seen])
        for w, yes in rng.sample([(present, "yes"), (absent, "no")], 2):
            out.append(Ask(t, "past_content", PHRASINGS["past_content"].format(w=w), yes, subject=w))
            t += 0.5
        s = rng.choice(shown)
        out.append(Ask(t, "when", PHRASINGS["when"].format(w=s.word), f"{s.t0:g}-{s.t1:g}"))
        t += 0.5
    idx = [i for i, s in enumerate(sc.signs) if 0 < i < len(sc.signs) - 1 and sc.signs[i + 1].t1 <= ASK_END]
    if idx:
        i = rng.choice(idx)
        which = rng.choice(["before", "after"])
        want = sc.signs[i - 1].word if which == "before" else sc.signs[i + 1].word
        out.append(Ask(t, "before_after", PHRASINGS[which].format(w=sc.signs[i].word), want))
        t += 0.5
    distinct = len({s.word for s in sc.signs if s.t0 < t - 2.0})
    out.append(Ask(t, "count", PHRASINGS["count"], str(distinct)))
    board = tuple(sorted(seen))
    return [replace(a, others=board) if a.kind in WORD_KINDS else a for a in out]


def watches(sc: SignScene) -> list[Watch]:
    later = [s for s in sc.signs if 15.0 <= s.t0 <= DURATION - 6.0]
    out = []
    if later:
        w = later[len(later) // 2].word
        out.append(Watch("word", PHRASINGS["watch_word"].format(w=w),
                         tuple((s.t0, s.t1) for s in sc.signs if s.word == w), w))
    out.append(Watch("person", PHRASINGS["watch_person"], tuple(sc.people)))
    return out


_CLOCK = re.compile(r"\b(?:(\d+):)?(\d{1,2}):(\d{2})\b")
_NUMBERS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve".split())}


def correct(ask: Ask, answer: str) -> bool:
    text = answer.lower()
    if ask.kind == "when":
        t0, t1 = (float(x) for x in ask.want.split("-"))
        times = [int(h or 0) * 3600 + int(m) * 60 + int(s) for h, m, s in _CLOCK.findall(answer)]
        return bool(times) and t0 - 1 <= times[0] <= t1 + 1          # the first time it names
    if ask.kind == "past_content":
        return yes_no(answer, ask.subject) == ask.want
    if ask.kind == "count":
        said = [int(n) for n in re.findall(r"\b\d+\b", text)] + [_NUMBERS[w] for w in re.findall(r"[a-z]+", text)
                                                                  if w in _NUMBERS]
        return said[:1] == [int(ask.want)]
    def names(w: str) -> bool:
        return re.search(rf"\b{re.escape(w.lower())}\b", text) is not None
    return names(ask.want) and not any(names(w) for w in ask.others if w != ask.want)


def yes_no(answer: str, subject: str = "") -> str | None:
    """A yes/no answer read: "no" when it negates ("The word X was never written"), "yes" when it starts with yes
    or names the word asked about without negating, None for anything else (no answer is a wrong answer)."""
    text = answer.lower()
    if re.search(r"\b(no|not|never|none|nothing|wasn't|isn't|didn't|doesn't)\b", text):
        return "no"
    if text.lstrip(" \"'").startswith("yes") or (subject and re.search(rf"\b{re.escape(subject.lower())}\b", text)):
        return "yes"
    return None


def alert_score(events: tuple[tuple[float, float], ...], alerts: list[float], horizon: float = DURATION,
                within: float = 5.0, grace: float = 2.0) -> dict:
    """Events that start by `horizon - 3` and were alerted within `within` s; alerts outside every event."""
    timed = [(a, b) for a, b in events if a <= horizon - 3.0]
    delays = []
    for a, _ in timed:
        hit = [t - a for t in alerts if a <= t <= a + within]
        if hit:
            delays.append(min(hit))
    false = sum(not any(a <= t <= b + grace for a, b in events) for t in alerts)
    return {"events": len(timed), "hits": len(delays), "alerts": len(alerts), "false": false, "delays": delays}


def prf(rows: list[dict]) -> tuple[float, float, float, float | None]:
    """Precision, recall, F1 and the median delay over the rows of alert_score."""
    events, hits = sum(r["events"] for r in rows), sum(r["hits"] for r in rows)
    alerts, false = sum(r["alerts"] for r in rows), sum(r["false"] for r in rows)
    p = (alerts - false) / alerts if alerts else 0.0
    r = hits / events if events else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    delays = sorted(d for row in rows for d in row["delays"])
    return p, r, f, (delays[len(delays) // 2] if delays else None)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of k right out of n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)
