"""Sealed segments land on the host later than they are sealed (memory.landing): held back on a CPU by an event that
has not passed, the memory still seals, answers and stores what a memory that waits does."""

from __future__ import annotations

import threading

import pytest
import torch

from memory import landing
from memory.config import MemoryConfig
from memory.landing import Landing
from memory.manager import HierarchicalMemory
from reasoning import prompts

WORDS = ["APPLE", "RIVER", "CANDLE", "FOREST", "PIANO", "MANGO", "ROCKET", "TIGER", "SILVER", "OCEAN", "LEMON",
         "CASTLE"]


class HeldEvent:
    """An event that passes only when the test says so."""
    passed = False

    def query(self) -> bool:
        return HeldEvent.passed

    def synchronize(self) -> None:
        pass


def _memory(b, tmp_path, held: bool, **cfg) -> HierarchicalMemory:
    config = MemoryConfig(window_tokens=96, segment_seconds=1.0, quantize=True, **cfg)
    mem = HierarchicalMemory(b, config, spill_dir=tmp_path / ("held" if held else "now"))
    if held:
        mem.landing = Landing(event=HeldEvent)
    mem.set_sink(prompts.system_chunk(b))
    return mem


def _chunks(b):
    return [prompts.text_observation_chunk(b, 5.0 * i, f'Text on screen: "{w}".') for i, w in enumerate(WORDS)]


@pytest.mark.parametrize("keep_ratio", [1.0, 0.5])
def test_held_flights_land_in_order_and_equal_a_memory_that_waits(lite_backend, tmp_path, monkeypatch, keep_ratio):
    b = lite_backend
    HeldEvent.passed = False
    now, held = _memory(b, tmp_path, False, keep_ratio=keep_ratio), _memory(b, tmp_path, True, keep_ratio=keep_ratio)
    sealed_now, sealed_held = [], []
    for c in _chunks(b)[:8]:
        sealed_now += now.append(c).sealed
        sealed_held += held.append(c).sealed
    assert sealed_now and not sealed_held                 # sealed, still in flight: not in the store, not returned
    assert len(held.landing) == len(sealed_now) and not held.store.segments
    HeldEvent.passed = True
    for c in _chunks(b)[8:]:
        sealed_now += now.append(c).sealed
        sealed_held += held.append(c).sealed
    assert [s.seg_id for s in sealed_held] == [s.seg_id for s in sealed_now] == list(range(len(sealed_now)))
    for a, h in zip(sealed_now, sealed_held, strict=True):
        assert (a.t0, a.t1, a.text, a.kept_tokens, a.pos_start) == (h.t0, h.t1, h.text, h.kept_tokens, h.pos_start)
        torch.testing.assert_close(a.rep_key, h.rep_key, rtol=0, atol=0)
        assert h.rep_key.device.type == "cpu" and h.kv is not None
        torch.testing.assert_close(a.kv.keys, h.kv.keys, rtol=0, atol=0)
    assert held.stats == now.stats
    question = "What did the sign read at 0:05?"
    va, vh = now.context(question, 60.0), held.context(question, 60.0)
    assert [s.seg_id for s in vh.placed] == [s.seg_id for s in va.placed] and va.placed
    q = prompts.question_chunk(b, 60.0, question)
    torch.testing.assert_close(b.prefill(q, vh.cache, vh.next_pos), b.prefill(q, va.cache, va.next_pos))


def test_reading_sealed_segments_lands_every_flight_first(lite_backend, tmp_path):
    b = lite_backend
    HeldEvent.passed = False
    mem = _memory(b, tmp_path, True)
    for c in _chunks(b):
        mem.append(c)
    assert len(mem.landing) > 0
    in_flight = len(mem.landing)
    assert len(mem.segments) == in_flight and not len(mem.landing)   # `segments` waited for them
    mem.annotate(0.5, "a red umbrella")                               # a note about a sealed moment finds it
    assert "umbrella" in mem.segments[0].text
    mem.flush(100.0)
    assert all(s.tier == "disk" for s in mem.segments) and not len(mem.landing)


def test_flights_past_the_limit_are_waited_for(lite_backend, tmp_path, monkeypatch):
    monkeypatch.setattr(landing, "MAX_IN_FLIGHT", 2)
    b = lite_backend
    HeldEvent.passed = False
    mem = _memory(b, tmp_path, True)
    for c in _chunks(b):
        mem.append(c)
        assert len(mem.landing) <= 2
    assert mem.store.segments


def test_a_stored_session_checkpoints_and_seals_through_held_flights_as_one_that_waits(lite_backend, tmp_path):
    """Checkpoints (a closed window segment written to disk) go through the same flights: held back, nothing is on
    disk yet; landed, the files and index rows equal a stored session that waited, segment ids included."""
    import sqlite_utils

    from memory.index import SegmentIndex
    from memory.stored import segments_from_index
    b = lite_backend
    HeldEvent.passed = False
    rows = []
    for held in (False, True):
        index = SegmentIndex(sqlite_utils.Database(tmp_path / f"{held}.db"), "s")
        mem = HierarchicalMemory(b, MemoryConfig(window_tokens=96, segment_seconds=1.0), index=index,
                                 spill_dir=tmp_path / f"kv-{held}")
        if held:
            mem.landing = Landing(event=HeldEvent)
        mem.set_sink(prompts.system_chunk(b))
        for c in _chunks(b)[:6]:
            mem.append(c)
        if held:
            assert len(mem.landing) and not list((tmp_path / "kv-True").glob("*.safetensors"))
            HeldEvent.passed = True
        on_disk = []                        # the files after each append, from the one that lands the flights on
        for c in _chunks(b)[6:]:
            mem.append(c)
            on_disk.append(sorted(p.name for p in (tmp_path / f"kv-{held}").glob("*.safetensors")))
        mem.flush(100.0)
        segs = segments_from_index(index, b.kv_shape)
        rows.append((on_disk, [(s.seg_id, s.t0, s.t1, s.text, s.pos_start) for s in segs]))
    assert rows[0] == rows[1] and rows[0][0] and len(rows[0][1]) == len(WORDS)


class GatedEvent:
    """An event whose wait blocks until the test opens the gate (a device still busy, seen from a helper thread)."""
    gate = threading.Event()

    def query(self) -> bool:
        return GatedEvent.gate.is_set()

    def synchronize(self) -> None:
        assert GatedEvent.gate.wait(timeout=30), "the gate was never opened"


def test_flights_arriving_on_helper_threads_land_in_order_and_equal_a_memory_that_waits(lite_backend, tmp_path):
    """The helper threads (what flights off a CUDA device use) wait and copy off the calling thread; nothing lands
    before its copies have arrived, flights land in sealing order, and the memory equals one that waits."""
    b = lite_backend
    GatedEvent.gate.clear()
    now = _memory(b, tmp_path, False)
    held = _memory(b, tmp_path, True)
    held.landing = Landing(event=GatedEvent, threads=True)
    for c in _chunks(b)[:8]:
        now.append(c)
        assert not held.append(c).sealed
    assert len(held.landing) > 0 and not held.store.segments        # the helpers are blocked on the device
    GatedEvent.gate.set()
    landed = []
    for c in _chunks(b)[8:]:
        now.append(c)
        landed += held.append(c).sealed
    segs = held.segments                                            # lands whatever is still arriving
    assert [s.seg_id for s in landed] == [s.seg_id for s in segs[:len(landed)]]
    assert [s.seg_id for s in segs] == [s.seg_id for s in now.segments] == list(range(len(segs)))
    for a, h in zip(now.segments, segs, strict=True):
        assert (a.t0, a.t1, a.text, a.pos_start) == (h.t0, h.t1, h.text, h.pos_start)
        torch.testing.assert_close(a.kv.keys, h.kv.keys, rtol=0, atol=0)
    assert held.stats == now.stats


def test_a_helper_threads_failure_is_raised_where_the_flight_lands():
    """A copy that fails on a helper thread raises in `land()`, not silently on the thread."""
    class Broken:
        def query(self) -> bool:
            return True

        def synchronize(self) -> None:
            raise RuntimeError("device lost")
    lander = Landing(event=Broken, threads=True)
    got = []
    lander.send({"x": torch.ones(3)}, got.append)
    with pytest.raises(RuntimeError, match="device lost"):
        lander.land(wait=True)
    assert not got


def test_checkpoint_files_written_on_helper_threads_equal_a_stored_session_that_waits(lite_backend, tmp_path):
    """A checkpoint's file is written on the helper thread (off the loop); nothing reaches disk while its copy has
    not arrived, and the session that ends equals one that waited: the same files, bytes, index rows."""
    import sqlite_utils

    from memory.index import SegmentIndex
    from memory.stored import segments_from_index
    b = lite_backend
    GatedEvent.gate.clear()
    out = []
    for threads in (False, True):
        index = SegmentIndex(sqlite_utils.Database(tmp_path / f"{threads}.db"), "s")
        kv = tmp_path / f"kv-{threads}"
        mem = HierarchicalMemory(b, MemoryConfig(window_tokens=96, segment_seconds=1.0), index=index, spill_dir=kv)
        if threads:
            mem.landing = Landing(event=GatedEvent, threads=True)
        mem.set_sink(prompts.system_chunk(b))
        for c in _chunks(b)[:6]:
            mem.append(c)
        if threads:
            assert len(mem.landing) and not list(kv.glob("*.safetensors"))   # blocked on the device: not written
            GatedEvent.gate.set()
        for c in _chunks(b)[6:]:
            mem.append(c)
        mem.flush(100.0)
        files = {p.name: _file(p) for p in sorted(kv.glob("*.safetensors"))}
        segs = segments_from_index(index, b.kv_shape)
        out.append((files, [(s.seg_id, s.t0, s.t1, s.text, s.pos_start, s.file.name) for s in segs], mem.stats))
    (f0, rows0, st0), (f1, rows1, st1) = out
    assert f0.keys() == f1.keys() and len(f0) == len(WORDS) and rows0 == rows1
    for name, (meta, tensors) in f0.items():
        assert f1[name][0] == meta and f1[name][1].keys() == tensors.keys()
        for k, t in tensors.items():
            torch.testing.assert_close(f1[name][1][k], t, rtol=0, atol=0)
    assert st1.checkpoint_write_s > 0 and st1.disk_bytes == st0.disk_bytes
    assert (st0.segments_sealed, st0.segments_spilled) == (st1.segments_sealed, st1.segments_spilled)


def _file(path):
    """A segment file's metadata and tensors (its header's key order is not fixed, so not its bytes)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k) for k in f.keys()}


class SlowEvent:
    """An event that has not passed; waiting on it takes 50 ms."""

    def query(self) -> bool:
        return False

    def synchronize(self) -> None:
        import time
        time.sleep(0.05)


@pytest.mark.parametrize("threads", [False, True])
def test_landing_counts_the_time_it_blocked_on_flights_not_yet_arrived(threads):
    """`Landing.wait_s` (what `bench ingest` reports as the loop's landing wait): nothing while flights are only
    checked, the blocked time once `land(wait=True)` has to wait for them (helper threads or not)."""
    ld = Landing(event=SlowEvent, threads=threads)
    got = []
    for i in range(3):
        ld.send({"x": torch.full((4,), float(i))}, lambda h: got.append(float(h["x"][0])))
    if not threads:
        assert ld.land() == [] and ld.wait_s == 0.0        # not arrived, not waited for
    ld.land(wait=True)
    assert got == [0.0, 1.0, 2.0]
    assert ld.wait_s >= (0.05 if threads else 0.15)         # each flight's 50 ms (on helper threads: at least one)
