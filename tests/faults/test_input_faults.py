"""Faults a user hits at the command line: each gives one `onlooker: error: ...` line and exit 2 (bad
input) or 1 (internal failure), never a traceback or a hang."""

from __future__ import annotations

import pytest

from assistant.cli import main


def _one_error_line(capsys, code: int, rc: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert rc == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("onlooker: error: "), err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path / "data"))


def _run(*extra: str) -> int:
    return main(["run", "--source", "synthetic:short", "--headless", "--fast", "--no-audio", *extra])


@pytest.mark.parametrize("content,words", [
    (None, ("does not exist",)),
    ("DIR", ("is a directory",)),
    (b"\xff\xfe[memory]\n", ("not UTF-8",)),
    ("[memory\nwindow_tokens = 4", ("TOML syntax",)),
    ("colour = 'red'\n", ("unknown setting 'colour'",)),
    ("[perception]\nsample_fps = 1\nzoom = 2\n", ("unknown setting 'zoom'", "[perception]")),
    ("[memory]\nwindow = 4\n", ("unknown setting 'window'", "[memory]")),
    ("[reasoning]\ntemperature = 0.5\n", ("unknown setting 'temperature'",)),
    ("[memory]\nwindow_tokens = 'big'\n", ("window_tokens", "expected int")),
    ("[perception]\nsample_fps = true\n", ("sample_fps", "expected float")),
    ("[memory]\nkeep_ratio = 2.0\n", ("keep_ratio",)),
    ("[perception]\nsample_fps = 0\n", ("sample_fps",)),
    ("[reasoning]\nmax_new_tokens = 0\n", ("max_new_tokens",)),
    ("watch = 'a person appears'\n", ("watch", "expected list")),
    ("memory = 3\n", ("[memory] must be a table",)),
    ("device = 'tpu'\n", ("device",)),
    ("[perception]\nscene_change_threshold = nan\n", ("finite",)),
])
def test_bad_config_file(tmp_path, capsys, content, words):
    path = tmp_path / "onlooker.toml"
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    _one_error_line(capsys, 2, _run("--config", str(path)), *words)


@pytest.mark.parametrize("flags,words", [
    (("--fps", "0"), ("sample_fps",)),
    (("--fps", "-1"), ("sample_fps",)),
    (("--fps", "nan"), ("sample_fps",)),
    (("--window", "0"), ("window_tokens",)),
    (("--keep-ratio", "0"), ("keep_ratio",)),
    (("--ask", "inf:What is on the sign?"), ("--ask",)),
    (("--ask", "nan:What is on the sign?"), ("--ask",)),
    (("--ask=-3:What?",), ("--ask",)),
])
def test_bad_flags_are_refused_not_replaced_by_defaults(capsys, flags, words):
    _one_error_line(capsys, 2, _run(*flags), *words)


def test_unknown_demo_scene(capsys):
    _one_error_line(capsys, 2, main(["demo", "--headless", "--scene", "nowhere"]), "unknown scene")


def test_a_model_directory_with_garbage_weights(tmp_path, capsys, lite_backend):
    import shutil

    from assistant.store import default_cache_dir
    from model.causal_lm import lite_model_dir
    src = lite_model_dir(default_cache_dir(), convert=False)
    bad = tmp_path / "garbage-model"
    shutil.copytree(src, bad, ignore=shutil.ignore_patterns("*.safetensors"))
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 1000)
    _one_error_line(capsys, 2, _run("--model", str(bad)), "cannot load the model")


def test_an_internal_failure_is_one_line_and_exit_1(capsys, monkeypatch):
    import assistant.store
    monkeypatch.setattr(assistant.store, "format_session_list", lambda infos: 1 / 0)
    _one_error_line(capsys, 1, main(["sessions"]), "internal failure", "ZeroDivisionError")
