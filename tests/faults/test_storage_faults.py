"""Faults of the data directory, the disk and the session index: one clear line, the right exit code, and
nothing that was written is lost."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
from pathlib import Path

import pytest
import sqlite_utils

from assistant.cli import main


def _err_lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.strip()]


def _json(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.fixture
def data(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "data"
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(d))
    return d


def _record_session(capsys) -> dict:
    assert main(["run", "--source", "synthetic:short", "--headless", "--fast", "--no-audio",
                 "--ask", "3:What word is on the sign?"]) == 0
    return _json(capsys.readouterr().out)[-1]


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="chown needs root")
def test_a_data_dir_owned_by_another_user(data, capsys):
    data.mkdir()
    os.chown(data, 12345, 12345)
    assert main(["sessions"]) == 2
    lines = _err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "belongs to another user" in lines[0]


def test_a_file_in_the_way_of_the_data_dir(data, capsys):
    data.parent.mkdir(exist_ok=True)
    data.write_text("not a directory")
    assert main(["sessions"]) == 2
    lines = _err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("onlooker: error: cannot store sessions")


@pytest.mark.parametrize("code,words", [(errno.EROFS, "read-only filesystem"), (errno.EACCES, "permission denied")])
def test_a_data_dir_on_a_read_only_or_unwritable_filesystem(data, capsys, monkeypatch, code, words):
    """As root every directory is writable, so the filesystem's answer is simulated at the one call that asks."""
    real_open = os.open

    def refusing_open(path, *a, **k):
        if str(path).startswith(str(data)):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", refusing_open)
    rc = main(["run", "--source", "synthetic:short", "--headless", "--fast", "--no-audio"])
    lines = _err_lines(capsys.readouterr().err)
    assert rc == 2 and len(lines) == 1 and words in lines[0] and "ONLOOKER_DATA_DIR" in lines[0], lines


@pytest.mark.parametrize("argv", [["run", "--source", "synthetic:short", "--headless", "--fast", "--no-audio"],
                                  ["sessions", "show", "latest"], ["sessions"]])
def test_a_corrupt_session_database(data, capsys, argv):
    data.mkdir()
    (data / "onlooker.db").write_bytes(b"this is not an sqlite database" * 100)
    assert main(argv) == 2
    lines = _err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "is damaged" in lines[0] and "onlooker.db" in lines[0], lines


def _disk_full_after(monkeypatch, inserts_allowed: int) -> None:
    """Every database insert/update after the first `inserts_allowed` fails as on a full disk, and so does
    every segment file write after the first `inserts_allowed - 1`."""
    import memory.segment_store
    calls = {"n": 0}
    real_insert, real_update = sqlite_utils.db.Table.insert, sqlite_utils.db.Table.update

    def full(real):
        def write(self, *a, **k):
            calls["n"] += 1
            if calls["n"] > inserts_allowed:
                raise sqlite3.OperationalError("database or disk is full")
            return real(self, *a, **k)
        return write
    monkeypatch.setattr(sqlite_utils.db.Table, "insert", full(real_insert))
    monkeypatch.setattr(sqlite_utils.db.Table, "update", full(real_update))

    real_write = memory.segment_store.write_segment_file
    files = {"n": 0}

    def no_space(path, seg):
        files["n"] += 1
        if files["n"] >= inserts_allowed:            # the same share of segment files gets through
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, seg)
    monkeypatch.setattr(memory.segment_store, "write_segment_file", no_space)


def test_the_disk_fills_during_a_run(data, capsys, monkeypatch):
    """Writing stops with one warning, the stream and the answers go on, what was written stays."""
    _disk_full_after(monkeypatch, inserts_allowed=3)     # the session row and two segment rows get through
    rc = main(["run", "--source", "synthetic:short", "--headless", "--fast", "--no-audio", "--window", "64",
               "--ask", "9:What word is on the sign?"])
    out, err = capsys.readouterr()
    records = _json(out)
    summary = records[-1]
    assert rc == 0 and summary["type"] == "summary" and summary["error"] is None
    assert [r for r in records if r["type"] == "answer"][0]["text"]
    assert summary["storage_error"] and "disk is full" in summary["storage_error"]
    warnings = [line for line in _err_lines(err) if "storage" in line]
    assert warnings and all("Traceback" not in w for w in warnings)
    monkeypatch.undo()
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(data))
    assert main(["sessions", "show", summary["session_id"]]) == 0      # what was written is still there
    shown = _json(capsys.readouterr().out)
    assert 1 <= sum(r["type"] == "segment" for r in shown) <= 2


def test_the_disk_is_full_during_ask(data, capsys, monkeypatch):
    _record_session(capsys)
    _disk_full_after(monkeypatch, inserts_allowed=0)
    rc = main(["ask", "--json", "What word was on the sign at 0:02?"])
    out, err = capsys.readouterr()
    assert rc == 0 and _json(out)[-1]["text"]                        # the answer is still given
    lines = _err_lines(err)
    assert any("not recorded" in line and "disk is full" in line for line in lines), lines


def test_sessions_rm_reports_what_it_could_not_delete(data, capsys, monkeypatch):
    sid = _record_session(capsys)["session_id"]
    kv = data / "sessions" / sid / "kv"
    stuck = sorted(kv.glob("*.safetensors"))[0]
    real_unlink = os.unlink

    def unlink(path, *a, **k):
        if Path(path).name == stuck.name:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(path))
        return real_unlink(path, *a, **k)
    monkeypatch.setattr(os, "unlink", unlink)
    assert main(["sessions", "rm", sid]) == 1
    lines = _err_lines(capsys.readouterr().err)
    assert len(lines) == 1 and stuck.name in lines[0] and "could not be deleted" in lines[0]
    assert stuck.exists()
