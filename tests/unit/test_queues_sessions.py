from __future__ import annotations

import os
import stat
import threading
import time

import pytest
import torch

from assistant.queues import CLOSED, FrameQueue
from assistant.store import SessionNotFound, SessionStore
from memory.segments import Segment


def test_frame_queue_drops_oldest_and_counts():
    q = FrameQueue(3, drop_oldest=True)
    for i in range(5):
        q.put(i)
    assert q.num_dropped == 2
    q.close()
    assert [q.get(), q.get(), q.get(), q.get()] == [2, 3, 4, CLOSED]


def test_frame_queue_fast_mode_blocks_and_loses_nothing():
    q = FrameQueue(2, drop_oldest=False)
    got: list[int] = []

    def consume():
        while (item := q.get(timeout=1.0)) is not CLOSED:
            if item is not None:
                got.append(item)
                time.sleep(0.001)

    th = threading.Thread(target=consume)
    th.start()
    for i in range(50):
        q.put(i)
    q.close()
    th.join(5)
    assert got == list(range(50)) and q.num_dropped == 0


def test_session_store_roundtrip_and_permissions(tmp_path):
    store = SessionStore(tmp_path / "data")
    sid = store.start("synthetic:short", "m")
    index = store.segment_index(sid)
    for t0, text in [(0.0, "[0:00] a"), (4.0, "[0:04] b")]:
        index.add(Segment(0, t0, t0 + 4.0, text, 7, 0, 0, 7, torch.zeros(2, 1, 4)), "host")
    store.add_answer(sid, 5.0, "q?", "a.", 12.5, 40.0)
    store.finish(sid, "{}")
    sid2 = store.start("camera:0", "m")
    infos = store.list()
    assert [i.session_id for i in infos] == [sid, sid2]
    assert (infos[0].num_segments, infos[0].num_questions) == (2, 1)
    assert store.resolve("latest") == sid2
    assert [s["text"] for s in store.segments(sid)] == ["[0:00] a", "[0:04] b"]
    assert store.questions(sid)[0]["ttft_ms"] == 12.5
    assert stat.S_IMODE(os.stat(tmp_path / "data").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "data" / "onlooker.db").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.session_dir(sid)).st_mode) == 0o700
    store.remove(sid)
    assert [i.session_id for i in store.list()] == [sid2] and not store.session_dir(sid).exists()
    assert store.segments(sid) == []
    with pytest.raises(SessionNotFound):
        store.remove(sid)
