"""tiny-vl: what is established so far. Its language model is SmolLM2 exactly (the builder maps the weights
right), its trained parts are small, and it runs through the whole VLM path (source -> VisualStream ->
memory -> answer) on held-out scenes: the sign's word now (the issue's 90%), a past moment's word read back from
sealed segments (its 80%), colours, the person watch (docs/benchmarks.md, train/logs)."""

from __future__ import annotations

import json

import torch

from assistant.cli import main
from bench.tiny_vl_path import PAST_Q, asked_of, watch_score
from model.tiny_vl import TRAINED
from perception.synthetic import BOARD_COLOURS, SignScene, word_split, words


def test_word_splits_are_disjoint_and_fixed():
    train, held, ev = set(words("train")), set(words("heldout")), set(words("eval"))
    assert not (train & held) and not (train & ev) and not (held & ev) and len(held) > 500
    assert all(word_split(s.word) == "heldout" for s in SignScene.random(3, 60, "heldout").signs)


def test_the_language_model_inside_is_smollm2_exactly(lite_backend):
    from assistant.store import default_cache_dir
    from model.causal_lm import lite_model_dir
    from model.tiny_vl import build
    model, tok = build(lite_model_dir(default_cache_dir(), convert=False))
    ids = tok("<|im_start|>user\nWhat is on the sign?<|im_end|>\n<|im_start|>assistant\n",
              return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    with torch.no_grad():
        want = lite_backend.model(input_ids=ids).logits[0, -1]
        lm = model.model.language_model
        h = lm(inputs_embeds=lm.embed_tokens(ids), position_ids=torch.arange(n).view(1, 1, n).expand(3, 1, n))
        got = model.lm_head(h.last_hidden_state)[0, -1, :want.shape[0]]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert TRAINED.stat().st_size < 40e6


def test_lora_merged_at_load_equals_the_training_wrappers_attention_and_mlp():
    """What train.tiny_vl trains (LoRA wrappers, with --lora-mlp on the MLPs too) is what the loader builds
    (deltas merged into the weights): same logits."""
    from assistant.store import default_cache_dir
    from model.causal_lm import lite_model_dir
    from model.tiny_vl import build
    from train.tiny_vl import LORA_SCALE, add_lora
    lite = lite_model_dir(default_cache_dir(), convert=False)
    torch.manual_seed(0)
    trained_model, tok = build(lite)
    lora = add_lora(trained_model, mlp_rank=4)
    assert any(".gate_proj." in k for k in lora) and any(".q_proj." in k for k in lora)
    ids = tok("<|im_start|>user\nWhat is on the sign?<|im_end|>", return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    pos = torch.arange(n).view(1, 1, n).expand(3, 1, n)

    def last_logits(m):
        lm = m.model.language_model
        return m.lm_head(lm(inputs_embeds=lm.embed_tokens(ids), position_ids=pos).last_hidden_state)[0, -1]

    with torch.no_grad():
        base = last_logits(trained_model)                    # B is zero: the wrappers add nothing yet
        for k, v in lora.items():
            if k.endswith(".B"):
                v.normal_(0, 0.02)                           # give the loader something to merge
        weights = {f"visual.{k}": v for k, v in trained_model.model.visual.state_dict().items()}
        merged, _ = build(lite, weights | {k: v.detach() for k, v in lora.items()}, lora_scale=LORA_SCALE)
        want, got = last_logits(trained_model), last_logits(merged)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert (want - base).abs().max() > 1e-2                  # the deltas change the logits (the test can fail)


def test_tiny_vl_runs_the_whole_vlm_path_on_a_held_out_scene(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    assert main(["run", "--source", "synthetic:vl-heldout-3", "--model", "tiny-vl", "--headless", "--fast",
                 "--no-audio", "--ask", "10:What colour is the sign?"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    summary = records[-1]
    assert summary["model"] == "tiny-vl" and summary["visual_groups"] == 30 and summary["segments_sealed"] > 0
    answer = next(r for r in records if r["type"] == "answer")
    assert answer["text"].strip().lower() in BOARD_COLOURS        # it answers in the form it was trained on


def stable_moments(scene: SignScene, last: float = 58.0) -> list[float]:
    """One ask time per sign that is shown for 5 s or more: 4 s after it appears, so both frames of the newest
    frame pair the runtime has taken in (1 fps, pairs on even seconds) show it; the answer is then the sign's
    word without doubt about what the model could have seen yet."""
    return [s.t0 + 4.0 for s in scene.signs if s.t1 - s.t0 >= 5.0 and s.t0 + 4.0 <= last]


def test_tiny_vl_reads_unseen_words_and_colours_on_the_sign_now(tmp_path, monkeypatch, capsys):
    """The issue's first target: the current sign's word on held-out scenes (words never trained on), read off
    the pixels through the whole VLM path with no text restated (perceivers beside the model off), >= 90% exact.
    Seeds 71-73 and the bar were fixed before these seeds were run; the benchmark's seeds (61-65) gave 12 of 15
    at step 17553 when scored at the ask time, 14 of 15 against the newest frame taken in. The board's colour is
    asked half a second after each word, bar 50% (chance 1/7), fixed before these runs; the colour test it
    replaces (seeds 21-24, bar 4 of 12) gave 2 of 12 with the step-9124 weights and 9 of 12 at step 14604."""
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    words_right = colours_right = asked = 0
    wrong = []
    for seed in (71, 72, 73):
        scene = SignScene.random(seed, 60, "heldout")
        times = stable_moments(scene)
        assert main(["run", "--source", f"synthetic:vl-heldout-{seed}", "--model", "tiny-vl", "--headless", "--fast",
                     "--no-audio", "--perceive-beside", "off",
                     *[f"--ask={t:g}:What word is on the sign?" for t in times],
                     *[f"--ask={t + 0.5:g}:What colour is the sign?" for t in times]]) == 0
        for line in capsys.readouterr().out.splitlines():
            r = json.loads(line) if line.startswith("{") else {}
            if r.get("type") == "answer" and "word" in r["question"]:
                want = scene.sign_at(r["t"]).word
                asked += 1
                words_right += r["text"].strip().rstrip(".").upper() == want
                wrong += [(seed, r["t"], want, r["text"])] if r["text"].strip().rstrip(".").upper() != want else []
            elif r.get("type") == "answer":
                colours_right += r["text"].strip().rstrip(".").lower() == scene.sign_at(r["t"]).board
        assert word_split(scene.signs[0].word) == "heldout"
    assert asked >= 12 and words_right >= 0.9 * asked, (words_right, asked, wrong)
    assert colours_right >= 0.5 * asked, (colours_right, asked)


def test_a_standing_instruction_fires_on_tinyvls_own_probe_without_perception(tmp_path, monkeypatch, capsys):
    """The watcher on the VLM path with perception beside the model off: only tiny-vl's P(yes) on "a person is
    in view" (a phrasing it was trained on, asked of held-out scenes) can fire. Bars fixed before seeds 44-45 were
    run (seeds 41-43, the development run, gave 9 of 10 entries within 4.2 s and one false alert at 0:01): an
    alert within 5 s of at least 3 in 4 entries of 3 s or more, at most one alert when nobody is in view. Since
    step 17553 the issue's own bar, no alert when nobody is in view (set before these seeds were run with it)."""
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    entries = hits = false = 0
    for seed in (44, 45):
        assert main(["run", "--source", f"synthetic:vl-heldout-{seed}", "--model", "tiny-vl", "--headless", "--fast",
                     "--no-audio", "--perceive-beside", "off", "--watch", "a person is in view"]) == 0
        scene = SignScene.random(seed, 60, "heldout")
        alerts = [r for r in (json.loads(line) for line in capsys.readouterr().out.splitlines()
                              if line.startswith("{")) if r["type"] == "alert"]
        assert all(a["source"] == "model" for a in alerts)
        e, h, f = watch_score(scene, [a["t"] for a in alerts])
        entries, hits, false = entries + e, hits + h, false + f
    assert entries and hits >= 0.75 * entries and false == 0, (hits, entries, false)


def test_tiny_vl_reads_a_past_moment_back_from_sealed_segments(tmp_path, monkeypatch, capsys):
    """Past times asked at 0:56 with a 256-token window (about 20 s here), so each moment has been sealed off
    the device and is answered from the retrieved KV alone, with no text restated (perceivers beside the model
    off). Held-out scenes 46-47, 8 questions: at least 7 of the 8 moments placed back by retrieval (fixed before
    these seeds were run), and the issue's 80% of the words exact (7 of 8; raised from 3 of 8 at step 17553, before
    these seeds were run with it). The benchmark (bench.tiny_vl_path, seeds
    61-65) gave 5 of 10 at step 14604, and 0 of 6 on seeds 61-63 with keyframes off (a sealed segment then holds
    only what changed since the pair before it)."""
    monkeypatch.setenv("ONLOOKER_DATA_DIR", str(tmp_path))
    moments = (4, 12, 20, 28)
    right = placed = 0
    for seed in (46, 47):
        assert main(["run", "--source", f"synthetic:vl-heldout-{seed}", "--model", "tiny-vl", "--headless", "--fast",
                     "--no-audio", "--perceive-beside", "off", "--window", "256",
                     *[f"--ask={56 + i * 0.5}:{PAST_Q.format(t)}" for i, t in enumerate(moments)]]) == 0
        scene = SignScene.random(seed, 60, "heldout")
        for line in capsys.readouterr().out.splitlines():
            r = json.loads(line) if line.startswith("{") else {}
            asked = asked_of(r["question"]) if "question" in r else None
            if r.get("type") == "question":
                placed += any(a <= asked < b for a, b in r["retrieved"])
            elif r.get("type") == "answer":
                right += r["text"].strip().rstrip(".").upper() == scene.sign_at(asked).word
    assert placed >= 7 and right >= 7, (placed, right)
