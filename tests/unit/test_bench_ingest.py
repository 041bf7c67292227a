"""`bench ingest`'s pieces that are not the product: the feed that prepares frame pairs inside the timed loop,
and the plain-transformers baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.ingest_baseline import run_transformers
from bench.ingest_feed import Feed, Prepared
from perception.visual import patch_change


def _frames(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for _ in range(n)]


def test_the_feed_prepares_inside_the_loop_what_was_prepared_before_the_clock(tiny_qwen):
    frames = _frames(6)
    before = Prepared(tiny_qwen, frames, pin=False)
    feed = Feed(tiny_qwen, frames, pin=False, ahead=2)
    try:
        prev = None
        for g in range(7):                               # past the end of the loop: it wraps, in order
            patches, grid = feed.get(g)
            want_p, want_g = before.get(g)
            assert torch.equal(patches, want_p) and torch.equal(grid, want_g)
            # the reuse check against the pair handed over before, made on the feed's thread, as Prepared made it
            want_c = None if prev is None else patch_change(patches, prev)
            assert feed.change == before.change == want_c
            prev = patches
        assert not torch.equal(feed.get(7)[0], before.get(6)[0])      # pair 7 is pair 1 again, not pair 6
    finally:
        feed.close()
    assert not feed.thread.is_alive()


def test_the_transformers_baseline_streams_pairs_into_a_growing_cache(tiny_qwen):
    frames = _frames(4)
    seen: list[int] = []                                 # the cache length each forward of the LM starts from
    hook = tiny_qwen.language_model().register_forward_pre_hook(
        lambda _m, _a, kw: seen.append((kw.get("past_key_values") or kw.get("cache")).get_seq_length()),
        with_kwargs=True)
    try:
        row = run_transformers(tiny_qwen, lambda: Prepared(tiny_qwen, frames, pin=False), minutes=3 / 60, fps=2.0,
                               device="cpu", wall_cap_s=120, param_counts=(1, 1))
    finally:
        hook.remove()
    per_pair = int(Prepared(tiny_qwen, frames, pin=False).get(0)[1].prod()) // 4
    assert row["frames"] == 6 and row["stream_s"] == 3.0 and row["oom_at_stream_s"] is None
    assert row["tokens_per_frame"] == per_pair / 2 and row["ttft_ms"] > 0
    assert seen == [0, per_pair + 2, 2 * (per_pair + 2), 3 * (per_pair + 2)]   # 3 pairs, then the question


def test_full_batches_run_every_tower_call_at_the_batch_size(tiny_qwen, tower_call_sizes):
    """`--full-batches` reaches the stream the configuration runs: the last, short batch of 7 pairs in batches of 3
    is padded (as `run --fast` pads it); without it that call has one pair."""
    from bench.ingest import run_config
    frames = _frames(8)
    calls = []
    for full in (False, True):
        row = run_config("onlooker", tiny_qwen, lambda: Prepared(tiny_qwen, frames, pin=False), minutes=7 / 60,
                         fps=2.0, device="cpu", window=4096, batch=3, wall_cap_s=60, param_counts=(1, 1),
                         questions=1, full=full)
        assert row["frames"] == 14 and row["vit_groups"] == 7
        assert set(row["wait_s"]) == {"landing", "keep_masks", "feed"} and row["wait_s"]["feed"] == 0.0   # prepared
        calls.append(tower_call_sizes[:])
        tower_call_sizes.clear()
    assert calls == [[3, 3, 1], [3, 3, 3]]


@pytest.mark.parametrize("flag", ["--batch", "--window", "--repeat"])
def test_a_count_below_one_is_refused_in_one_line_before_the_model_loads(capsys, monkeypatch, flag):
    """`--batch 0` (and the like) is bad input: argparse's one-line error and exit 2, not the model built and then
    an internal failure."""
    import bench.ingest

    def built(*a, **k):
        raise AssertionError("the model was built")
    monkeypatch.setattr(bench.ingest, "build_backend", built)
    with pytest.raises(SystemExit) as e:
        bench.ingest.main(["--device", "cpu", flag, "0"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                       # argparse: its usage, then the error in one line
    assert e.value.code == 2 and "Traceback" not in err and flag in last and "invalid" in last, err
