"""Examples for tiny-vl, laid out exactly as the runtime lays out a stream (the same sink text, frame markers,
M-RoPE positions, question and probe turns from reasoning.prompts), so what it learns is what the VLM path asks.

    sink | [m:ss] <vs> 64 visual tokens <ve> \\n | ... more frame pairs ... | question turn | answer <|im_end|>

Kinds: the word on the sign now; the word at a given past time (several pairs in context); the board colour;
how many shapes; yes/no probes on a word and on a person being in view (the watcher's probe text). Training
draws scenes and words from the "train" split only (a share of them random letter strings of that split);
evaluation from "heldout" (perception.synthetic). A sign's word is answered one letter per token
(`Layout.answer_ids`).

Layouts: pairs spread out over the scene; or laid out as the runtime samples (consecutive 1 fps pairs 2 s apart,
the recent window), half of those after one or two earlier runs of pairs that start at a keyframe, as memory
places retrieved segments (a past question then mostly asks about a moment in them). Each pair says whether the
runtime's token drop keeps all of it (`key_pairs`: a keyframe, or the first pair after a gap).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from model.chunk import format_time
from model.patches import IMAGE_MEAN, IMAGE_STD, patchify
from model.qwen_vl import frame_marker, vision_positions
from model.tiny_vl import MAX_PIXELS
from perception.synthetic import SignScene, words
from perception.token_drop import keyframe_bucket
from perception.visual import VisualConfig
from reasoning import prompts

NOW_Q = ["What word is on the sign?", "What word is written on the sign right now?", "What does the sign say?"]
PAST_Q = ["What did the sign say at {t}?", "What word was on the sign at {t}?"]
COLOUR_Q = ["What colour is the sign?", "What color is the board?"]
COUNT_Q = ["How many shapes are moving?", "How many shapes do you see?"]
PERSON_C = ["a person is in view", "someone is visible"]
WORD_C = ['the sign says "{w}"', "the sign shows {w}"]
KINDS = {"now": 0.3, "past": 0.2, "colour": 0.1, "count": 0.1, "word_probe": 0.15, "person_probe": 0.15}
STREAM_SHARE = 0.5              # examples laid out as the runtime samples: consecutive pairs 2 s apart
STREAM_PAIRS = (3, 14)          # how many such pairs (the runtime's window holds more; retrieval brings back a few)
RETRIEVED_SHARE = 0.5           # of those, the share with earlier runs of pairs before them (retrieved segments)
KEYFRAME_S = VisualConfig().keyframe_seconds
STRING_SHARE = 0.3              # training scenes whose signs show random letter strings instead of train words


@dataclass
class Example:
    kind: str
    patches: list[torch.Tensor]        # one (256, 1176) per frame pair, stream order
    grids: list[torch.Tensor]          # (3,) each
    times: list[float]                 # each pair's first frame time
    turn: str                          # the question or probe turn text
    answer: str
    words: list[str]                   # the sign's word in each pair ("" where it changes within the pair)
    stream: bool = False               # consecutive pairs 2 s apart (the runtime's 1 fps pairs) or spread out


def key_pairs(times: list[float]) -> list[bool]:
    """Which pairs the runtime's token drop keeps whole: the first of each keyframe span, and (in training,
    where the pair before it is not in the example) the first pair after a gap."""
    return [i == 0 or b - a > 2.0 or keyframe_bucket(b, KEYFRAME_S) != keyframe_bucket(a, KEYFRAME_S)
            for i, (a, b) in enumerate(zip([0.0, *times], times))]


def retrieved_runs(rng: random.Random, before: float) -> list[float]:
    """Times of one or two runs of pairs that start at a keyframe and end at a segment boundary (2 or 4 pairs),
    all before `before`: what memory places for a question about a moment in them."""
    spans = [b for b in range(int(before // KEYFRAME_S)) if b * KEYFRAME_S + 8.0 <= before]
    out: list[float] = []
    for b in sorted(rng.sample(spans, min(len(spans), rng.randint(1, 2)))):
        out += [b * KEYFRAME_S + 2.0 * j for j in range(rng.choice((2, 4)))]
    return out


def pair(scene: SignScene, t0: float) -> tuple[torch.Tensor, torch.Tensor]:
    frames = [scene.render(t0), scene.render(t0 + 1.0)]             # two frames 1 s apart (1 fps sampling)
    return patchify(frames, 14, 2, 2, MAX_PIXELS, 56 * 56, IMAGE_MEAN, IMAGE_STD)


def make_example(rng: random.Random, split: str, kind: str | None = None, stream: bool | None = None) -> Example:
    """One example; `stream` (drawn with STREAM_SHARE when None) lays its pairs out as the runtime samples."""
    kind = kind or rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    if stream is None:
        stream = rng.random() < STREAM_SHARE
    if split == "train" and rng.random() < STRING_SHARE:
        split = "strings"                           # random letter strings: reading, not recalling a word
    scene = SignScene.random(rng.randrange(1 << 30), duration_s=rng.uniform(40, 400), split=split)
    k = rng.randint(*STREAM_PAIRS) if stream else rng.randint(3, 5) if kind == "past" else rng.randint(1, 2)
    span = scene.duration_s - 2.0
    if kind == "person_probe" and scene.people and rng.random() < 0.5:   # half the probes inside an interval
        a, b = rng.choice(scene.people)
        last = min(span, rng.uniform(a, max(a, b - 1.0)))
    else:
        last = rng.uniform(2.0 * k if stream else 0.0, max(span, 2.0 * k))
    early: list[float] = []
    if stream:
        last = 2.0 * round(last / 2.0)                          # the runtime's pairs start on even seconds
        times = sorted({max(0.0, last - 2.0 * j) for j in range(k)})
        if KEYFRAME_S > 0 and times[0] >= 16.0 and rng.random() < RETRIEVED_SHARE:
            early = retrieved_runs(rng, times[0] - 4.0)
            times = sorted(set(early) | set(times))
    else:
        gaps = sorted(rng.uniform(2.0, 40.0) for _ in range(k - 1))
        times = [max(0.0, last - g) for g in reversed(gaps)] + [last]
        times = sorted({round(t) * 1.0 for t in times})
    now = times[-1] + 1.0
    sign = scene.sign_at(now)
    if kind == "now":
        turn, answer = prompts.question_text(now, rng.choice(NOW_Q)), sign.word
    elif kind == "past":
        target = rng.choice(times[:-1] or times)
        if stream:                                  # ask of a moment when another word showed, where there is one
            pool = [t + d for t in (early if early and rng.random() < 0.8 else times) for d in (0.0, 1.0)]
            target = rng.choice([t for t in pool if scene.sign_at(t).word != sign.word] or [target])
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
    seen = [scene.sign_at(t).word if scene.sign_at(t) == scene.sign_at(t + 1.0) else "" for t in times]
    return Example(kind, [p for p, _ in made], [g for _, g in made], times, turn, answer, seen, stream)


class Layout:
    """Token ids and positions of one example, with `image_id` where its visual tokens go (built in the data
    workers; the training step puts the vision tower's output there)."""

    def __init__(self, tok, ids: dict[str, int]) -> None:
        self.tok = tok
        self.vs, self.ve = ids["<|vision_start|>"], ids["<|vision_end|>"]
        self.end = int(tok.convert_tokens_to_ids("<|im_end|>"))
        self.sink = self.encode(prompts.sink_text())
        self.tail = [self.ve] + self.encode("\n")
        self.image_id = ids["<|image_pad|>"]

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def answer_ids(self, answer: str) -> list[int]:
        """A sign's word is answered one letter per token ("ZEBRA" as Z E B R A, not the tokenizer's ZE B RA):
        the decoded text is the same word, and copying letters read off the frame generalises to unseen words
        where composing the tokenizer's pieces did not (held-out words stayed near 0.54 over 6,000 steps while
        a linear reader of the tower's features read 0.96 of them). Other answers keep their usual tokens."""
        if answer.isascii() and answer.isalpha() and answer.isupper():
            return [int(self.tok.convert_tokens_to_ids(c)) for c in answer]
        return self.encode(answer)

    def build(self, ex: Example, grid_hw: tuple[int, int] = (8, 8)) -> tuple[torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
        """(input_ids (n,), position_ids (3, n), labels (n,)). Every visual token is kept (token drop is
        training-free and measured at inference). Positions advance exactly as memory.append places chunks."""
        gh, gw = grid_hw
        ids: list[int] = []
        pos: list[torch.Tensor] = []
        offset = 0

        def text(piece: list[int]) -> None:
            nonlocal offset
            ids.extend(piece)
            pos.append(torch.arange(len(piece)).unsqueeze(0).expand(3, -1) + offset)
            offset += len(piece)

        text(self.sink)
        for t0 in ex.times:
            head = self.encode(frame_marker(t0)) + [self.vs]
            start = offset
            text(head)
            ids.extend([self.image_id] * (gh * gw))
            pos.append(vision_positions(len(head), gh, gw) + start)
            offset = start + len(head) + max(gh, gw)
            text(self.tail)
        text(self.encode(ex.turn))
        answer = self.answer_ids(ex.answer) + [self.end]
        text(answer)
        labels = torch.full((len(ids),), -100, dtype=torch.long)
        labels[-len(answer):] = torch.tensor(answer)
        return torch.tensor(ids), torch.cat(pos, dim=1), labels


def collate(layout: Layout, batch: list[Example]) -> dict:
    """Padded tensors for one batch (right padding), patches in fp16 to halve the hand-over."""
    built = [layout.build(ex) for ex in batch]
    n = max(i.shape[0] for i, _, _ in built)
    b = len(built)
    ids = torch.zeros(b, n, dtype=torch.long)
    pos = torch.zeros(3, b, n, dtype=torch.long)
    labels = torch.full((b, n), -100, dtype=torch.long)
    mask = torch.zeros(b, n, dtype=torch.long)
    for j, (i, p, lab) in enumerate(built):
        ids[j, :len(i)], pos[:, j, :len(i)], labels[j, :len(i)], mask[j, :len(i)] = i, p, lab, 1
    return {"ids": ids, "pos": pos, "labels": labels, "mask": mask,
            "patches": torch.cat([p for ex in batch for p in ex.patches]).half(),
            "grids": torch.stack([g for ex in batch for g in ex.grids]), "kinds": [ex.kind for ex in batch],
            "keys": [k for ex in batch for k in key_pairs(ex.times)],
            "words": [w for ex in batch for w in ex.words]}


def fixed_eval_set(n_per_kind: int, seed: int = 12345, stream: bool = True) -> list[Example]:
    """Held-out examples (words and scenes never trained on), the same every time: the spread-out layout (the
    set of earlier logs) and, with `stream`, as many laid out as the runtime samples."""
    rng = random.Random(seed)
    out = [make_example(rng, "heldout", kind, stream=False) for kind in KINDS for _ in range(n_per_kind)]
    if stream:
        rng = random.Random(seed + 1)
        out += [make_example(rng, "heldout", kind, stream=True) for kind in KINDS for _ in range(n_per_kind)]
    return out
