"""Train the tiny LLaVA on shapes VQA (:mod:`evaluation.shapes`) on a CPU within a time budget.

    python scripts/train_tiny_shapes.py --out models/llava-tiny-shapes [--minutes 50] [--seed 0]

The model is the real LLaVA architecture at toy sizes (cost-model spec ``llava-tiny-shapes``:
96x96 images, 8-pixel patches, 12x12 = 144 visual tokens, a 3-layer CLIP ViT whose second-last
layer feeds the 2-layer MLP projector, a 4-layer LLaMA), saved with ``scripts/train_tiny.py``'s
``save`` (weights, word-level tokenizer, AutoProcessor files) and a ``training.json``.

One answer token per question is too little signal to teach a randomly initialised ViT to see
(it learns the answer prior and stops), so training adds dense supervision, as LLaVA's stage-1
caption pretraining does:

- a *describe* prompt (``what is in each cell?``) whose answer lists the 9 grid cells in raster
  order (``red circle , none , small blue cross , ...``), mixed with the six question kinds
  (``--describe`` of the batch at the start, falling linearly to a third of it);
- an auxiliary per-patch loss on the projector's output (a linear head that is not saved):
  each visual token predicts, for the grid cell its patch lies in, the colour and shape of the
  cell's object (or none), the object's size class and which cell it is.

Status (issue 15, not reached): a stage of 8 minutes training the vision tower and projector on
the per-patch targets alone, then 22 minutes of the whole model (``--vision-minutes 8 --minutes
22 --pool 16000``, seed 0, this 2-core CPU), gave 57.0% [52.6, 61.3] on 500 test questions with
all tokens (blank image: 32.6%, every kind at its majority rate); it reads ``smallest`` (100%),
``shape_at`` (59%) and ``colour_at`` (51%) off the image, while presence, count and relative
stay at chance, against the 85% target. Likely cause: the loss is averaged over tokens, so the
~26-token describe answers swamp the one-token answers; weight the loss per sample next. That
model is not shipped.

Only train-split samples are used (a fixed pool generated once, ``--pool``); the test
accuracy per kind is printed every ``--eval-every`` seconds on ``--eval-n`` test questions.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from train_tiny import build, save, write_training  # noqa: E402

KEY = "llava-tiny-shapes"
DESCRIBE = "what is in each cell?"
AUX = (17, 4, 9)  # classes of the auxiliary patch targets: object, size, cell
SMALL = 9  # reference-pixel diameter at or below which the describe answer says "small"


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "models" / KEY))
    ap.add_argument("--minutes", type=float, default=50.0, help="training time budget (evaluation is extra)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1.5e-3)
    ap.add_argument("--warmup", type=int, default=60, help="warmup steps")
    ap.add_argument("--pool", type=int, default=36000, help="train samples generated once")
    ap.add_argument("--vision-minutes", type=float, default=10.0,
                    help="stage 0: minutes of the vision tower alone on the auxiliary targets (before --minutes)")
    ap.add_argument("--describe", type=float, default=0.5, help="share of describe prompts at the start")
    ap.add_argument("--aux", type=float, default=1.0, help="weight of the per-patch auxiliary loss")
    ap.add_argument("--eval-every", type=float, default=240.0, help="seconds between test prints")
    ap.add_argument("--eval-n", type=int, default=300)
    ap.add_argument("--test-limit", type=int, default=1200, help="test questions in training.json")
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def describe(objects) -> str:
    """The describe answer: the 9 cells in raster order."""
    from evaluation import shapes

    at = {(o.row, o.col): o for o in objects}
    parts = []
    for rc in shapes.POSITIONS:
        o = at.get(rc)
        parts.append("none" if o is None else ("small " if o.size <= SMALL else "") + f"{o.colour} {o.shape}")
    return " , ".join(parts)


def vocabulary() -> list[str]:
    from evaluation import shapes

    words = list(shapes.ANSWERS) + list(shapes.COLOURS) + list(shapes.SHAPES) + list(shapes.PLURALS.values())
    words += "is there a how many are shapes what colour shape the in of left right above below center top " \
             "middle bottom smallest each cell none small ? ,".split()
    return words


def patch_labels(objects, grid: int = 12, image: int = 96) -> torch.Tensor:
    """Per patch (raster order), of the grid cell the patch lies in: the object's class (0 none,
    1 + 4 colour + shape), its size class (0 none, 1 small, 2 medium, 3 large) and the cell (0..8)."""
    from evaluation import shapes

    at = {(o.row, o.col): o for o in objects}
    out = torch.zeros(3, grid, grid, dtype=torch.long)
    per_cell = grid // shapes.GRID
    for (r, c), name in shapes.POSITIONS.items():
        o = at.get((r, c))
        cls = 0 if o is None else 1 + 4 * shapes.COLOURS.index(o.colour) + shapes.SHAPES.index(o.shape)
        size = 0 if o is None else (1 if o.size <= SMALL else (2 if o.size < 16 else 3))
        block = (slice(None), slice(r * per_cell, (r + 1) * per_cell), slice(c * per_cell, (c + 1) * per_cell))
        out[block] = torch.tensor([cls, size, r * shapes.GRID + c]).view(3, 1, 1)
    return out.flatten(1)


def make_pool(samples, pre, encode) -> dict:
    """Pixels (float16), the QA and describe encodings and the patch labels of train samples."""
    pix = torch.cat([pre([s.image for s in samples[i:i + 1000]]).half() for i in range(0, len(samples), 1000)])
    return {"pix": pix, "qa": [encode(s.question, s.answer) for s in samples],
            "desc": [encode(DESCRIBE, describe(s.objects)) for s in samples],
            "patch": torch.stack([patch_labels(s.objects) for s in samples])}


def batch_tensors(tok, seqs):
    """Right-padded (ids, labels, mask) for training."""
    length = max(len(e) for e, _ in seqs)
    ids = torch.full((len(seqs), length), tok.pad_token_id)
    lab = torch.full((len(seqs), length), -100)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for r, (e, l) in enumerate(seqs):
        ids[r, :len(e)], lab[r, :len(l)], mask[r, :len(e)] = torch.tensor(e), torch.tensor(l), 1
    return ids, lab, mask


class Trainer:
    """AdamW, linear warmup then a cosine over the time budget, LM loss + auxiliary patch loss."""

    def __init__(self, model, tok, pool, args):
        self.model, self.tok, self.pool, self.args = model, tok, pool, args
        hidden = model.config.text_config.hidden_size
        self.head = torch.nn.Linear(hidden, sum(AUX))
        self.feats = None
        model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: setattr(self, "feats", o))
        params = list(model.parameters()) + list(self.head.parameters())
        self.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
        self.params = params
        self.g = torch.Generator().manual_seed(args.seed)

    def lr_at(self, step: int, frac: float) -> float:
        warm = min(1.0, (step + 1) / self.args.warmup)
        return self.args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))

    def aux_loss(self, idx) -> torch.Tensor:
        parts = self.head(self.feats).split(AUX, dim=-1)  # (B, 144, n) each
        return sum(torch.nn.functional.cross_entropy(p.flatten(0, 1), self.pool["patch"][idx, j].flatten())
                   for j, p in enumerate(parts))

    def vision_step(self, step: int) -> float:
        """Stage 0: the vision tower and projector alone on the auxiliary patch targets (cheap steps)."""
        idx = torch.randint(len(self.pool["qa"]), (self.args.batch,), generator=self.g)
        self.model.model.get_image_features(pixel_values=self.pool["pix"][idx].float())
        loss = self.aux_loss(idx)
        for group in self.opt.param_groups:
            group["lr"] = self.args.lr * min(1.0, (step + 1) / self.args.warmup)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return loss.item()

    def step(self, step: int, frac: float) -> tuple[float, float]:
        a, pool = self.args, self.pool
        idx = torch.randint(len(pool["qa"]), (a.batch,), generator=self.g)
        p_desc = a.describe + (1 / 3 - a.describe) * min(frac, 1.0) if a.describe > 0 else 0.0
        use_desc = torch.rand(a.batch, generator=self.g) < p_desc
        seqs = [pool["desc"][i] if d else pool["qa"][i] for i, d in zip(idx.tolist(), use_desc.tolist())]
        ids, lab, mask = batch_tensors(self.tok, seqs)
        out = self.model(input_ids=ids, attention_mask=mask, pixel_values=pool["pix"][idx].float(), labels=lab)
        aux = self.aux_loss(idx)
        loss = out.loss + a.aux * aux
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step, frac)
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        return out.loss.item(), aux.item()


def per_kind_accuracy(model, tok, encode, pre, samples, blank: bool = False) -> dict[str, float]:
    """Greedy first answer token with all visual tokens, per kind (and 'all')."""
    from evaluation import shapes

    hits: dict[str, list[int]] = {}
    model.eval()
    with torch.no_grad():
        for s in range(0, len(samples), 128):
            chunk = samples[s:s + 128]
            enc = [encode(x.question, None)[0] for x in chunk]
            length = max(map(len, enc))
            ids = torch.full((len(enc), length), tok.pad_token_id)
            mask = torch.zeros_like(ids)
            for r, e in enumerate(enc):  # left padding for generation
                ids[r, length - len(e):], mask[r, length - len(e):] = torch.tensor(e), 1
            images = [shapes.blank() if blank else x.image for x in chunk]
            logits = model(input_ids=ids, attention_mask=mask, pixel_values=pre(images), logits_to_keep=1).logits
            pred = tok.convert_ids_to_tokens(logits[:, -1].argmax(-1).tolist())
            for x, p in zip(chunk, pred):
                hits.setdefault(x.kind, []).append(int(p == x.answer))
    model.train()
    acc = {k: sum(v) / len(v) for k, v in hits.items()}
    acc["all"] = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return acc


def fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.2f}" for k, v in acc.items())


def train(trainer: Trainer, encode, pre, test, args) -> tuple[int, float]:
    """Steps until the budget is spent, with test prints; (steps, seconds)."""
    trainer.model.train()
    t0, v_step, v_sum = time.time(), 0, 0.0
    while time.time() - t0 < args.vision_minutes * 60:
        v_sum, v_step = v_sum + trainer.vision_step(v_step), v_step + 1
        if v_step % 100 == 0:
            print(f"vision step {v_step} aux {v_sum / 100:.4f} {time.time() - t0:.0f}s", flush=True)
            v_sum = 0.0
    budget, t0, last_eval, step = args.minutes * 60, time.time(), time.time(), 0
    lm_sum = aux_sum = 0.0
    while (elapsed := time.time() - t0) < budget:
        lm, aux = trainer.step(step, elapsed / budget)
        lm_sum, aux_sum, step = lm_sum + lm, aux_sum + aux, step + 1
        if step % 25 == 0:
            print(f"step {step} lm {lm_sum / 25:.4f} aux {aux_sum / 25:.4f} lr {trainer.lr_at(step, elapsed / budget):.5f} "
                  f"{time.time() - t0:.0f}s", flush=True)
            lm_sum = aux_sum = 0.0
        if time.time() - last_eval > args.eval_every:
            print(f"  test@{step}: {fmt(per_kind_accuracy(trainer.model, trainer.tok, encode, pre, test))}", flush=True)
            last_eval = time.time()
    trainer.model.eval()
    return step, time.time() - t0


def main() -> int:
    args = parse_args()
    from evaluation import shapes

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    tok, model, pre, encode = build(vocabulary(), KEY, drop_spaces=True)
    print(f"vocab {len(tok)}, parameters {sum(p.numel() for p in model.parameters())}", flush=True)
    pool = make_pool(shapes.generate("train", args.pool, seed=args.seed), pre, encode)
    test = shapes.generate("test", max(args.eval_n, args.test_limit), seed=0)
    print(f"pool of {args.pool} ready in {time.time() - t_start:.0f}s", flush=True)
    trainer = Trainer(model, tok, pool, args)
    steps, train_s = train(trainer, encode, pre, test[:args.eval_n], args)
    final = per_kind_accuracy(model, tok, encode, pre, test[:args.test_limit])
    blank = per_kind_accuracy(model, tok, encode, pre, test[:args.test_limit], blank=True)
    out_dir = save(Path(args.out), model, tok, pre)
    info = {"command": "python scripts/train_tiny_shapes.py " + " ".join(sys.argv[1:]), "seed": args.seed,
            "steps": steps, "batch": args.batch, "examples_seen": steps * args.batch, "train_pool": args.pool,
            "lr": args.lr, "describe_share_start": args.describe, "aux_weight": args.aux,
            "train_time_s": train_s, "total_time_s": time.time() - t_start, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "test_questions": args.test_limit,
            "test_accuracy_all_tokens": final, "test_accuracy_blank_image": blank,
            "majority_rate": shapes.majority_rate(test[:args.test_limit]),
            "parameters": sum(p.numel() for p in model.parameters())}
    return write_training(out_dir, info)


if __name__ == "__main__":
    sys.exit(main())
