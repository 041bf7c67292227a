"""Which past segments a question gets: time references, the model's own query-key scores, and text search.

    time reference ("at 2:10", "two minutes ago", "just before MANGO")  -> the segments covering it (on the
        VLM path from the keyframe before it: token drop keeps in a later segment only what changed)
    content: reciprocal-rank fusion of
        - query . representative-key scores (ReKV-style; queries and keys before RoPE, so the score
          does not depend on where a segment sits),
        - cosine similarity of text embeddings (all-MiniLM-L6-v2),
        - IDF-weighted word overlap with the segment's text (exact words such as a name on a sign)

Time-resolved segments come first, then the best content matches, up to `top_k` segments and
`retrieve_tokens` tokens. Segments still in the recent window can be chosen too (their KV is in
context already; their text may be restated beside the question).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from memory.timeref import TimeRef, parse_time_ref

_STOP = set("""a an the is was were are be been being am do does did done of at in on to for from by with about as
into onto and or but if then than that this these those it its it's what which who whom whose when where why how
there here you your i me my we our they them he she his her up down out over under again just right before after
any some all each most more much many no not only own same so too very can will would could should may might
sign say said says read reads show shown showed screen text see saw seen visible tell please time now currently
ago minute minutes second seconds hour hours moment start beginning end first last word words""".split())

RRF_K = 60


def terms(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP and len(w) >= 2]


@dataclass(eq=False)       # compared by identity
class Candidate:
    key: int                               # index into the memory's segment list (window: negative)
    t0: float
    t1: float
    text: str
    tokens: int                            # tokens it adds to the context when placed
    in_window: bool
    rep_key: torch.Tensor | None = None    # (L, Hkv, D)
    embedding: torch.Tensor | None = None  # (E,)


@dataclass
class Retrieval:
    time_ref: TimeRef | None
    selected: list[Candidate]              # in time order; the sealed ones are placed into context
    recalled: list[Candidate]              # restated beside the question (time-resolved or exact word hits)
    scores: dict[str, list[int]] = field(default_factory=dict)   # signal -> candidate keys, best first


@functools.lru_cache(maxsize=8192)
def term_set(text: str) -> frozenset[str]:
    """A text's terms, kept: sealed segments' texts are scored again at every question, and re-reading the 900 of
    an hour of stream took about 33 ms per question on one CPU core. Bounded (a few KB a text): past 8192 texts
    (about 9 hours of the 7B shape's segments) a question's full scan evicts what the next one needs, and scoring
    costs what it did without the cache."""
    return frozenset(terms(text))


def lexical_scores(question: str, texts: list[str]) -> torch.Tensor:
    q = set(terms(question))
    docs = [term_set(t) for t in texts]
    n = len(docs)
    scores = torch.zeros(n)
    for w in q:
        df = sum(w in d for d in docs)
        if df == 0:
            continue
        idf = math.log(1 + n / df)
        for i, d in enumerate(docs):
            if w in d:
                scores[i] += idf
    return scores


def qk_scores(query: torch.Tensor, rep_keys: torch.Tensor) -> torch.Tensor:
    """query (L, Hkv, D) against rep_keys (S, L, Hkv, D) -> (S,), mean scaled dot product."""
    return qk_scale(rep_keys.reshape(rep_keys.shape[0], -1).float() @ query.reshape(-1).float(), query)


def qk_scale(dots: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Raw dot products of rep keys with `query` (L, Hkv, D) -> qk_scores' scale (mean over layers and heads)."""
    return dots / (math.sqrt(query.shape[-1]) * query.shape[0] * query.shape[1])


def _ranking(scores: torch.Tensor, keys: list[int], positive_only: bool = False) -> list[int]:
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    return [keys[i] for i in order if not positive_only or scores[i] > 0]


def resolve_time(ref: TimeRef, cands: list[Candidate], anchor_scores: torch.Tensor | None,
                 keyframe_seconds: float = 0.0) -> list[Candidate]:
    """Candidates (sorted by t0) that a time reference points at; with `keyframe_seconds`, a point or range
    also gets the segments back to the keyframe before it (the last full view of the scene)."""
    if not cands:
        return []
    if ref.kind == "now":
        return []
    if ref.kind in ("point", "range"):
        end = ref.t_end if ref.kind == "range" else ref.t
        covering = _covering(cands, ref.t)
        start = covering.t0
        if keyframe_seconds > 0:
            start = min(start, math.floor(ref.t / keyframe_seconds) * keyframe_seconds)
        return [c for c in cands if c.t1 > start and c.t0 <= end] or [covering]
    # anchor: the best content match, then its neighbour in time
    if anchor_scores is None or float(anchor_scores.max()) <= 0:
        return []
    i = int(torch.argmax(anchor_scores))
    j = i - 1 if ref.direction == "before" else i + 1
    return [cands[j]] if 0 <= j < len(cands) else []


def _covering(cands: list[Candidate], t: float) -> Candidate:
    best = cands[0]
    for c in cands:
        if c.t0 <= t + 1e-6:
            best = c
        else:
            break
    return best


def retrieve(question: str, now: float, cands: list[Candidate], *, query: torch.Tensor | None,
             embed: Callable[[str], torch.Tensor] | None, top_k: int, max_tokens: int,
             keyframe_seconds: float = 0.0, model_scores: torch.Tensor | None = None) -> Retrieval:
    """Rank `cands` for `question` asked at stream time `now`. `query`: the model's pre-RoPE question query
    (L, Hkv, D) or None; `embed`: text -> normalized embedding, or None; `keyframe_seconds`: see resolve_time;
    `model_scores`: the query's qk_scores against each of `cands` (in the order given), when the caller has them
    already (memory.slab.KeyBank)."""
    score_of = {id(c): float(s) for c, s in zip(cands, model_scores, strict=True)} if model_scores is not None \
        else None
    cands = sorted(cands, key=lambda c: c.t0)
    ref = parse_time_ref(question, now)
    if not cands:
        return Retrieval(ref, [], [])
    keys = [c.key for c in cands]
    by_key = {c.key: c for c in cands}
    texts = [c.text for c in cands]

    rankings: dict[str, list[int]] = {}
    lex = lexical_scores(question, texts)
    rankings["text_words"] = _ranking(lex, keys, positive_only=True)
    embeddings = [c.embedding for c in cands if c.embedding is not None]
    has_emb = embed is not None and len(embeddings) == len(cands)
    if embed is not None and has_emb:
        emb = torch.stack(embeddings) @ embed(question)
        worded = {k for k, e in zip(keys, embeddings, strict=True) if bool(e.any())}    # no words: a zero vector
        rankings["text_embedding"] = [k for k in _ranking(emb, keys) if k in worded]
    rep_keys = [c.rep_key for c in cands if c.rep_key is not None]
    if score_of is not None:
        rankings["model_qk"] = _ranking(torch.tensor([score_of[id(c)] for c in cands]), keys)
    elif query is not None and len(rep_keys) == len(cands):
        # sealed segments keep theirs on the host in float16, the window's are live sums: one dtype, one device
        rankings["model_qk"] = _ranking(qk_scores(query, torch.stack([r.to(query.device, torch.float32)
                                                                      for r in rep_keys])), keys)
    fused: dict[int, float] = {}
    for ranking in rankings.values():
        for r, k in enumerate(ranking):
            fused[k] = fused.get(k, 0.0) + 1.0 / (RRF_K + r + 1)
    content = sorted(fused, key=lambda k: -fused[k])

    anchor_scores = None
    if ref is not None and ref.kind == "anchor":
        anchor_scores = lexical_scores(ref.anchor, texts)
        if float(anchor_scores.max()) <= 0 and embed is not None and has_emb:
            anchor_scores = torch.stack(embeddings) @ embed(ref.anchor)
    timed = resolve_time(ref, cands, anchor_scores, keyframe_seconds) if ref is not None else []

    if timed:
        recalled = timed[:top_k] if ref is not None and ref.kind == "range" else timed
    elif ref is None and float(lex.max()) > 0:
        best = float(lex.max())
        recalled = [c for c, s in zip(cands, lex.tolist()) if s >= best - 1e-6][:top_k]
    else:
        recalled = []

    chosen: list[Candidate] = []
    used = 0
    for c in [*recalled, *timed, *(by_key[k] for k in content)]:
        if len(chosen) >= max(top_k, len(recalled)) or c in chosen:
            continue
        cost = 0 if c.in_window else c.tokens
        if used + cost > max_tokens and c not in recalled:
            continue
        chosen.append(c)
        used += cost
    return Retrieval(ref, sorted(chosen, key=lambda c: c.t0), sorted(recalled, key=lambda c: c.t0), rankings)


@dataclass(frozen=True)
class SearchHit:
    t0: float
    t1: float
    text: str


def top_hits(r: Retrieval, cands: list[Candidate], k: int) -> list[SearchHit]:
    """A search's answer: what the time reference recalled, then each signal's best, without repeats."""
    by_key = {c.key: c for c in cands}
    order = [c.key for c in r.recalled] + [key for sig in r.scores.values() for key in sig[:k]]
    out: list[SearchHit] = []
    for key in dict.fromkeys(order):
        if len(out) < k:
            out.append(SearchHit(by_key[key].t0, by_key[key].t1, by_key[key].text))
    return out
