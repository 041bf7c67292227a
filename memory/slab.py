"""Small tensors that every sealed segment keeps for the whole session (its mean key for retrieval, its text
embedding), packed as rows of shared blocks instead of one heap allocation each.

Why: a segment's mean key is 11 KB on the lite model (28 KB on the 7B shape) and lives as long as the session,
while the KV buffers around it (hundreds of KB each on the lite path, under glibc's mmap threshold) come and go.
Allocated one by one, the long-lived blocks land in the holes those buffers leave, split them, and the heap
grows past them: `bench soak` on the lite path measured the free-but-kept heap growing about 260 KB per sealed
segment in some runs (RSS +5.5% over 7 stream-hours). Here a block of ROWS rows (2.9 MB of keys on the lite
model, above the mmap threshold, so mapped on its own) holds ROWS segments' keys; a segment's tensor is a view
of its row (contiguous, so it saves and hashes as before) and keeps the block alive.
"""

from __future__ import annotations

import torch

ROWS = 256


class HostSlabs:
    """`put(t)` -> a host tensor equal to `t` that lives in a shared block of tensors of its shape and dtype."""

    def __init__(self, rows: int = ROWS) -> None:
        self.rows = rows
        self._open: dict[tuple[tuple[int, ...], torch.dtype], tuple[torch.Tensor, int]] = {}
        self.blocks = 0

    def put(self, t: torch.Tensor) -> torch.Tensor:
        key = (tuple(t.shape), t.dtype)
        block, used = self._open.get(key, (None, self.rows))
        if block is None or used == self.rows:           # the full block stays alive through its rows' views
            block, used = torch.empty((self.rows, *t.shape), dtype=t.dtype), 0
            self.blocks += 1
        row = block[used]
        row.copy_(t.detach())
        self._open[key] = (block, used + 1)
        return row
