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
        self.nbytes = 0                          # all blocks allocated so far

    def put(self, t: torch.Tensor) -> torch.Tensor:
        key = (tuple(t.shape), t.dtype)
        block, used = self._open.get(key, (None, self.rows))
        if block is None or used == self.rows:           # the full block stays alive through its rows' views
            block, used = torch.empty((self.rows, *t.shape), dtype=t.dtype), 0
            self.blocks += 1
            self.nbytes += block.nbytes
        row = block[used]
        row.copy_(t.detach())
        self._open[key] = (block, used + 1)
        return row


class KeyBank:
    """Sealed segments' mean keys as float32 rows of fixed-size blocks, in segment order, so a question scores every
    sealed segment with one mat-vec per block instead of converting and stacking one tensor per segment each time.
    On one CPU thread, an hour of the 7B shape (900 segments) took 90-110 ms stacked and 4 ms here; that was most
    of the time to first token after an hour. Blocks of `rows` (14 MB each on the 7B shape), allocated as the
    session grows and never moved, as the slabs above. `sync` adds the segments it has not seen (sealed ones, or
    ones a stored session read back); segments are only ever appended, and their mean keys never change."""

    def __init__(self, rows: int = ROWS) -> None:
        self.rows = rows
        self.blocks: list[torch.Tensor] = []
        self._n = 0                              # rows filled
        self._last: object = None                # the segment behind the last row, to notice a different list

    def __len__(self) -> int:
        return self._n

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.blocks)

    def sync(self, segments: list) -> None:
        if self._n > len(segments) or (self._n and segments[self._n - 1] is not self._last):
            self.blocks, self._n = [], 0
        for seg in segments[self._n:]:
            flat = seg.rep_key.reshape(-1)
            if self._n == len(self.blocks) * self.rows:
                self.blocks.append(torch.empty((self.rows, flat.numel()), dtype=torch.float32))
            self.blocks[-1][self._n % self.rows].copy_(flat)
            self._n += 1
            self._last = seg

    def dot(self, query: torch.Tensor, extra: list[torch.Tensor] | tuple = ()) -> torch.Tensor:
        """Each row's dot product with `query` (as many elements as a row), then each of `extra`'s (keys not in the
        bank, such as the window's live sums on the model's device: stacked there, brought over in one copy)
        -> (rows + len(extra),) float32."""
        q = query.reshape(-1).to("cpu", torch.float32)
        out = [b[:min(self.rows, self._n - i * self.rows)] @ q for i, b in enumerate(self.blocks)]
        if extra:
            out.append(torch.stack(list(extra)).to("cpu", torch.float32).reshape(len(extra), -1) @ q)
        return torch.cat(out) if out else torch.zeros(0)
