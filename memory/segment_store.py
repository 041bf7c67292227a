"""The host and disk tiers of sealed segments: RAM, files, budgets and the index rows.

    host  [ sealed segments' KV in RAM ]            past host_mb the oldest spill to disk
    disk  [ one safetensors file per segment ]      past disk_mb the oldest KV is dropped (row and text stay)

Every move is counted in `MemoryStats`; drops are logged. If writing fails (the disk is full, the
directory vanished), storage switches off for the rest of the session with one warning: segments stay
in RAM up to the host budget, past it their KV is dropped and counted, and answering goes on.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch

from memory.index import SegmentIndex, tensor_to_blob
from memory.segments import Segment, read_segment_kv, write_segment_file

log = logging.getLogger("onlooker.memory")

MB = 1 << 20

Written = tuple[int, float] | OSError | None        # what `SegmentStore.write` reports: (bytes, seconds), the error


@dataclass
class MemoryStats:
    segments_sealed: int = 0
    segments_spilled: int = 0
    segments_dropped: int = 0         # KV removed by a budget (text kept in the index)
    segment_read_errors: int = 0      # spilled files that could not be read back
    tokens_sealed: int = 0
    tokens_pruned: int = 0
    host_bytes: int = 0
    disk_bytes: int = 0
    device_peak_bytes: int = 0        # largest assembled context (sink + retrieved + window)
    retrieved_segments: int = 0
    oom_shrinks: int = 0              # times the window was halved after running out of device memory
    storage_error: str | None = None  # why writing stopped, if it did
    write_s: float = 0.0              # seconds spent writing sealed segments' files (on the memory's own thread)
    checkpoint_write_s: float = 0.0   # seconds spent writing checkpoint files (on memory.landing's helper threads
                                      # off a GPU, else on the memory's own thread)
    index_s: float = 0.0              # seconds spent writing index rows (likewise)


class SegmentStore:
    """Owns sealed segments off the device. Not thread-safe (the runtime thread owns it)."""

    def __init__(self, host_mb: float, disk_mb: float, stats: MemoryStats, *, index: SegmentIndex | None = None,
                 spill_dir: Path | None = None, label: str = "memory") -> None:
        self.host_budget = int(host_mb * MB)
        self.disk_budget = int(disk_mb * MB)
        self.disk_mb = disk_mb
        self.stats = stats
        self.index = index
        self.spill_dir = spill_dir
        self.label = label
        self.segments: list[Segment] = []
        self._tmp_dir: tempfile.TemporaryDirectory | None = None

    # -- writing --------------------------------------------------------------------------------
    def _storage_failed(self, what: str, e: Exception) -> None:
        if self.stats.storage_error is None:
            reason = "the disk is full" if getattr(e, "errno", None) == errno.ENOSPC else str(e)
            self.stats.storage_error = f"{what}: {reason}"
            log.warning("%s: %s failed (%s); storage is off for the rest of the session, answering goes on "
                        "from memory", self.label, what, e)

    def _index_write(self, fn, *args, **kwargs):
        if self.index is None or self.stats.storage_error is not None:
            return None
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except (sqlite3.Error, OSError) as e:
            self._storage_failed("writing the session index", e)
            return None
        finally:
            self.stats.index_s += time.perf_counter() - start

    @property
    def durable(self) -> bool:
        """A stored session: every segment reaches disk when it closes (write-through), so a crash loses at
        most the open one."""
        return self.index is not None and self.spill_dir is not None

    def add(self, seg: Segment) -> None:
        """A newly sealed segment, in host RAM (and on disk too in a stored session)."""
        self.segments.append(seg)
        if seg.kv is not None:
            self.stats.host_bytes += seg.kv.nbytes
        if self.durable and seg.kv is not None and not self._written(seg):
            self._write_file(seg)
        if self.index is not None:
            if seg.index_id is None:
                seg.index_id = self._index_write(self.index.add, seg, seg.tier)
            else:
                self._index_write(self.index.replace, seg.index_id, seg, seg.tier)
        self.enforce_budgets()

    def checkpoint(self, seg: Segment, written: Written) -> int | None:
        """A closed segment still in the device window, written to disk (`write`, on memory.landing's helper thread
        off a GPU; `written` is what it reported) and given its index row (tier "window"), so that it survives a
        crash; sealing it later replaces both. Returns the row id."""
        if not self.durable or not self._wrote(seg, self.segment_path(seg), written, checkpoint=True):
            return None
        return self._index_write(self.index.add, seg, "window") if self.index is not None else None

    def write(self, seg: Segment, path: Path) -> Written:
        """Write the segment's file to `path` and report how it went (`_wrote` records it). Touches nothing of the
        store's, so a landing's helper thread may call it: None when storage is off, the error when writing failed,
        else (bytes, seconds)."""
        if self.stats.storage_error is not None:
            return None
        start = time.perf_counter()
        try:
            return write_segment_file(path, seg), time.perf_counter() - start
        except OSError as e:
            return e

    def _written(self, seg: Segment) -> bool:
        """The segment's file already holds its KV and its description (a checkpoint sealed unchanged)."""
        was = seg.extra.get("written")
        return seg.file is not None and was is not None and was[0]() is seg.kv and was[1] == seg.meta() \
            and seg.file.exists()                # the same meta is the same seg_id, so the same path

    def _write_file(self, seg: Segment) -> bool:
        """Write (or rewrite, over its checkpoint) the segment's file; False when storage is off or failing."""
        path = self.segment_path(seg)
        return self._wrote(seg, path, self.write(seg, path))

    def _wrote(self, seg: Segment, path: Path, written: Written, checkpoint: bool = False) -> bool:
        old = int(seg.extra.pop("file_bytes", 0)) if seg.file == path else 0
        seg.file = None                     # a stale checkpoint is never taken for this segment's KV
        if written is None:
            return False
        if isinstance(written, OSError):
            self._storage_failed(f"writing {path.name}", written)
            return False
        size, seconds = written
        if checkpoint:
            self.stats.checkpoint_write_s += seconds
        else:
            self.stats.write_s += seconds
        self.stats.disk_bytes += size - old
        seg.file = path
        seg.extra["file_bytes"] = size
        seg.extra["written"] = (weakref.ref(seg.kv), seg.meta())      # weak: a spilled segment's KV is freed
        return True

    def retext(self, seg: Segment, text: str, embedding: torch.Tensor | None) -> None:
        """A sealed segment's text grew (a caption, late perception): the index row follows."""
        seg.text, seg.embedding = text, embedding
        if seg.index_id is not None and self.index is not None:
            self._index_write(self.index.update, seg.index_id, text=text,
                              embedding=tensor_to_blob(embedding) if embedding is not None else None)

    def segment_path(self, seg: Segment) -> Path:
        if self.spill_dir is None:
            self._tmp_dir = tempfile.TemporaryDirectory(prefix="onlooker-kv-")
            self.spill_dir = Path(self._tmp_dir.name)
            log.info("%s: no session directory; spilling segments to %s", self.label, self.spill_dir)
        return self.spill_dir / f"segment-{seg.seg_id:06d}.safetensors"

    def spill(self, seg: Segment) -> bool:
        """Free the segment's host copy, writing its file first unless it is already on disk."""
        assert seg.kv is not None
        if (seg.file is None or not seg.file.exists()) and not self._write_file(seg):   # deleted under us: again
            return False
        self.stats.host_bytes -= seg.kv.nbytes
        self.stats.segments_spilled += 1
        seg.kv = None
        if seg.index_id is not None and self.index is not None:
            self._index_write(self.index.update, seg.index_id, tier="disk", kv_file=str(seg.file),
                              kv_bytes=seg.extra.get("file_bytes", 0))
        return True

    def _drop_host(self, seg: Segment) -> None:
        assert seg.kv is not None
        self.stats.host_bytes -= seg.kv.nbytes
        seg.kv = None
        self.stats.segments_dropped += 1
        log.warning("%s: host budget reached with storage off: dropped the KV of segment %d [%.1f-%.1f s]",
                    self.label, seg.seg_id, seg.t0, seg.t1)

    def enforce_budgets(self) -> None:
        for seg in self.segments:
            if self.stats.host_bytes <= self.host_budget:
                break
            if seg.kv is not None and not self.spill(seg):
                self._drop_host(seg)
        for seg in self.segments:
            if self.stats.disk_bytes <= self.disk_budget:
                break
            if seg.file is not None and seg.kv is None:
                size = seg.extra.pop("file_bytes", 0)
                seg.file.unlink(missing_ok=True)
                seg.file = None
                self.stats.disk_bytes -= size
                self.stats.segments_dropped += 1
                log.warning("%s: disk budget (%.0f MB) reached: dropped the KV of segment %d [%.1f-%.1f s]; its "
                            "text stays in the index", self.label, self.disk_mb, seg.seg_id, seg.t0, seg.t1)
                if seg.index_id is not None and self.index is not None:
                    self._index_write(self.index.update, seg.index_id, tier="dropped", kv_file=None, kv_bytes=0)

    def spill_all(self) -> None:
        """Write every host segment to disk (end of a stored session)."""
        for seg in self.segments:
            if seg.kv is not None:
                self.spill(seg)
        self.enforce_budgets()

    # -- reading --------------------------------------------------------------------------------
    def load_kv(self, seg: Segment, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The segment's keys and values on `device`, (L, Hkv, k, D); quantized KV crosses over and expands there.
        Raises SegmentFileError when its file is missing or unreadable."""
        kv = seg.kv
        if kv is None:
            assert seg.file is not None
            kv = read_segment_kv(seg.file)
        return kv.dequantized(device, dtype)

    def close(self) -> None:
        if self._tmp_dir is not None:
            self._tmp_dir.cleanup()
            self._tmp_dir = None
