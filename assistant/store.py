"""Stored sessions: one SQLite database (through sqlite-utils) under the user data dir.

    <data_dir>/onlooker.db          tables: sessions, segments, questions     (mode 0600)
    <data_dir>/sessions/<id>/kv/    spilled segment KV, one safetensors file each (mode 0700 dir, 0600 files)

Owner-only permissions: a camera assistant records people. Writes happen on the runtime thread
only; the store is not shared between threads. Opening fails with `StoreError` (one line a user can act
on: not writable, owned by another user, read-only, damaged). A write that fails mid-run (disk full)
switches writing off with one warning; what was written stays.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from memory.index import SegmentIndex, create_segment_table
from model.chunk import format_time

log = logging.getLogger("onlooker.store")


class SessionNotFound(KeyError):
    pass


class StoreError(Exception):
    """The session store cannot be used; the message is one line a user can act on."""


def _os_reason(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "it is on a read-only filesystem"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno == errno.ENOSPC:
        return "the disk is full"
    if e.errno in (errno.ENOTDIR, errno.EEXIST):
        return "a file is in the way of the directory"
    return e.strerror or str(e)


def default_data_dir() -> Path:
    from platformdirs import user_data_dir
    return Path(os.environ.get("ONLOOKER_DATA_DIR") or user_data_dir("onlooker"))


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir
    return Path(os.environ.get("ONLOOKER_CACHE_DIR") or user_cache_dir("onlooker"))


@dataclass
class SessionInfo:
    session_id: str
    started: float
    ended: float | None
    source: str
    model: str
    num_segments: int
    num_questions: int
    status: str = "done"         # running | done | interrupted (its process died: kill -9, power loss)


class SessionStore:
    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir)
        self.write_error: str | None = None
        path = self.data_dir / "onlooker.db"
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            st = self.data_dir.stat()
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                raise StoreError(f"the data directory {self.data_dir} belongs to another user (uid {st.st_uid}); "
                                 f"use your own (ONLOOKER_DATA_DIR)")
            os.chmod(self.data_dir, 0o700)
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(path, 0o600)
            probe = self.data_dir / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"cannot store sessions in {self.data_dir}: {_os_reason(e)} "
                             f"(set ONLOOKER_DATA_DIR to a writable directory)") from None
        # created on the main thread, written by the runtime thread, never by two at once
        try:
            conn = sqlite3.connect(path, check_same_thread=False)
            conn.execute("pragma journal_mode=wal")
            conn.execute("pragma synchronous=normal")
            self.db = sqlite_utils.Database(conn)
            self._create_tables()
            self._mark_interrupted()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"the session index {path} is damaged ({e}); move it aside to start a new one "
                             f"(`onlooker ask` can still read the old sessions' segment files)") from None

    def _write(self, what: str, fn, *args, **kwargs) -> None:
        """A write that may fail mid-run (disk full): warn once, stop writing, keep going."""
        if self.write_error is not None:
            return
        try:
            fn(*args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            self.write_error = f"{what}: {e}"
            log.warning("could not store %s (%s); nothing more is written this session, what was written stays",
                        what, e)

    def _create_tables(self) -> None:
        columns = {"id": str, "started": float, "ended": float, "source": str, "model": str, "model_spec": str,
                   "summary": str, "pid": int, "status": str}
        self.db["sessions"].create(columns, pk="id", if_not_exists=True)
        for name, kind in columns.items():     # databases written by an older version gain new columns
            if name not in self.db["sessions"].columns_dict:
                self.db["sessions"].add_column(name, kind)
        create_segment_table(self.db)
        self.db["questions"].create(
            {"id": int, "session_id": str, "t": float, "question": str, "answer": str, "ttft_ms": float,
             "total_ms": float, "asked_wall": float},
            pk="id", foreign_keys=[("session_id", "sessions", "id")], if_not_exists=True)
        self.db["questions"].create_index(["session_id"], if_not_exists=True)

    def _mark_interrupted(self) -> None:
        """A session left "running" by a process that is gone (killed, crashed, power lost) is marked
        interrupted, ending when its last segment or answer reached the disk; it stays answerable."""
        for row in list(self.db["sessions"].rows_where("ended is null")):
            if row.get("pid") and process_alive(int(row["pid"])):
                continue
            for tmp in self.session_dir(row["id"]).rglob("*.tmp"):      # a write cut off before its rename
                tmp.unlink(missing_ok=True)
            files = [p.stat().st_mtime for p in self.session_dir(row["id"]).rglob("*") if p.is_file()]
            ended = max([row["started"], *files])
            self.db["sessions"].update(row["id"], {"ended": ended, "status": "interrupted"})
            log.warning("session %s did not end cleanly; marked interrupted", row["id"])

    # -- writing ------------------------------------------------------------------------------
    def start(self, source: str, model: str, model_spec: str = "lite") -> str:
        session_id = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]
        try:
            self.db["sessions"].insert({"id": session_id, "started": time.time(), "ended": None,
                                        "source": source, "model": model, "model_spec": model_spec,
                                        "summary": None, "pid": os.getpid(), "status": "running"})
            d = self.session_dir(session_id)
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o700)
        except OSError as e:
            raise StoreError(f"cannot start a session in {self.data_dir}: {_os_reason(e)}") from None
        except sqlite3.Error as e:
            raise StoreError(f"cannot start a session in {self.data_dir}: {e}") from None
        return session_id

    def segment_index(self, session_id: str) -> SegmentIndex:
        return SegmentIndex(self.db, session_id)

    def add_answer(self, session_id: str, t: float, question: str, answer: str, ttft_ms: float,
                   total_ms: float) -> None:
        self._write("an answer", self.db["questions"].insert,
                    {"session_id": session_id, "t": t, "question": question, "answer": answer,
                     "ttft_ms": ttft_ms, "total_ms": total_ms, "asked_wall": time.time()})

    def add_alert(self, session_id: str, t: float, condition: str, text: str, thumbnail: str | None = None) -> None:
        self._write("an alert", self.db["alerts"].insert,
                    {"session_id": session_id, "t": t, "condition": condition, "text": text, "wall": time.time(),
                     "thumbnail": thumbnail}, alter=True)

    def save_thumbnail(self, session_id: str, t: float, image) -> str | None:
        """A small JPEG of the frame an alert was seen in (<session>/alerts/), written atomically; its path,
        or None when it could not be written (storage off, disk full: the alert goes out without it)."""
        import cv2
        if self.write_error is not None:
            return None
        h, w = image.shape[:2]
        scale = min(1.0, 320 / max(h, w))
        small = cv2.resize(image, (max(1, int(w * scale)), max(1, int(h * scale))), interpolation=cv2.INTER_AREA)
        path = self.session_dir(session_id) / "alerts" / f"alert-{int(t * 1000):09d}.jpg"
        try:
            ok, data = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                return None
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data.tobytes())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as e:
            log.warning("could not write the alert thumbnail %s (%s)", path.name, e)
            return None
        return str(path)

    def finish(self, session_id: str, summary: str) -> None:
        self._write("the session summary", self.db["sessions"].update, session_id,
                    {"ended": time.time(), "summary": summary, "status": "done"})

    # -- reading ------------------------------------------------------------------------------
    def session_dir(self, session_id: str) -> Path:
        return self.data_dir / "sessions" / session_id

    def session(self, session_id: str) -> dict:
        return self.db["sessions"].get(session_id)

    def list(self) -> list[SessionInfo]:
        rows = self.db.query("""
            select s.id, s.started, s.ended, s.source, s.model, s.status,
                   (select count(*) from segments g where g.session_id = s.id) as nseg,
                   (select count(*) from questions q where q.session_id = s.id) as nq
            from sessions s order by s.started""")
        return [SessionInfo(r["id"], r["started"], r["ended"], r["source"], r["model"], r["nseg"], r["nq"],
                            r["status"] or ("done" if r["ended"] else "running")) for r in rows]

    def resolve(self, session_id: str) -> str:
        if session_id == "latest":
            infos = self.list()
            if not infos:
                raise SessionNotFound(session_id)
            return infos[-1].session_id
        if not list(self.db["sessions"].rows_where("id = ?", [session_id])):
            raise SessionNotFound(session_id)
        return session_id

    def segments(self, session_id: str) -> list[dict]:
        return list(self.db["segments"].rows_where("session_id = ?", [session_id], order_by="t0"))

    def alerts(self, session_id: str) -> list[dict]:
        if "alerts" not in self.db.table_names():
            return []
        return list(self.db["alerts"].rows_where("session_id = ?", [session_id], order_by="t"))

    def questions(self, session_id: str) -> list[dict]:
        return list(self.db["questions"].rows_where("session_id = ?", [session_id], order_by="id"))

    def remove(self, session_id: str) -> list[str]:
        """Delete a session: its rows, then its files. Returns what could not be deleted (empty: all gone)."""
        session_id = self.resolve(session_id)
        with self.db.conn:
            self.db["segments"].delete_where("session_id = ?", [session_id])
            self.db["questions"].delete_where("session_id = ?", [session_id])
            if "alerts" in self.db.table_names():
                self.db["alerts"].delete_where("session_id = ?", [session_id])
            self.db["sessions"].delete(session_id)
        failed: list[str] = []

        def onerror(_fn, path, exc_info) -> None:
            failed.append(f"{path} ({_os_reason(exc_info[1]) if isinstance(exc_info[1], OSError) else exc_info[1]})")

        d = self.session_dir(session_id)
        if d.exists():
            shutil.rmtree(d, onerror=onerror)
        return failed


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                  # someone else's process has that pid now
        return True
    return True


def format_session_list(infos: list[SessionInfo]) -> str:
    if not infos:
        return "no stored sessions"
    lines = [f"{'ID':<24} {'STARTED':<19} {'LENGTH':>8} {'SEGS':>5} {'QS':>4}  SOURCE"]
    for s in infos:
        length = format_time(s.ended - s.started) if s.ended else "running"
        if s.status == "interrupted":
            length += "*"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.started))
        lines.append(f"{s.session_id:<24} {started:<19} {length:>8} {s.num_segments:>5} {s.num_questions:>4}  "
                     f"{s.source}")
    if any(s.status == "interrupted" for s in infos):
        lines.append("* interrupted: its process ended without closing it (killed, crashed); what reached the "
                     "disk is kept and answerable")
    return "\n".join(lines)
