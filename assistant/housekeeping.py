"""What the runtime thread does every so often while a session runs: hand the C heap's free pages back to the
system, and (less often) apply retention.

Why the heap: a long run allocates and frees sealed segments' KV of ever-different sizes; glibc keeps what was
freed in its arenas, so the process's RSS climbs with fragmentation while the memory in use stays flat
(measured with `bench soak`: 430 -> 550 MB free-but-kept in 1.25 stream-hours on the lite path).
`malloc_trim(0)` returns whole free pages inside the heap too (glibc >= 2.8). Elsewhere (macOS, musl) it is a
no-op.

Trimming is not enough over hours: glibc raises its mmap threshold each time a large mmapped block is freed
(up to 32 MiB), after which buffers of a few MiB come from the heap, and the heap's free holes stop fitting
them. Measured with `bench soak` on the lite path: the free-but-kept heap grew ~4 GB per stream-hour after
hour 4.75 and RSS swung by 900 MB; with the threshold pinned at 1 MiB it stayed under 760 MB for 6 hours.
`pin_mmap_threshold` pins it each time a session opens (a cheap, idempotent call), unless the user set
MALLOC_MMAP_THRESHOLD_ themselves.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("onlooker")

TRIM_EVERY_S = 30.0          # wall seconds between heap trims (a trim of a 2 GB heap takes a few ms)


def _libc_function(name: str, argtypes: list[Any]) -> Callable[..., int] | None:
    """glibc's `name` (returning int), or None where the C library has no such function (macOS, musl)."""
    try:
        fn = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_TRIM = _libc_function("malloc_trim", [ctypes.c_size_t])
_MALLOPT = _libc_function("mallopt", [ctypes.c_int, ctypes.c_int])
M_MMAP_THRESHOLD = -3        # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `nbytes` (which also turns its dynamic raising off): blocks of that size or
    more are mapped and unmapped on their own instead of fragmenting the heap. True when set; False where
    there is no glibc mallopt or the user's MALLOC_MMAP_THRESHOLD_ already decides."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or _MALLOPT is None:
        return False
    return bool(_MALLOPT(M_MMAP_THRESHOLD, nbytes))


def huge_pages_for_large_tensors() -> bool:
    """Have PyTorch's CPU allocator back tensors of 2 MB and more with transparent huge pages (its
    THP_MEM_ALLOC_ENABLE, read once at its first allocation: call this before any tensor is made). True when set;
    False where the user's THP_MEM_ALLOC_ENABLE already decides.

    Why: every sealed segment's KV lands in fresh host memory (memory.landing), megabytes per segment, and with the
    mmap threshold pinned (above) each such buffer is mapped anew and faulted in 4 KB at a time. py-spy of an hour
    of recording indexed on the H200 (7B shape, `bench recording`) put 27% of the runtime thread in that one copy.
    A 2 MB page is faulted once for 512 small ones. Where the kernel's THP is off, the request is ignored."""
    if "THP_MEM_ALLOC_ENABLE" in os.environ:
        return False
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
    return True


def trim_heap() -> bool:
    """Give free heap pages back to the system; True when something was released."""
    return bool(_TRIM(0)) if _TRIM is not None else False


class Housekeeper:
    """Called by the runtime every TRIM_EVERY_S: trims the heap each time, runs `retention` every
    `retention_every_s` of wall time."""

    def __init__(self, retention: Callable[[], Any], retention_every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.retention = retention
        self.retention_every_s = retention_every_s
        self.clock = clock
        self._retention_at = clock()
        self.trims = 0

    @property
    def every_s(self) -> float:
        return min(TRIM_EVERY_S, self.retention_every_s)

    def __call__(self) -> None:
        trim_heap()
        self.trims += 1
        now = self.clock()
        if now - self._retention_at >= self.retention_every_s:
            self._retention_at = now
            self.retention()
