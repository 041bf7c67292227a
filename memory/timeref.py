"""Explicit time references in a question, resolved to stream time.

    "at 2:10", "around 1:02:03", "at minute 3", "90 seconds in"        -> point
    "two minutes ago", "a minute and 20 seconds ago", "half a minute ago" -> point (now - d)
    "at the start", "at the beginning", "first"                        -> point 0
    "between 1:00 and 2:00", "in the first minute", "in the last 30 s" -> range
    "just before the alarm", "right after MANGO"                       -> anchor (found by content)
    "now", "right now", "currently"                                    -> now

Plain code on the question text; no model. Returns None when the question names no time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40,
    "forty-five": 45, "fifty": 50, "sixty": 60, "ninety": 90, "a couple of": 2, "a few": 3, "half a": 0.5,
    "half an": 0.5,
}
_UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60,
          "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600}

_NUM = r"(\d+(?:\.\d+)?|" + "|".join(sorted((re.escape(k) for k in _NUMBERS), key=len, reverse=True)) + r")"
_UNIT = r"(seconds?|secs?|s|minutes?|mins?|m|hours?|h)"
_CLOCK = r"(\d{1,2}):(\d{2})(?::(\d{2}))?"

_RE_RANGE = re.compile(rf"\b(?:between|from)\s+{_CLOCK}\s+(?:and|to|until)\s+{_CLOCK}")
_RE_FIRST_LAST = re.compile(rf"\b(?:in|during|over)\s+the\s+(first|last|past)\s+(?:{_NUM}\s+)?{_UNIT}\b")
_RE_AGO = re.compile(rf"\b{_NUM}\s+{_UNIT}(?:\s+and\s+{_NUM}\s+{_UNIT})?\s+ago\b")
_RE_ANCHOR = re.compile(r"\b(?:just|right|shortly|immediately|directly)?\s*(before|after)\s+(.+?)\s*[?.!]*$")
_RE_CLOCK = re.compile(rf"\b{_CLOCK}\b")
_RE_MINUTE = re.compile(rf"\bat\s+minute\s+{_NUM}\b")
_RE_IN = re.compile(rf"\b{_NUM}\s+{_UNIT}\s+(?:in|into)\b")
_RE_START = re.compile(r"\b(?:at|in)\s+the\s+(?:very\s+)?(?:start|beginning)\b|\bat first\b|\bfirst thing\b")
_RE_NOW = re.compile(r"\b(?:right now|now|currently|at the moment|at present|at this moment)\b")


@dataclass(frozen=True)
class TimeRef:
    kind: str                     # "point" | "range" | "anchor" | "now"
    t: float = 0.0                # point, or range start
    t_end: float = 0.0            # range end
    anchor: str = ""              # anchor: the content to find
    direction: str = ""           # anchor: "before" | "after"


def _num(s: str) -> float:
    s = s.strip().lower()
    return float(_NUMBERS[s]) if s in _NUMBERS else float(s)


def _clock(h_or_m: str, m_or_s: str, s: str | None) -> float:
    if s is not None:
        return int(h_or_m) * 3600 + int(m_or_s) * 60 + int(s)
    return int(h_or_m) * 60 + int(m_or_s)


def parse_time_ref(question: str, now: float) -> TimeRef | None:
    q = " ".join(question.lower().split())
    if m := _RE_RANGE.search(q):
        a, b = _clock(*m.group(1, 2, 3)), _clock(*m.group(4, 5, 6))
        return TimeRef("range", min(a, b), max(a, b))
    if m := _RE_FIRST_LAST.search(q):
        d = (_num(m.group(2)) if m.group(2) else 1.0) * _UNITS[m.group(3)]
        return TimeRef("range", 0.0, d) if m.group(1) == "first" else TimeRef("range", max(0.0, now - d), now)
    if m := _RE_AGO.search(q):
        d = _num(m.group(1)) * _UNITS[m.group(2)]
        if m.group(3):
            d += _num(m.group(3)) * _UNITS[m.group(4)]
        return TimeRef("point", max(0.0, now - d))
    anchor = _RE_ANCHOR.search(q)
    if anchor and not _RE_CLOCK.search(anchor.group(2)):
        # "just before the alarm": the content is found by the retriever; cut polite tails off the anchor
        text = re.sub(r"\b(?:was|is|appeared|appears|showed|shown|happened)\b.*$", "", anchor.group(2)).strip()
        if text:
            return TimeRef("anchor", anchor=text, direction=anchor.group(1))
    if m := _RE_CLOCK.search(q):
        t = _clock(*m.group(1, 2, 3))
        if anchor:   # "just before 2:10" -> a moment before it
            t = max(0.0, t - 1.0) if anchor.group(1) == "before" else t + 1.0
        return TimeRef("point", t)
    if m := _RE_MINUTE.search(q):
        return TimeRef("point", _num(m.group(1)) * 60)
    if m := _RE_IN.search(q):
        return TimeRef("point", _num(m.group(1)) * _UNITS[m.group(2)])
    if _RE_START.search(q):
        return TimeRef("point", 0.0)
    if _RE_NOW.search(q):
        return TimeRef("now", now)
    return None
