"""A bounded queue that drops the oldest item when full (video), or blocks (--fast: nothing dropped).

Closing it is a control signal that is never dropped: `get` returns `CLOSED` once the queue is
closed and drained.
"""

from __future__ import annotations

import threading
from collections import deque
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
