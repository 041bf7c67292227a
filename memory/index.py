"""The session index: one SQLite row per sealed segment (through sqlite-utils).

    segments(id, session_id, t0, t1, text, num_tokens, kept_tokens, pos_start, orig_pos, pos_span,
             embedding, rep_key, kv_file, kv_bytes, tier)

`embedding` (text, float32) and `rep_key` (mean key per layer and KV head, float16) are stored as raw
bytes so a stored session can be searched without opening its segment files. `tier` is where the
segment's KV is: host (only while the session runs), disk, or dropped (a budget removed it; the row
and its text stay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from memory.segments import Segment

if TYPE_CHECKING:       # sqlite-utils is only needed by whoever opens the database
    import sqlite_utils

COLUMNS = {"id": int, "session_id": str, "t0": float, "t1": float, "text": str, "num_tokens": int,
           "kept_tokens": int, "pos_start": int, "orig_pos": int, "pos_span": int, "embedding": bytes,
           "rep_key": bytes, "rep_shape": str, "kv_file": str, "kv_bytes": int, "tier": str}


def create_segment_table(db: sqlite_utils.Database) -> None:
    table = db.table("segments")
    fks = [("session_id", "sessions", "id")] if "sessions" in db.table_names() else None
    table.create(COLUMNS, pk="id", foreign_keys=fks, if_not_exists=True)
    have = table.columns_dict
    for name, kind in COLUMNS.items():     # a database written by an older version gains the new columns
        if name not in have:
            table.add_column(name, kind)
    table.create_index(["session_id", "t0"], if_not_exists=True)


def tensor_to_blob(t: torch.Tensor, dtype=np.float32) -> bytes:
    return t.detach().float().cpu().numpy().astype(dtype).tobytes()


def blob_to_tensor(b: bytes | None, shape: tuple[int, ...], dtype=np.float32) -> torch.Tensor | None:
    if not b:
        return None
    return torch.from_numpy(np.frombuffer(b, dtype=dtype).astype(np.float32).reshape(shape))


class SegmentIndex:
    def __init__(self, db: sqlite_utils.Database, session_id: str) -> None:
        self.db = db
        self.session_id = session_id
        create_segment_table(db)

    def _row(self, seg: Segment, tier: str) -> dict:
        return {"session_id": self.session_id, "t0": seg.t0, "t1": seg.t1, "text": seg.text,
                "num_tokens": seg.num_tokens, "kept_tokens": seg.kept_tokens, "pos_start": seg.pos_start,
                "orig_pos": seg.orig_pos, "pos_span": seg.pos_span,
                "embedding": tensor_to_blob(seg.embedding) if seg.embedding is not None else None,
                "rep_key": tensor_to_blob(seg.rep_key, np.float16),
                "rep_shape": ",".join(str(s) for s in seg.rep_key.shape),
                "kv_file": str(seg.file) if seg.file else None, "kv_bytes": int(seg.extra.get("file_bytes", 0)),
                "tier": tier}

    def add(self, seg: Segment, tier: str) -> int:
        return int(self.db.table("segments").insert(self._row(seg, tier)).last_pk or 0)

    def replace(self, row_id: int, seg: Segment, tier: str) -> None:
        """The row of a segment checkpointed from the window, now sealed: every field follows."""
        self.db.table("segments").update(row_id, self._row(seg, tier))

    def update(self, row_id: int, **fields) -> None:
        self.db.table("segments").update(row_id, fields)

    def rows(self) -> list[dict]:
        return list(self.db["segments"].rows_where("session_id = ?", [self.session_id], order_by="t0"))

    @staticmethod
    def row_tensors(row: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(rep_key, embedding) of an index row."""
        shape = tuple(int(s) for s in (row.get("rep_shape") or "").split(",") if s)
        rep = blob_to_tensor(row.get("rep_key"), shape, np.float16) if shape else None
        emb = blob_to_tensor(row.get("embedding"), (-1,))
        return rep, emb
