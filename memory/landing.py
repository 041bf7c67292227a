"""Sealed segments on their way off the device, without the ingest loop waiting for the device.

Sealing a segment copies its (quantized) KV, its mean key and its kept offsets to the host. A plain `.cpu()`
copy waits for everything queued on the device before it, the prefill of the batch just handed over included:
on the H200 (7B, an hour of stream) those waits were 22% of the onlooker loop's wall under py-spy, the host
idle while the device drained, and the device idle while the host then queued the next batch.

Here the copies go into pinned host buffers without a wait, an event is recorded after them, and the segment
lands later: `land()` finishes, in sealing order, every flight whose event has passed (each append calls it),
copying the pinned buffers into ordinary host memory (so pinned memory stays bounded to what is in flight) and
handing them to the flight's `finish`. `land(wait=True)` finishes them all; the memory calls it before anything
reads its sealed segments. At most MAX_IN_FLIGHT flights wait; past that the oldest is waited for.

Tensors that are not on a CUDA device land at once, so the CPU path is what it was. `event` may be swapped in
tests (tests/unit/test_memory_landing.py) to hold flights back on a CPU.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch

from model.backend import host_copy

MAX_IN_FLIGHT = 16

Parts = dict[str, torch.Tensor | None]


def _unpinned(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


class Landing:
    def __init__(self, event: Callable[[], Any] | None = None) -> None:
        self._event = event                      # None: torch.cuda.Event for CUDA tensors, immediate otherwise
        self._flights: deque[tuple[Any, Parts, Callable[[Parts], Any]]] = deque()

    def __len__(self) -> int:
        return len(self._flights)

    def send(self, parts: Parts, finish: Callable[[Parts], Any]) -> None:
        """Start the host copies of `parts`; `finish(host_parts)` runs when they have landed (maybe now)."""
        event = None
        host = {k: None if t is None else host_copy(t) for k, t in parts.items()}
        if any(t is not None and t.is_cuda for t in parts.values()):
            event = torch.cuda.Event()
            event.record()
        if self._event is not None:
            event = self._event()
        self._flights.append((event, host, finish))

    def land(self, wait: bool = False) -> list[Any]:
        """Finish the flights that have landed (all of them with `wait`), in order; what their `finish` returned
        (None left out)."""
        out = []
        while self._flights:
            event, host, finish = self._flights[0]
            if event is not None and not (wait or len(self._flights) > MAX_IN_FLIGHT or event.query()):
                break
            if event is not None:
                event.synchronize()
            self._flights.popleft()
            done = finish({k: _unpinned(t) if t is not None and t.is_pinned() else t for k, t in host.items()})
            if done is not None:
                out.append(done)
        return out
