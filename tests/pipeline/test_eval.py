"""`onlooker eval` end to end: the quick suite's onlooker config against its bars (the CI's check), and a public
benchmark's question file run through the real pipeline on the bottle video."""

from __future__ import annotations

import json

from assistant.cli import main
from tests.conftest import BOTTLE


def test_the_quick_suite_passes_its_bars(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    rc = main(["eval", "--suite", "quick", "--configs", "onlooker", "--check", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["seed"] for r in rows] == [1001, 1002]
    kinds = {a["kind"] for r in rows for a in r["answers"]}
    assert kinds == {"now", "past_time", "past_content", "when", "before_after", "count"}
    assert "| all questions |" in printed.out


def test_a_public_benchmark_file_runs_through_the_pipeline(tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    videos = str(BOTTLE).rsplit("/", 1)[0]
    rc = main(["eval", "--public", "ovo:tests/data/public/ovo.json", "--videos", videos, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["t"], r["want"]) for r in rows] == [(25.0, "A"), (10.0, "C")]
    assert all(r["got"] for r in rows)                   # every question was answered by the pipeline
    assert main(["eval", "--public", "ovo:tests/data/public/ovo.json", "--videos", str(tmp_path)]) == 2
