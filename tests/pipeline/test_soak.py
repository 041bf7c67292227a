"""bench soak through the real pipeline (lite, CPU): a short form in the default run, the long one `slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _soak(tmp_path, hours: float, sample_min: float) -> tuple[int, list[dict], dict]:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench.soak", "--hours", str(hours), "--fps", "0.1",
                           "--sample-min", str(sample_min), "--out-dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=3000, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    lines = [json.loads(x) for x in (out / "soak.jsonl").read_text().splitlines()]
    assert (out / "soak.png").stat().st_size > 10_000
    assert "| stream h |" in proc.stdout and "GB per stream-hour" in proc.stdout
    return proc.returncode, lines[:-1], lines[-1]


def test_soak_short_form_threads_files_and_disk_are_flat(tmp_path):
    rc, rows, final = _soak(tmp_path, hours=0.25, sample_min=3)
    assert len(rows) >= 5 and rows[-1]["stream_h"] == pytest.approx(0.25, abs=0.02)
    assert final["summary"]["error"] is None
    later = rows[1:]                                    # after the first sample every thread has started
    assert max(r["threads"] for r in later) <= later[0]["threads"]
    assert max(r["open_files"] for r in later) <= later[0]["open_files"]
    folder = [r["folder_mb"] for r in rows]
    assert all(b > a for a, b in zip(folder[1:], folder[2:]))          # every segment reaches disk as it closes
    assert 0.1 < final["gb_per_stream_hour"] < 1.0                     # what the lite path writes (~0.27 GB/h)
    assert rows[-1]["rss_mb"] < 1.15 * rows[len(rows) // 3]["rss_mb"]   # loose here; 5% is the long form's


@pytest.mark.slow
def test_soak_two_stream_hours_is_flat(tmp_path):
    rc, rows, final = _soak(tmp_path, hours=2.0, sample_min=10)
    assert rc == 0 and final["ok"], final["verdict"]
    assert sum(len(r.get("answers", [])) for r in rows) == 1            # the question at 1 h was answered
