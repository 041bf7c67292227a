"""Does tiny-vl's vision tower carry what its language model fails to use? A linear probe on the merged visual
features of frame pairs: "a person is in view" (the person probe's question), fitted on training-split scenes
and scored on others. Prints the probe's accuracy beside the majority answer's.

    python -m train.probe_features [--weights model/data/tiny-vl.safetensors] [--scenes 300] [--fit 200]
"""

from __future__ import annotations

import argparse
import random
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from assistant.store import default_cache_dir
from model.causal_lm import lite_model_dir
from model.patches import IMAGE_MEAN, IMAGE_STD, patchify
from model.tiny_vl import MAX_PIXELS, TRAINED, build
from perception.synthetic import SignScene


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(TRAINED))
    p.add_argument("--scenes", type=int, default=300)
    p.add_argument("--fit", type=int, default=200, help="scenes the probe is fitted on; the rest score it")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    model, _ = build(lite_model_dir(default_cache_dir(), convert=False), load_file(args.weights))
    rng = random.Random(args.seed)
    feats, labels = [], []
    for _ in range(args.scenes):
        scene = SignScene.random(rng.randrange(1 << 30), 200, split="train")
        t = rng.uniform(0, 190)
        if scene.people and rng.random() < 0.5:
            a, b = rng.choice(scene.people)
            t = min(190.0, rng.uniform(a, max(a, b - 1)))
        patches, grid = patchify([scene.render(t), scene.render(t + 1)], 14, 2, 2, MAX_PIXELS, 56 * 56, IMAGE_MEAN,
                                 IMAGE_STD)
        with torch.no_grad():
            feats.append(model.model.visual(patches, grid_thw=grid[None]).pooler_output.flatten().numpy())
        labels.append(scene.person_at(t) and scene.person_at(t + 1))
    x, y = np.array(feats), np.array(labels)
    clf = LogisticRegression(max_iter=2000, C=0.1).fit(x[:args.fit], y[:args.fit])
    held = y[args.fit:]
    print(f"person in view: linear probe {clf.score(x[args.fit:], held):.2f}, majority answer "
          f"{max(np.mean(held), 1 - np.mean(held)):.2f} ({len(held)} scenes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
