"""Sealed segments on their way off the device, without the ingest loop waiting for the device.

Sealing a segment copies its (quantized) KV, its mean key and its kept offsets to the host. A plain `.cpu()`
copy waits for everything queued on the device before it, the prefill of the batch just handed over included:
on the H200 (7B, an hour of stream) those waits were 22% of the onlooker loop's wall under py-spy, the host
idle while the device drained, and the device idle while the host then queued the next batch.

Here the copies go into pinned host buffers without a wait, an event is recorded after them, and the segment
lands later: `land()` finishes, in sealing order, every flight that has arrived (each append calls it), handing
its host tensors to the flight's `finish`. `land(wait=True)` finishes them all; the memory calls it before anything
reads its sealed segments. At most MAX_IN_FLIGHT flights wait; past that the oldest is waited for.

Arriving means the event has passed and the pinned buffers have been copied into ordinary host memory (so pinned
memory stays bounded to what is in flight and the pinned allocator reuses its blocks). That copy maps fresh pages,
megabytes per segment: on the H200 it was 27.5% of the onlooker loop's main thread (py-spy, 7B). So flights off a
CUDA device arrive on a helper thread (`ARRIVAL_THREADS`, shared by every landing), which waits on the event and
copies while the loop goes on (both release the GIL); `finish` still runs on the thread that calls `land()`, in
order, so the memory and its store stay single-threaded. A flight may also carry `work` for the helper thread:
a checkpoint's file is written there (memory.manager, memory.segment_store.SegmentStore.write), 14.6% of the
runtime thread in py-spy of an hour's recording on the H200.

Tensors that are not on a CUDA device land at once, so the CPU path is what it was. `event` may be swapped in
tests (tests/unit/test_memory_landing.py) to hold flights back on a CPU, and `threads=True` sends those through the
helper threads too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from model.backend import host_copy

MAX_IN_FLIGHT = 16
ARRIVAL_THREADS = 2

Parts = dict[str, torch.Tensor | None]
Work = Callable[[Parts], dict[str, Any]]

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _arrivals() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(ARRIVAL_THREADS, thread_name_prefix="onlooker-landing")
        return _pool


def _unpinned(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def _arrive(event: Any, host: Parts, work: Work | None) -> dict[str, Any]:
    """Wait for the flight's copies, move its pinned buffers into ordinary host memory, and do its `work`."""
    if event is not None:
        event.synchronize()
    arrived = {k: _unpinned(t) if t is not None and t.is_pinned() else t for k, t in host.items()}
    return arrived if work is None else work(arrived)


class Landing:
    def __init__(self, event: Callable[[], Any] | None = None, threads: bool | None = None) -> None:
        self._event = event                      # None: torch.cuda.Event for CUDA tensors, immediate otherwise
        self._threads = threads                  # None: helper threads for flights off a CUDA device
        self._flights: deque[tuple[Any, Parts | Future, Work | None, Callable[[dict[str, Any]], Any]]] = deque()
        self.wait_s = 0.0                        # seconds `land` blocked on flights that had not arrived

    def __len__(self) -> int:
        return len(self._flights)

    def send(self, parts: Parts, finish: Callable[[dict[str, Any]], Any], work: Work | None = None) -> None:
        """Start the host copies of `parts`; `finish(host_parts)` runs when they have landed (maybe now). `work`, if
        given, runs on the host parts first, on the helper thread where there is one (it must touch nothing the
        caller's thread owns: writing a file, say), and what it returns is what `finish` gets."""
        event = None
        host = {k: None if t is None else host_copy(t) for k, t in parts.items()}
        cuda = any(t is not None and t.is_cuda for t in parts.values())
        if cuda:
            event = torch.cuda.Event(blocking=True)  # a helper thread waiting on it sleeps instead of spinning
            event.record()
        if self._event is not None:
            event = self._event()
        threads = cuda if self._threads is None else self._threads
        if event is not None and threads:
            self._flights.append((event, _arrivals().submit(_arrive, event, host, work), work, finish))
        else:
            self._flights.append((event, host, work, finish))

    def land(self, wait: bool = False) -> list[Any]:
        """Finish the flights that have arrived (all of them with `wait`), in order; what their `finish` returned
        (None left out)."""
        out = []
        while self._flights:
            event, host, work, finish = self._flights[0]
            must = wait or len(self._flights) > MAX_IN_FLIGHT
            ready = host.done() if isinstance(host, Future) else event is None or event.query()
            if not (must or ready):
                break
            start = time.perf_counter()
            arrived = host.result() if isinstance(host, Future) else _arrive(event, host, work)
            if not ready:                        # blocked until it arrived
                self.wait_s += time.perf_counter() - start
            self._flights.popleft()
            done = finish(arrived)
            if done is not None:
                out.append(done)
        return out
