"""Examples for tiny-vl, laid out exactly as the runtime lays out a stream (the same sink text, frame markers,
M-RoPE positions, question and probe turns from reasoning.prompts), so what it learns is what the VLM path asks.

    sink | [m:ss] <vs> 64 visual tokens <ve> \\n | ... more frame pairs ... | question turn | answer <|im_end|>

Kinds: the word on the sign now; the word at a given past time (several pairs in context); the board colour;
how many shapes; yes/no probes on a word and on a person being in view (the watcher's probe text). Training
draws scenes and words from the "train" split only; evaluation from "heldout" (perception.synthetic).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from model.chunk import format_time
from model.qwen_vl import IMAGE_MEAN, IMAGE_STD, frame_marker, patchify, vision_positions
from model.tiny_vl import MAX_PIXELS
from perception.synthetic import SignScene, words
from reasoning import prompts

NOW_Q = ["What word is on the sign?", "What word is written on the sign right now?", "What does the sign say?"]
PAST_Q = ["What did the sign say at {t}?", "What word was on the sign at {t}?"]
COLOUR_Q = ["What colour is the sign?", "What color is the board?"]
COUNT_Q = ["How many shapes are moving?", "How many shapes do you see?"]
PERSON_C = ["a person is in view", "someone is visible"]
WORD_C = ['the sign says "{w}"', "the sign shows {w}"]
KINDS = {"now": 0.3, "past": 0.2, "colour": 0.1, "count": 0.1, "word_probe": 0.15, "person_probe": 0.15}
DROP_THRESHOLD = 0.95          # perception.visual.VisualConfig.drop_threshold


@dataclass
class Example:
    kind: str
    patches: list[torch.Tensor]        # one (256, 1176) per frame pair, stream order
    grids: list[torch.Tensor]          # (3,) each
    times: list[float]                 # each pair's first frame time
    turn: str                          # the question or probe turn text
    answer: str


def pair(scene: SignScene, t0: float) -> tuple[torch.Tensor, torch.Tensor]:
    frames = [scene.render(t0), scene.render(t0 + 1.0)]             # two frames 1 s apart (1 fps sampling)
    return patchify(frames, 14, 2, 2, MAX_PIXELS, 56 * 56, IMAGE_MEAN, IMAGE_STD)


def make_example(rng: random.Random, split: str, kind: str | None = None) -> Example:
    kind = kind or rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    scene = SignScene.random(rng.randrange(1 << 30), duration_s=rng.uniform(40, 400), split=split)
    k = rng.randint(3, 5) if kind == "past" else rng.randint(1, 3)
    span = scene.duration_s - 2.0
    if kind == "person_probe" and scene.people and rng.random() < 0.5:   # half the probes inside an interval
        a, b = rng.choice(scene.people)
        last = min(span, rng.uniform(a, max(a, b - 1.0)))
    else:
        last = rng.uniform(0.0, span)
    gaps = sorted(rng.uniform(2.0, 40.0) for _ in range(k - 1))
    times = [max(0.0, last - g) for g in reversed(gaps)] + [last]
    times = sorted({round(t) * 1.0 for t in times})
    now = times[-1] + 1.0
    sign = scene.sign_at(now)
    if kind == "now":
        turn, answer = prompts.question_text(now, rng.choice(NOW_Q)), sign.word
    elif kind == "past":
        target = rng.choice(times[:-1] or times)
        turn = prompts.question_text(now, rng.choice(PAST_Q).format(t=format_time(target)))
        answer = scene.sign_at(target).word
    elif kind == "colour":
        turn, answer = prompts.question_text(now, rng.choice(COLOUR_Q)), sign.board
    elif kind == "count":
        turn, answer = prompts.question_text(now, rng.choice(COUNT_Q)), str(len(sign.shapes))
    elif kind == "word_probe":
        yes = rng.random() < 0.5
        w = sign.word if yes else rng.choice([x for x in rng.sample(words(split), 3) if x != sign.word])
        turn, answer = prompts.probe_text(now, rng.choice(WORD_C).format(w=w)), "yes" if yes else "no"
    else:
        turn, answer = prompts.probe_text(now, rng.choice(PERSON_C)), "yes" if scene.person_at(now) else "no"
    made = [pair(scene, t) for t in times]
    return Example(kind, [p for p, _ in made], [g for _, g in made], times, turn, answer)


def keep_masks(feats: list[torch.Tensor]) -> list[torch.Tensor]:
    """perception.visual's differential token drop over the pairs of one context, in stream order."""
    out, ref = [], None
    for f in feats:
        if ref is None or ref.shape != f.shape:
            ref = f.detach().clone()
            out.append(torch.ones(f.shape[0], dtype=torch.bool, device=f.device))
            continue
        keep = torch.nn.functional.cosine_similarity(f.detach().float(), ref.float(), dim=-1) < DROP_THRESHOLD
        ref[keep] = f.detach()[keep]
        out.append(keep)
    return out


class Layout:
    """Token ids and positions of the text pieces (cached), and the assembly of one example."""

    def __init__(self, tok, ids: dict[str, int]) -> None:
        self.tok = tok
        self.vs, self.ve = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.end = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.sink = self.encode(prompts.sink_text())
        self.tail = [self.ve] + self.encode("\n")

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def assemble(self, ex: Example, feats: list[torch.Tensor], keeps: list[torch.Tensor], grid_hw: tuple[int, int],
                 embed) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs_embeds (n, H), position_ids (3, n), labels (n,)) for one example; visual features keep their
        gradient. Positions advance exactly as memory.append places chunks (contiguous)."""
        gh, gw = grid_hw
        pieces: list[torch.Tensor] = []
        pos: list[torch.Tensor] = []
        offset = 0

        def text(ids: list[int]) -> None:
            nonlocal offset
            t = torch.tensor(ids)
            pieces.append(embed(t.to(feats[0].device)))
            pos.append(torch.arange(len(ids)).unsqueeze(0).expand(3, -1) + offset)
            offset += len(ids)

        text(self.sink)
        for t0, f, keep in zip(ex.times, feats, keeps, strict=True):
            head = self.encode(frame_marker(t0)) + [self.vs]
            k = len(head)
            start = offset
            text(head)
            idx = torch.nonzero(keep).squeeze(1)
            pieces.append(f[idx].to(pieces[0].dtype))
            pos.append(vision_positions(k, gh, gw)[:, idx.cpu()] + start)
            m = max(gh, gw)
            offset = start + k + m
            text(self.tail)
        text(self.encode(ex.turn))
        n_prompt = offset
        answer = self.encode(ex.answer) + [self.end]
        text(answer)
        embeds = torch.cat(pieces)
        positions = torch.cat(pos, dim=1)
        labels = torch.full((embeds.shape[0],), -100, dtype=torch.long)
        labels[-len(answer):] = torch.tensor(answer)
        assert positions[0, -1] == n_prompt + len(answer) - 1
        return embeds, positions, labels


def fixed_eval_set(n_per_kind: int, seed: int = 12345) -> list[Example]:
    """Held-out examples (words and scenes never trained on), the same every time."""
    rng = random.Random(seed)
    return [make_example(rng, "heldout", kind) for kind in KINDS for _ in range(n_per_kind)]


def as_numpy_seed(step: int, worker: int) -> int:
    return int(np.uint32(step * 7919 + worker * 104729 + 17))
