"""What train.tiny_vl teaches matches what the runtime does: its token-drop mask equals VisualStream's drop,
and the examples laid out "as the runtime samples" are consecutive 1 fps pairs."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from perception.visual import VisualConfig, VisualStream
from train.tiny_vl import drop_keep
from train.tiny_vl_data import key_pairs, make_example


def runtime_keep(pairs: list[torch.Tensor], times: list[float], threshold: float) -> torch.Tensor:
    """VisualStream._drop_mask applied pair after pair, as the runtime applies it to a stream (keyframes every 8 s)."""
    state = SimpleNamespace(_ref=None, _key_bucket=None, config=VisualConfig(drop_threshold=threshold))
    out = []
    for x, t in zip(pairs, times, strict=True):
        mask = VisualStream._drop_mask(state, x, t)
        out.append(torch.ones(x.shape[0], dtype=torch.bool) if mask is None else mask)
    return torch.cat(out)


def test_the_training_drop_mask_is_the_runtimes_token_drop():
    torch.manual_seed(0)
    base = torch.randn(16, 8)
    streams, times = [], []
    for t0, n in ((2.0, 6), (30.0, 3)):         # two examples: each is its own stream (its first pair keeps all)
        pairs = [base + 0.05 * torch.randn(16, 8)]
        for _ in range(n - 1):
            nxt = pairs[-1].clone()
            moved = torch.rand(16) < 0.3        # some patches change, the rest stay (dropped)
            nxt[moved] = torch.randn(int(moved.sum()), 8)
            pairs.append(nxt + 0.01 * torch.randn(16, 8))
        streams.append(pairs)
        times.append([t0 + 2.0 * j for j in range(n)])    # 2, 4, 6, 8 (a keyframe: a new 8-s span), 10, 12
    feats = torch.cat([torch.cat(p) for p in streams])
    keys = [k for ts in times for k in key_pairs(ts)]
    assert keys == [True, False, False, True, False, False, True, True, False]
    got = drop_keep(feats, keys, 0.95)
    want = torch.cat([runtime_keep(p, ts, 0.95) for p, ts in zip(streams, times, strict=True)])
    assert torch.equal(got, want)
    assert 0 < int((~got).sum()) < got.numel() - 64       # some dropped, the key pairs kept: the test can fail
    assert bool(drop_keep(feats, keys, 1.0).all())         # threshold 1 keeps every token


def runs(times: list[float]) -> list[list[float]]:
    """Times split where consecutive pairs are more than 2 s apart."""
    out = [[times[0]]]
    for a, b in zip(times, times[1:]):
        out.append([b]) if b - a > 2.0 else out[-1].append(b)
    return out


def test_runtime_layout_examples_end_in_a_window_of_consecutive_pairs():
    rng = random.Random(5)
    exs = [make_example(rng, "train", kind, stream=True) for kind in ("now", "past", "person_probe") for _ in range(6)]
    for ex in exs:
        window = runs(ex.times)[-1]
        assert ex.stream and len(window) >= 2 and len(ex.patches) == len(ex.times) == len(key_pairs(ex.times))
        assert all(t % 2.0 == 0.0 for t in ex.times)             # the runtime's pairs start on even seconds
    spread = make_example(random.Random(5), "train", "past", stream=False)
    assert not spread.stream


def test_retrieved_runs_start_at_keyframes_and_past_questions_ask_about_them():
    rng = random.Random(3)
    exs = [make_example(rng, "train", "past", stream=True) for _ in range(16)]
    with_runs = [ex for ex in exs if len(runs(ex.times)) > 1]
    assert len(with_runs) >= 4
    asked_early = 0
    for ex in with_runs:
        *early, window = runs(ex.times)
        keys = key_pairs(ex.times)
        for run in early:
            assert run[0] % 8.0 == 0.0 and len(run) in (2, 4)     # from a keyframe to a segment boundary
            assert keys[ex.times.index(run[0])]                # kept whole, as the runtime kept it
        assert keys[ex.times.index(window[0])]
        m, sec = ex.turn.rsplit(" at ", 1)[1].split("?")[0].split(":")
        asked = 60.0 * int(m) + int(sec)
        asked_early += any(r[0] <= asked <= r[-1] + 1.0 for r in early)
    assert asked_early >= len(with_runs) // 2


def test_training_strings_are_never_words_and_never_held_out():
    from perception.synthetic import all_words, letter_strings, word_split
    strings = letter_strings()
    assert len(strings) == len(set(strings)) == 20000
    assert not set(strings) & set(all_words())
    assert {word_split(s) for s in strings} == {"train"}
    assert all(4 <= len(s) <= 7 and s.isalpha() and s.isupper() for s in strings)


def test_word_answers_are_taught_one_letter_per_token_and_decode_to_the_word(lite_tokenizer):
    from train.tiny_vl_data import Layout
    tok = lite_tokenizer
    layout = Layout(tok, {t: int(tok.convert_tokens_to_ids(t)) for t in
                          ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")})
    for word in ("ZEBRA", "QUILT", "STOP", "XKQJWV"):
        ids = layout.answer_ids(word)
        assert len(ids) == len(word)                              # one token per letter
        assert tok.decode(ids) == word                            # the answer's text is the word itself
    assert layout.answer_ids("ZEBRA") != layout.encode("ZEBRA")   # not the tokenizer's own pieces (ZE B RA)
    assert layout.answer_ids("red") == layout.encode("red")       # colours, counts, yes/no: unchanged
    assert layout.answer_ids("3") == layout.encode("3")
