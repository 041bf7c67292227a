"""`onlooker ask`: answer a question from a stored session, its index and spilled KV, no source needed.

What can still be answered is answered: a damaged index falls back to the segment files (each carries its
own times and text), and a missing or corrupt segment file is named and skipped.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

from assistant.config import AssistantConfig
from assistant.store import SessionNotFound, SessionStore, StoreError, default_cache_dir, default_data_dir
from memory.embed import load_embedder
from memory.segments import Segment
from memory.stored import open_stored, segments_from_files, segments_from_index
from model.loading import load_backend
from reasoning import prompts
from reasoning.answerer import answer


class AskError(Exception):
    """Bad input for `ask` (unknown session, nothing stored); one line, exit 2."""


@dataclass
class StoredAnswer:
    session_id: str
    t: float
    question: str
    text: str
    time_ref: str | None
    retrieved: list[list[float]]
    missing_segments: int
    ttft_ms: float
    total_ms: float
    record_error: str | None


def warn(line: str) -> None:
    print(f"onlooker: warning: {line}", file=sys.stderr)


def _session_from_dirs(data_dir: Path, session: str) -> str:
    root = data_dir / "sessions"
    ids = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if session == "latest" and ids:
        return ids[-1]
    if session in ids:
        return session
    raise AskError(f"no session {session!r} under {root}")


def ask_stored(cfg: AssistantConfig, session: str, question: str, model: str | None, device: str) -> StoredAnswer:
    data_dir = Path(cfg.data_dir) if cfg.data_dir else default_data_dir()
    store: SessionStore | None = None
    try:
        store = SessionStore(data_dir)
        try:
            sid = store.resolve(session)
        except SessionNotFound:
            raise AskError(f"no session {session!r}; run `onlooker sessions` to list them") from None
        spec = model or store.session(sid).get("model_spec") or "lite"
    except (StoreError, sqlite3.DatabaseError) as e:
        warn(f"{e}; reading the session's segment files instead")
        store = None
        sid = _session_from_dirs(data_dir, session)
        spec = model or "lite"
    backend = load_backend(spec, device, default_cache_dir())
    label = f"session {sid}"
    segments: list[Segment] = []
    if store is not None:
        try:
            segments = segments_from_index(store.segment_index(sid), backend.kv_shape)
        except sqlite3.DatabaseError as e:
            warn(f"{label}: the index is damaged ({e}); reading its segment files instead")
            store = None
    if store is None:
        segments, problems = segments_from_files(data_dir / "sessions" / sid / "kv")
        for p in problems:
            warn(f"{label}: {p}; skipped")
    if not segments:
        raise AskError(f"{label} has no stored segments to answer from")
    embedder = load_embedder() if cfg.memory.use_embeddings else None
    memory = open_stored(backend, cfg.memory_for(backend.accepts_frames), segments, prompts.system_chunk(backend),
                         embedder=embedder, label=label)
    now = max(s.t1 for s in segments)
    job, view = answer(backend, memory, question, now, latest=(segments[-1].t0, segments[-1].text),
                       restate=cfg.memory.restate, **cfg.reasoning.decoding())
    for note in view.notes:
        warn(note)
    text = job.text.strip()
    record_error = None
    if store is not None:
        store.add_answer(sid, now, question, text, job.ttft_ms or 0.0, job.total_ms or 0.0)
        record_error = store.write_error
    r = view.retrieval
    time_ref = None if r is None or r.time_ref is None else r.time_ref.kind
    return StoredAnswer(sid, round(now, 3), question, text, time_ref,
                        [[round(s.t0, 3), round(s.t1, 3)] for s in view.placed], len(view.notes),
                        round(job.ttft_ms or 0.0, 1), round(job.total_ms or 0.0, 1), record_error)
