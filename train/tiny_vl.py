"""Train tiny-vl on the GPU: the vision tower and merger from scratch, LoRA on SmolLM2's attention, the rest
frozen. Resumable: every run continues from --ckpt (parameters fp16, Adam moments bf16, step, data seed),
stops after --minutes, and writes the checkpoint back; --export writes model/data/tiny-vl.safetensors.

    python -m train.tiny_vl --lite-dir DIR --ckpt CKPT --minutes 8 --export model/data/tiny-vl.safetensors
    python -m train.tiny_vl --lite-dir DIR --ckpt EMPTY --init model/data/tiny-vl.safetensors --lora-mlp 8 \
        --eval-only --eval-per-kind 16 --device cpu          # score the committed weights

Logs one JSON line per eval to --log: step, loss, held-out exact match per question kind (teacher-forced
argmax at every answer token, which is what greedy decoding produces).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import cv2
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model.tiny_vl import LORA_MLP_TARGETS, LORA_TARGETS, VISION_TOKENS, build, lora_parent, save_trained
from perception.token_drop import drop_against
from train.tiny_vl_data import KINDS, Layout, collate, fixed_eval_set, make_example

LORA_RANK, LORA_SCALE = 16, 2.0


class LoRA(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base, self.scale = base, scale
        self.A = nn.Parameter(torch.randn(rank, base.in_features) / math.sqrt(base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t().to(x.dtype) @ self.B.t().to(x.dtype)) * self.scale


class LetterReader(nn.Module):
    """A training aid, not exported: reads the sign's letters off the tower's patch features (before the merger)
    with CTC over the 16 patch columns. The answer loss reaches the tower only through the frozen LM; this
    dense signal teaches it letters directly. The sign fills patch rows 0-5 of a 224x224 frame (SignScene's
    board spans y 5%-36%); the head sees those rows of each column side by side."""

    ROWS = 6

    def __init__(self, hidden: int, grid: int = 16, merge: int = 2) -> None:
        super().__init__()
        self.hidden, self.grid, self.merge = hidden, grid, merge
        self.norm = nn.LayerNorm(self.ROWS * hidden)
        self.head = nn.Linear(self.ROWS * hidden, 27)                        # blank + A-Z

    def forward(self, patch_states: torch.Tensor, words: list[str]) -> tuple[torch.Tensor, list[bool]]:
        """CTC loss over the pairs whose sign did not change within the pair, and greedy-decode exactness."""
        g, m, h = self.grid, self.merge, self.hidden
        x = patch_states.reshape(-1, g // m, g // m, m, m, h).permute(0, 1, 3, 2, 4, 5).reshape(-1, g, g, h)
        cols = x[:, :self.ROWS].permute(0, 2, 1, 3).reshape(x.shape[0], g, self.ROWS * h)   # (pairs, 16, 6h)
        keep = [i for i, w in enumerate(words) if w]
        if not keep:
            return patch_states.sum() * 0.0, []
        logp = self.head(self.norm(cols[keep].float())).log_softmax(-1)                  # (pairs, 16, 27)
        targets = torch.tensor([ord(c) - 64 for i in keep for c in words[i]], device=logp.device)
        loss = nn.functional.ctc_loss(logp.transpose(0, 1), targets, [g] * len(keep), [len(words[i]) for i in keep],
                                      blank=0, zero_infinity=True)
        read = []
        for row in logp.argmax(-1).tolist():
            letters = [c for j, c in enumerate(row) if c and (j == 0 or c != row[j - 1])]
            read.append("".join(chr(64 + c) for c in letters))
        return loss, [r == words[i] for r, i in zip(read, keep, strict=True)]


def add_lora(model, mlp_rank: int = 0) -> dict[str, nn.Parameter]:
    """LoRA on every attention projection (rank LORA_RANK) and, with `mlp_rank`, on the MLP's too."""
    out = {}
    for i, layer in enumerate(model.model.language_model.layers):
        for name in LORA_TARGETS + (LORA_MLP_TARGETS if mlp_rank else ()):
            parent = lora_parent(layer, name)
            lora = LoRA(getattr(parent, name), mlp_rank if name in LORA_MLP_TARGETS else LORA_RANK, LORA_SCALE)
            setattr(parent, name, lora)
            out[f"lora.{i}.{name}.A"], out[f"lora.{i}.{name}.B"] = lora.A, lora.B
    return out


class Data(torch.utils.data.IterableDataset):
    def __init__(self, seed: int, batch: int, layout: Layout) -> None:
        self.seed, self.batch, self.layout = seed, batch, layout

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)                  # one process per core: no oversubscription
        cv2.setNumThreads(1)
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            yield collate(self.layout, [make_example(rng, "train") for _ in range(self.batch)])


@torch.no_grad()
def drop_keep(feats: torch.Tensor, keys: list[bool], threshold: float) -> torch.Tensor:
    """Which visual tokens the runtime's differential token drop keeps (perception.token_drop.drop_against, applied
    as VisualStream applies it): a key pair (`keys`, one per pair in batch order: a keyframe or an example's
    first pair) keeps all and becomes the reference; a later pair's token is dropped when its cosine similarity
    to the last kept token of that patch is >= `threshold`. Keep mask (tokens,), in the order of `feats`."""
    per = feats.shape[0] // len(keys)
    keep = torch.ones(feats.shape[0], dtype=torch.bool, device=feats.device)
    if threshold >= 1.0:
        return keep
    x = feats.float().view(len(keys), per, -1)
    ref = x[0].clone()
    for j, key in enumerate(keys):
        if key:
            ref = x[j].clone()
            continue
        row = keep[j * per:(j + 1) * per]
        row[:] = False
        row[drop_against(x[j], ref, threshold)] = True
    return keep


def forward(model, batch: dict, device: str, reader: LetterReader | None = None,
            reader_weight: float = 1.0, drop: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor], list[bool]]:
    """Loss over the answer tokens (plus the letter reader's, weighted), each example's per-token argmax hits
    (teacher-forced), and the reader's exact reads. With `drop` < 1 the visual tokens the runtime's token drop
    would leave out are masked from attention (their positions stay, as at runtime)."""
    ids, labels = batch["ids"].to(device, non_blocking=True), batch["labels"].to(device, non_blocking=True)
    with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                        enabled=device.startswith("cuda")):
        feats = model.model.visual(batch["patches"].to(device, torch.float32), grid_thw=batch["grids"].to(device))
        lm = model.model.language_model
        embeds = lm.embed_tokens(ids)
        image = (ids == model.config.image_token_id).unsqueeze(-1)
        embeds = embeds.masked_scatter(image, feats.pooler_output.to(embeds.dtype))
        mask = batch["mask"].to(device)
        if drop < 1.0:
            mask = mask.masked_scatter(image.squeeze(-1), drop_keep(feats.pooler_output, batch["keys"], drop).long())
        hidden = lm(inputs_embeds=embeds, position_ids=batch["pos"].to(device), attention_mask=mask).last_hidden_state
        target = labels[:, 1:]
        sel = target != -100
        logits = model.lm_head(hidden[:, :-1][sel]).float()                        # (answer tokens, vocab)
        loss = nn.functional.cross_entropy(logits, target[sel])
        read: list[bool] = []
        if reader is not None:
            aux, read = reader(feats.last_hidden_state, batch["words"])
            loss = loss + reader_weight * aux
    hits = logits.argmax(-1) == target[sel]
    return loss, list(torch.split(hits, sel.sum(1).tolist())), read


def evaluate(model, layout: Layout, examples, device: str, batch: int = 32,
             reader: LetterReader | None = None, drop: float = 1.0) -> dict[str, float]:
    """Exact match per kind; examples laid out as the runtime samples count under "kind+"."""
    model.eval()
    right: dict[str, list[bool]] = {k: [] for k in KINDS} | {f"{k}+": [] for k in KINDS} | {"letters": []}
    with torch.no_grad():
        for s in range(0, len(examples), batch):
            chunk = examples[s:s + batch]
            _, per, read = forward(model, collate(layout, chunk), device, reader, drop=drop)
            for ex, h in zip(chunk, per, strict=True):
                right[ex.kind + "+" * ex.stream].append(bool(h.all()))
            right["letters"] += read
    model.train()
    return {k: round(sum(v) / len(v), 3) for k, v in right.items() if v}


def save_ckpt(ckpt: Path, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer, step: int) -> None:
    ckpt.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().to("cpu", torch.float16).contiguous() for k, v in params.items()},
              str(ckpt / "params.safetensors"))
    for moment in ("exp_avg", "exp_avg_sq"):
        save_file({k: opt.state[v][moment].to("cpu", torch.bfloat16).contiguous() for k, v in params.items()
                   if v in opt.state}, str(ckpt / f"{moment}.safetensors"))
    (ckpt / "meta.json").write_text(json.dumps({"step": step}))


def load_ckpt(ckpt: Path, params: dict[str, nn.Parameter], opt: torch.optim.Optimizer) -> int:
    if not (ckpt / "meta.json").exists():
        return 0
    saved = load_file(str(ckpt / "params.safetensors"))
    with torch.no_grad():
        for k, v in params.items():
            if k in saved:                            # a checkpoint from before the reader lacks its head
                v.copy_(saved[k].float())
    step = json.loads((ckpt / "meta.json").read_text())["step"]
    if not all((ckpt / f"{m}.safetensors").exists() for m in ("exp_avg", "exp_avg_sq")):
        return step                                   # parameters only: Adam starts its moments afresh
    moments = {m: load_file(str(ckpt / f"{m}.safetensors")) for m in ("exp_avg", "exp_avg_sq")}
    for k, v in params.items():
        if k in moments["exp_avg"]:
            opt.state[v] = {"step": torch.tensor(float(step)), "exp_avg": moments["exp_avg"][k].float().to(v.device),
                            "exp_avg_sq": moments["exp_avg_sq"][k].float().to(v.device)}
    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lite-dir", required=True, help="SmolLM2-135M-Instruct as safetensors (the lite model dir)")
    p.add_argument("--ckpt", required=True, help="checkpoint directory (resumed from when it exists)")
    p.add_argument("--minutes", type=float, default=8.0, help="stop after this much training time")
    p.add_argument("--total-steps", type=int, default=8000, help="length of the learning-rate schedule")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-lr-ratio", type=float, default=0.2, help="LoRA's learning rate as a share of --lr")
    p.add_argument("--reader-weight", type=float, default=1.0,
                   help="weight of the letter reader's CTC loss on the tower's features (0: no reader)")
    p.add_argument("--lora-mlp", type=int, default=0, metavar="RANK", help="LoRA on the MLPs too, of this rank")
    p.add_argument("--drop", type=float, default=0.95, help="train and score with the runtime's token drop at this "
                   "threshold (perception.visual's default; 1: keep every token)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--eval-per-kind", type=int, default=48)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--log", help="JSON lines of loss and held-out accuracy")
    p.add_argument("--init", help="start from these trained weights when --ckpt is empty (model/data/tiny-vl."
                   "safetensors; its .json beside it gives the step)")
    p.add_argument("--eval-only", action="store_true", help="print the held-out exact match of --ckpt or --init "
                   "and stop (on the CPU: scores what the product's OpenCV draws)")
    p.add_argument("--export", help="write the trained parts here (model/data/tiny-vl.safetensors); with --eval-only "
                   "after scoring, without a step")
    args = p.parse_args(argv)
    if not cv2.__version__.startswith("4."):
        # OpenCV 5 draws FONT_HERSHEY_* text in another typeface: a model trained on it cannot read the signs
        # the product (opencv-python-headless<5) renders. Measured: held-out words 0.56 -> 0.00.
        print(f"tiny-vl: train with OpenCV 4 (the product's pin), not {cv2.__version__}: the signs' font differs",
              file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    model, tok = build(Path(args.lite_dir))
    ids = {t: int(tok.convert_tokens_to_ids(t)) for t in VISION_TOKENS}
    layout = Layout(tok, ids)
    for prm in model.parameters():
        prm.requires_grad_(False)
    lora = add_lora(model, args.lora_mlp)
    for prm in model.model.visual.parameters():
        prm.requires_grad_(True)
    model.model.language_model.to(torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    model.lm_head.to(model.model.language_model.embed_tokens.weight.dtype)
    model.to(args.device).train()
    reader = LetterReader(model.config.vision_config.hidden_size).to(args.device) if args.reader_weight else None
    assert model.config.vision_config.window_size >= 224, "the reader assumes one window per frame (no reordering)"
    params = {f"visual.{k}": v for k, v in model.model.visual.named_parameters()} | dict(lora.items())
    if reader is not None:
        params |= {f"reader.{k}": v for k, v in reader.named_parameters()}
    for v in lora.values():
        v.data = v.data.float()
    tower = list(model.model.visual.parameters()) + (list(reader.parameters()) if reader is not None else [])
    opt = torch.optim.AdamW([{"params": tower, "lr": args.lr},
                             {"params": list(lora.values()), "lr": args.lr * args.lora_lr_ratio}], weight_decay=0.01)
    step = load_ckpt(Path(args.ckpt), params, opt)
    if step == 0 and args.init:                       # continue from the weights in the repository
        saved = load_file(args.init)
        with torch.no_grad():
            for k, v in params.items():
                if k in saved:                        # the exported weights hold the tower and LoRA only
                    v.copy_(saved[k].float())
        step = json.loads(Path(args.init).with_suffix(".json").read_text())["step"]
    base_lrs = [g["lr"] for g in opt.param_groups]
    evalset = fixed_eval_set(args.eval_per_kind)
    if args.eval_only:                                # score the loaded weights on the held-out set, no step
        print(json.dumps({"step": step, "opencv": cv2.__version__, "device": args.device,
                          "heldout_exact": evaluate(model, layout, evalset, args.device, drop=args.drop)}))
        # (no letter reader here: it is not exported)
        if args.export:
            save_trained(Path(args.export), model, dict(lora.items()))
        return 0
    loader = torch.utils.data.DataLoader(Data(args.seed + step, args.batch, layout), batch_size=None,
                                         num_workers=args.workers, prefetch_factor=4 if args.workers else None,
                                         pin_memory=args.device.startswith("cuda"))
    log = open(args.log, "a") if args.log else None
    start, losses = time.monotonic(), []
    waited, t_fetch = 0.0, time.monotonic()
    print(f"tiny-vl: step {step}, {sum(v.numel() for v in params.values()) / 1e6:.2f}M trained parameters",
          file=sys.stderr)
    for batch in loader:
        waited += time.monotonic() - t_fetch
        warm = min(1.0, (step + 1) / 200)
        decay = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.total_steps)))
        for g, lr in zip(opt.param_groups, base_lrs, strict=True):
            g["lr"] = lr * warm * decay
        loss, _, _ = forward(model, batch, args.device, reader, args.reader_weight, args.drop)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        opt.step()
        step += 1
        losses.append(float(loss.detach()))
        done = time.monotonic() - start > args.minutes * 60
        if step % args.eval_every == 0 or done:
            acc = evaluate(model, layout, evalset, args.device, reader=reader, drop=args.drop)
            row = {"step": step, "loss": round(sum(losses) / len(losses), 4), "heldout_exact": acc,
                   "minutes": round((time.monotonic() - start) / 60, 2), "data_wait_s": round(waited, 1)}
            losses = []
            print(json.dumps(row), file=sys.stderr)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
            save_ckpt(Path(args.ckpt), params, opt, step)
        if done:
            break
        t_fetch = time.monotonic()
    if args.export:
        size = save_trained(Path(args.export), model, {k: v for k, v in lora.items()})
        print(f"tiny-vl: exported {size / 1e6:.1f} MB to {args.export}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
