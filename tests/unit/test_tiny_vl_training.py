"""What train.tiny_vl teaches matches what the runtime does: its token-drop mask equals VisualStream's drop,
and the examples laid out "as the runtime samples" are consecutive 1 fps pairs."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from perception.visual import VisualConfig, VisualStream
from train.tiny_vl import drop_keep
from train.tiny_vl_data import make_example


def runtime_keep(pairs: list[torch.Tensor], threshold: float) -> torch.Tensor:
    """VisualStream._drop applied pair after pair, as the runtime applies it to one stream."""
    state = SimpleNamespace(_ref=None, config=VisualConfig(drop_threshold=threshold))
    out = []
    for x in pairs:
        keep = VisualStream._drop(state, x)
        mask = torch.ones(x.shape[0], dtype=torch.bool)
        if keep is not None:
            mask[:] = False
            mask[keep] = True
        out.append(mask)
    return torch.cat(out)


def test_the_training_drop_mask_is_the_runtimes_token_drop():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    streams = []
    for n in (4, 3):                            # two examples: each is its own stream (its first pair keeps all)
        pairs = [base + 0.05 * torch.randn(16, 8)]
        for _ in range(n - 1):
            nxt = pairs[-1].clone()
            moved = torch.rand(16) < 0.3        # some patches change, the rest stay (dropped)
            nxt[moved] = torch.randn(int(moved.sum()), 8)
            pairs.append(nxt + 0.01 * torch.randn(16, 8))
        streams.append(pairs)
    feats = torch.cat([torch.cat(p) for p in streams])
    got = drop_keep(feats, [len(p) for p in streams], 0.95)
    want = torch.cat([runtime_keep(p, 0.95) for p in streams])
    assert torch.equal(got, want)
    assert 0 < int((~got).sum()) < got.numel() - 32       # some dropped, the first pairs kept: the test can fail
    assert bool(drop_keep(feats, [4, 3], 1.0).all())       # threshold 1 keeps every token


def test_runtime_layout_examples_are_consecutive_pairs_two_seconds_apart():
    rng = random.Random(5)
    exs = [make_example(rng, "train", kind, stream=True) for kind in ("now", "past", "person_probe") for _ in range(3)]
    for ex in exs:
        assert ex.stream and len(ex.times) >= 2
        assert all(b - a == 2.0 for a, b in zip(ex.times, ex.times[1:]))
        assert len(ex.patches) == len(ex.times)
    spread = make_example(random.Random(5), "train", "past", stream=False)
    assert not spread.stream
