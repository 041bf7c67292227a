"""Bounded hand-over queues between threads.

`FrameQueue`: capture -> perception. Drops the oldest item when full (live video), or blocks the
producer (--fast: nothing dropped). Closing it is a control signal that is never dropped: `get` returns
`CLOSED` once the queue is closed and drained.

`DataInbox`: perception and hearing -> the runtime. Bounded the same way; when it must drop, it drops the
oldest droppable item (a frame's observation, never a transcript) and counts it.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

CLOSED = object()


class FrameQueue:
    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.num_dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            while not self.drop_oldest and len(self._items) >= self.maxsize and not self._closed:
                self._cond.wait()
            if self._closed:
                return
            if len(self._items) >= self.maxsize:
                self._items.popleft()
                self.num_dropped += 1
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Any:
        """Next item; CLOSED when closed and drained; None on timeout."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return CLOSED if self._closed else None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class DataInbox:
    """The runtime's data inbox. `put(item, block)`: when full, drop the oldest droppable item (counted) if
    `drop_oldest`, else wait for room when `block` (backpressure: nothing lost) or grow when not."""

    def __init__(self, maxsize: int, drop_oldest: bool, droppable: Callable[[Any], bool]) -> None:
        self.maxsize = maxsize
        self.drop_oldest = drop_oldest
        self.droppable = droppable
        self._items: deque[Any] = deque()
        self._cond = threading.Condition()
        self.num_dropped = 0
        self.closed = False

    def put(self, item: Any, block: bool = True) -> None:
        with self._cond:
            if len(self._items) >= self.maxsize:
                if self.drop_oldest:
                    victim = next((x for x in self._items if self.droppable(x)), None)
                    if victim is not None:
                        self._items.remove(victim)
                        self.num_dropped += 1
                elif block:
                    while len(self._items) >= self.maxsize and not self.closed:
                        self._cond.wait(0.1)
            self._items.append(item)
            self._cond.notify_all()

    def get_nowait(self) -> Any | None:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """Unblock producers for good (shutdown)."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)
