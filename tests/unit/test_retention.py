"""Retention: old sessions go, oldest first, by age and then by total size; running and kept sessions stay;
a removal that leaves files behind says so."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from assistant.retention import StorageConfig, enforce
from assistant.store import SessionStore

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAY = 86400.0


def _sessions(store: SessionStore, ages_days: list[float], mb: float = 1.0, now: float | None = None) -> list[str]:
    """Sessions that ended `age` days ago (oldest first), each with `mb` of segment files."""
    now = now or time.time()
    ids = []
    for age in ages_days:
        sid = store.start("synthetic:long", "test")
        store.db["sessions"].update(sid, {"started": now - age * DAY - 60, "ended": now - age * DAY,
                                          "status": "done"})
        kv = store.session_dir(sid) / "kv"
        kv.mkdir(parents=True, exist_ok=True)
        (kv / "segment-000000.safetensors").write_bytes(b"\0" * int(mb * 1e6))
        ids.append(sid)
        time.sleep(1.1)                     # ids carry the second they were made in
    return ids


def _left(store: SessionStore) -> set[str]:
    return {i.session_id for i in store.list()}


def test_age_then_size_oldest_first_and_nothing_left_on_disk(tmp_path, caplog):
    store = SessionStore(tmp_path)
    old, mid, new = _sessions(store, [40, 20, 1])
    with caplog.at_level(logging.WARNING, logger="onlooker.retention"):
        res = enforce(store, StorageConfig(max_age_days=30, max_gb=None))
    assert res.removed == [old] and _left(store) == {mid, new} and not store.session_dir(old).exists()
    assert f"removed session {old}" in caplog.text and "max_age_days 30" in caplog.text
    res = enforce(store, StorageConfig(max_age_days=None, max_gb=0.0015))    # 2 MB stored, 1.5 MB allowed
    assert res.removed == [mid] and _left(store) == {new} and res.freed_bytes == 1_000_000
    assert enforce(store, StorageConfig(max_age_days=None, max_gb=0.0015)).removed == []   # fits now
    assert sorted(os.listdir(tmp_path / "sessions")) == [new]


def test_kept_and_running_sessions_stay(tmp_path):
    store = SessionStore(tmp_path)
    a, b = _sessions(store, [50, 45])
    store.db["sessions"].update(b, {"ended": None, "status": "running", "pid": os.getpid()})   # alive: stays
    res = enforce(store, StorageConfig(max_age_days=1, max_gb=0.0001), keep={a})
    assert res.removed == [] and _left(store) == {a, b}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.db["sessions"].update(b, {"pid": dead.pid})           # its process is gone: it may go
    assert enforce(store, StorageConfig(max_age_days=1, max_gb=None), keep={a}).removed == [b]


def test_a_removal_that_leaves_files_names_them(tmp_path, monkeypatch, caplog):
    store = SessionStore(tmp_path)
    (sid,) = _sessions(store, [90])
    real = os.unlink

    def stuck(path, *a, **kw):
        if str(path).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", stuck)
    with caplog.at_level(logging.WARNING, logger="onlooker.retention"):
        res = enforce(store, StorageConfig(max_age_days=30))
    assert res.removed == [sid] and res.left_behind and "segment-000000.safetensors" in res.left_behind[0]
    assert "could not be deleted" in caplog.text and "segment-000000.safetensors" in caplog.text


@pytest.mark.parametrize("bad", ["max_gb = -1", "max_age_days = 0", "check_every_s = 0", "max_gb = \"lots\""])
def test_bad_storage_settings_are_one_line_exit_2(tmp_path, bad):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[storage]\n{bad}\n")
    p = subprocess.run([sys.executable, "-m", "assistant.cli", "sessions", "prune", "--config", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "ONLOOKER_DATA_DIR": str(tmp_path / "d")})
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "storage" in p.stderr, p.stderr


def test_run_applies_retention_at_start_and_prune_on_demand(tmp_path):
    store = SessionStore(tmp_path)
    old, recent = _sessions(store, [60, 2])
    env = {**os.environ, "ONLOOKER_DATA_DIR": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "assistant.cli", "run", "--source", "synthetic:short", "--fast",
                        "--headless", "--no-audio"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    assert f"retention: removed session {old}" in p.stderr
    assert old not in _left(SessionStore(tmp_path)) and recent in _left(SessionStore(tmp_path))
    p = subprocess.run([sys.executable, "-m", "assistant.cli", "sessions", "prune", "--max-age-days", "1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0 and "removed 1 session(s)" in p.stdout and recent in p.stdout
    assert recent not in _left(SessionStore(tmp_path)) and len(_left(SessionStore(tmp_path))) == 1



def test_the_housekeeper_trims_the_heap_often_and_applies_retention_hourly():
    from assistant.housekeeping import TRIM_EVERY_S, Housekeeper
    clock = [0.0]
    ran: list[float] = []
    keeper = Housekeeper(lambda: ran.append(clock[0]), 3600.0, clock=lambda: clock[0])
    assert keeper.every_s == TRIM_EVERY_S
    for _ in range(130):                    # the runtime calls it every TRIM_EVERY_S
        clock[0] += TRIM_EVERY_S
        keeper()
    assert keeper.trims == 130 and ran == [3600.0]
    assert Housekeeper(lambda: None, 5.0).every_s == 5.0      # a shorter retention period wins


_MMAP_PROBE = """
import ctypes, sys
from assistant.housekeeping import pin_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
pinned = pin_mmap_threshold() if sys.argv[1] == "pin" else False
libc.free(libc.malloc(8 << 20))          # a mapped block freed: unpinned glibc raises its threshold to 8 MiB
before = libc.mallinfo2().hblks
block = libc.malloc(4 << 20)
print(pinned, libc.mallinfo2().hblks - before)
libc.free(block)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.parametrize("mode,expected", [("pin", "True 1"), ("none", "False 0")])
def test_pinned_mmap_threshold_keeps_large_buffers_out_of_the_heap(mode, expected):
    """The soak's runaway heap was glibc's dynamic mmap threshold: after an 8 MiB block is freed, a 4 MiB
    buffer comes from the heap (no new mapping) unless the threshold is pinned."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    p = subprocess.run([sys.executable, "-c", _MMAP_PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.returncode == 0 and p.stdout.split("\n")[0] == expected, p.stdout + p.stderr
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"      # the user's own setting decides
    p = subprocess.run([sys.executable, "-c", _MMAP_PROBE, "pin"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60, env=env)
    assert p.stdout.startswith("False"), p.stdout + p.stderr


_THP_PROBE = """
import sys
from assistant.housekeeping import huge_pages_for_large_tensors
asked = huge_pages_for_large_tensors() if sys.argv[1] == "ask" else False
import torch

def huge_kb():
    return next(int(line.split()[1]) for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages"))
before = huge_kb()
x = torch.ones(64 << 20, dtype=torch.uint8)      # 64 MiB, every page touched
print(asked, (huge_kb() - before) // 1024)
"""


def _thp_mode() -> str | None:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


@pytest.mark.skipif(_thp_mode() not in ("madvise", "always"), reason="the kernel's transparent huge pages are off")
@pytest.mark.parametrize("mode,user", [("ask", None), ("ask", "0"), ("none", None)])
def test_large_tensors_on_huge_pages_when_asked_and_the_user_did_not_decide(mode, user):
    """Sealed KV lands in fresh host buffers of megabytes; backed by 2 MB pages they fault once per 2 MB. Asked
    (as `onlooker run` asks), a 64 MiB tensor sits on huge pages; the user's THP_MEM_ALLOC_ENABLE=0 decides
    otherwise. Not asked, only a kernel that always uses them does."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if user is not None:
        env["THP_MEM_ALLOC_ENABLE"] = user
    p = subprocess.run([sys.executable, "-c", _THP_PROBE, mode], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    asked, huge_mb = p.stdout.split()
    assert asked == str(mode == "ask" and user is None)
    if asked == "True":
        assert int(huge_mb) >= 32, p.stdout
    elif _thp_mode() == "madvise":
        assert int(huge_mb) < 32, p.stdout
