"""Retention: old sessions removed, oldest first, so stored sessions never fill the disk unattended.

`[storage] max_age_days` removes a session that ended longer ago than that; `max_gb` then removes the oldest
until the sessions' folders together fit. A session still running (its process alive) and the sessions in
`keep` (the one being recorded) are never removed. Run when a session opens and every
`check_every_s` of wall time while it runs (on the runtime thread, which owns the store's writes). Every
removal is logged as a warning, and a removal that leaves files behind names them.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.store import SessionInfo, SessionStore, process_alive

log = logging.getLogger("onlooker.retention")


@dataclass
class StorageConfig:
    max_age_days: float | None = 30.0     # remove sessions that ended longer ago (none = keep forever)
    max_gb: float | None = 20.0           # then remove the oldest until all sessions fit (none = no cap)
    check_every_s: float = 3600.0         # while a session runs, check again this often (wall time)

    def __post_init__(self) -> None:
        for name in ("max_age_days", "max_gb"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be > 0 (or left out for no limit), got {v}")
        if not self.check_every_s > 0:
            raise ValueError(f"check_every_s must be > 0, got {self.check_every_s}")


@dataclass
class RetentionResult:
    removed: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    left_behind: list[str] = field(default_factory=list)     # files a removal could not delete


def folder_bytes(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _removable(store: SessionStore, info: SessionInfo, keep: set[str]) -> bool:
    if info.session_id in keep:
        return False
    if info.ended is None:                  # running: only if its process is gone (marked at the next start)
        pid = store.session(info.session_id).get("pid")
        return bool(pid) and not process_alive(int(pid))
    return True


def enforce(store: SessionStore, config: StorageConfig, keep: set[str] | None = None,
            now: float | None = None) -> RetentionResult:
    """Remove what the limits say, oldest first; returns what was removed and anything left behind."""
    keep = keep or set()
    now = time.time() if now is None else now
    result = RetentionResult()
    infos = store.list()                                    # oldest first
    sizes = {i.session_id: folder_bytes(store.session_dir(i.session_id)) for i in infos}

    def remove(info: SessionInfo, why: str) -> None:
        failed = store.remove(info.session_id)
        result.removed.append(info.session_id)
        result.freed_bytes += sizes[info.session_id]
        log.warning("retention: removed session %s (%s, %.2f GB)", info.session_id, why,
                    sizes[info.session_id] / 1e9)
        if failed:
            result.left_behind.extend(failed)
            log.warning("retention: session %s is gone from the index, but %d file(s) could not be deleted: %s",
                        info.session_id, len(failed), "; ".join(failed[:5]))

    if config.max_age_days is not None:
        limit = now - config.max_age_days * 86400.0
        for info in list(infos):
            if _removable(store, info, keep) and (info.ended or info.started) < limit:
                remove(info, f"ended {(now - (info.ended or info.started)) / 86400:.1f} days ago, "
                             f"max_age_days {config.max_age_days:g}")
                infos.remove(info)
    if config.max_gb is not None:
        total = sum(sizes[i.session_id] for i in infos)
        for info in list(infos):
            if total <= config.max_gb * 1e9:
                break
            if _removable(store, info, keep):
                remove(info, f"all sessions {total / 1e9:.2f} GB, max_gb {config.max_gb:g}")
                total -= sizes[info.session_id]
    return result
