"""Train the tiny LLaVA on easy-vqa, on a CPU, within a time budget; save it with save_pretrained.

    python scripts/train_tiny.py --out models/llava-tiny-easyvqa [--minutes 13] [--seed 0]
    python scripts/train_tiny.py --out DIR --processor-files-only   # add AutoProcessor's files to DIR

The model is the real LLaVA architecture (CLIP ViT with a CLS token, 2-layer MLP projector,
LLaMA with grouped-query attention) at toy sizes: 64x64 images in an 8x8 grid of visual
tokens. The tokenizer is word-level over easy-vqa's vocabulary, saved as a standard
``tokenizer.json``. Loss on the answer token and </s> only, LLaVA-1.5 conversation template.
The script writes ``training.json`` beside the weights: command, seed, steps, time, and the
test accuracy with all visual tokens against the majority answer's, and the files transformers'
``AutoProcessor`` reads (``vlm.processor``: the image processor matching ``vlm.Preprocess``,
``patch_size``, ``vision_feature_select_strategy``, the chat template).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
TEMPLATE_WORDS = ["USER", ":", "ASSISTANT", "\n"]


def build_tokenizer(words: list[str], drop_spaces: bool = False):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + TEMPLATE_WORDS + sorted(set(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # words, punctuation and newlines are tokens
    words_re = pre_tokenizers.Split(Regex(r"\n|[A-Za-z]+|[^\sA-Za-z]"), behavior="isolated")
    # Split alone keeps each space as a piece (an <unk> token): the shipped easy-vqa model was
    # trained that way and keeps it (its retraining reproduces it); drop_spaces removes them
    tok.pre_tokenizer = pre_tokenizers.Sequence([words_re, pre_tokenizers.Split(Regex(r" +"), behavior="removed")]) \
        if drop_spaces else words_re
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=["<image>"])
    from tokenizers.processors import TemplateProcessing
    fast._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return fast


def save(out_dir: Path, model, tok, pre) -> Path:
    """The weights, the tokenizer and the files transformers' AutoProcessor reads."""
    from vlm.processor import write_processor_files

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    # keys and class name that transformers 4.x reads too (5.x names the class TokenizersBackend)
    tc = out_dir / "tokenizer_config.json"
    tcfg = json.loads(tc.read_text())
    tcfg.pop("extra_special_tokens", None)
    tcfg.update(tokenizer_class="PreTrainedTokenizerFast", additional_special_tokens=["<image>"])
    tc.write_text(json.dumps(tcfg, indent=2) + "\n")
    write_processor_files(out_dir, mean=pre.mean, std=pre.std)  # AutoProcessor.from_pretrained(out_dir) works
    return out_dir


def write_training(out_dir: Path, info: dict) -> int:
    """``training.json`` beside the weights (how they were made), also printed; the exit status."""
    (out_dir / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2))
    return 0


def write_processor_files_only(folder: str) -> int:
    """AutoProcessor's files into an existing model folder (models saved before they were written)."""
    from vlm.processor import write_processor_files

    for path in write_processor_files(folder):
        print(f"wrote {path}")
    return 0


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "models" / "llava-tiny-easyvqa"))
    ap.add_argument("--minutes", type=float, default=13.0, help="training time budget (evaluation is extra)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--step-time", type=float, default=0.8, help="expected seconds per step on this CPU (sets the LR schedule length)")
    ap.add_argument("--processor-files-only", action="store_true",
                    help="only write AutoProcessor's files into the existing model folder --out")
    return ap.parse_args()


def build(words: list[str], key: str = "llava-tiny-easyvqa", drop_spaces: bool = False):
    """(tokenizer, model, preprocessing, encode) for a cost-model spec's geometry (``key``)."""
    from transformers import LlavaForConditionalGeneration

    import costmodel
    from vlm.images import Preprocess
    from vlm.loading import hf_config

    tok = build_tokenizer(words, drop_spaces)
    spec = costmodel.load_model(key)
    if spec.llm.vocab_size < len(tok):
        raise SystemExit(f"vocab {len(tok)} > spec vocab {spec.llm.vocab_size}")
    config = hf_config(spec)
    config.image_token_id = tok.convert_tokens_to_ids("<image>")
    config.text_config.pad_token_id = tok.pad_token_id
    config.text_config.bos_token_id, config.text_config.eos_token_id = tok.bos_token_id, tok.eos_token_id
    model = LlavaForConditionalGeneration(config)
    n_vis = spec.visual_tokens

    def encode(question: str, answer: str | None):
        before = tok("USER: ")["input_ids"]
        after = tok("\n" + question + " ASSISTANT:", add_special_tokens=False)["input_ids"]
        ids = before + [config.image_token_id] * n_vis + after
        labels = [-100] * len(ids)
        if answer is not None:
            ans = tok(answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids, labels = ids + ans, labels + ans
        return ids, labels

    return tok, model, Preprocess(size=spec.vision.image_size), encode


def train(model, tok, encoded, train_pix, i_train, args) -> tuple[int, int, float]:
    """AdamW with a one-cycle schedule over the time budget; (steps, examples seen, seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60
    total_steps_guess = int(budget / args.step_time)  # the schedule anneals over the budget
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(total_steps_guess, 100),
                                                pct_start=0.05, anneal_strategy="cos")
    model.train()
    step, t0, seen = 0, time.time(), 0
    while time.time() - t0 < budget and step < total_steps_guess:
        order = torch.randperm(len(encoded), generator=g)
        for s in range(0, len(order) - args.batch + 1, args.batch):
            idx = order[s:s + args.batch].tolist()
            length = max(len(encoded[i][0]) for i in idx)
            ids = torch.full((len(idx), length), tok.pad_token_id)
            lab = torch.full((len(idx), length), -100)
            mask = torch.zeros((len(idx), length), dtype=torch.long)
            for r, i in enumerate(idx):  # right padding for training
                e, l = encoded[i]
                ids[r, :len(e)], lab[r, :len(l)], mask[r, :len(e)] = torch.tensor(e), torch.tensor(l), 1
            pv = torch.stack([train_pix[i_train[i]] for i in idx])
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=lab)
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step < total_steps_guess - 1:
                sched.step()
            step += 1
            seen += len(idx)
            if step % 50 == 0:
                print(f"step {step} loss {out.loss.item():.4f} epoch {seen / len(encoded):.2f} "
                      f"{time.time() - t0:.0f}s", flush=True)
            if time.time() - t0 >= budget or step >= total_steps_guess:
                break
    train_s = time.time() - t0
    model.eval()
    return step, seen, train_s


def first_answer_tokens(model, tok, encode, questions: list[str], pixel_values) -> list[str]:
    """The greedy first answer token of each question (one batch, left padding as for generation)."""
    enc = [encode(q, None)[0] for q in questions]
    length = max(map(len, enc))
    ids = torch.full((len(enc), length), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for r, e in enumerate(enc):
        ids[r, length - len(e):], mask[r, length - len(e):] = torch.tensor(e), 1
    logits = model(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, logits_to_keep=1).logits[:, -1]
    return tok.convert_ids_to_tokens(logits.argmax(-1).tolist())


def test_accuracy(model, tok, encode, q_test, a_test, i_test, test_pix, limit) -> tuple[int, int]:
    """Greedy first answer token with all visual tokens: (correct, questions)."""
    correct, n = 0, 0
    with torch.no_grad():
        for s in range(0, limit, 256):
            qs = q_test[s:min(s + 256, limit)]
            ans, ims = a_test[s:s + len(qs)], i_test[s:s + len(qs)]
            pred = first_answer_tokens(model, tok, encode, qs, torch.stack([test_pix[i] for i in ims]))
            correct += sum(p == a for p, a in zip(pred, ans))
            n += len(qs)
    return correct, n


def main() -> int:
    args = parse_args()
    if args.processor_files_only:
        return write_processor_files_only(args.out)
    from easy_vqa import get_answers, get_test_image_paths, get_test_questions, get_train_image_paths, \
        get_train_questions
    from PIL import Image

    torch.manual_seed(args.seed)
    t_start = time.time()
    q_train, a_train, i_train = get_train_questions()
    q_test, a_test, i_test = get_test_questions()
    words = [w for s in q_train + q_test for w in s.replace("?", " ?").split()] + list(get_answers())
    tok, model, pre, encode = build(words)

    def pixels(paths, ids):
        return pre([Image.open(paths[i]).convert("RGB") for i in ids])

    train_paths, test_paths = get_train_image_paths(), get_test_image_paths()
    print(f"preprocessing {len(train_paths)} train images", flush=True)
    train_pix = {i: t for i, t in zip(sorted(train_paths), pixels(train_paths, sorted(train_paths)))}
    encoded = [encode(q, a) for q, a in zip(q_train, a_train)]
    step, seen, train_s = train(model, tok, encoded, train_pix, i_train, args)
    limit = args.test_limit or len(q_test)
    test_ids = sorted(set(i_test[:limit]))
    test_pix = {i: t for i, t in zip(test_ids, pixels(test_paths, test_ids))}
    correct, n = test_accuracy(model, tok, encode, q_test, a_test, i_test, test_pix, limit)
    majority_answer, majority_count = Counter(a_test[:limit]).most_common(1)[0]
    out_dir = save(Path(args.out), model, tok, pre)
    info = {"command": "python scripts/train_tiny.py " + " ".join(sys.argv[1:]), "seed": args.seed,
            "steps": step, "batch": args.batch, "examples_seen": seen, "epochs": seen / len(encoded),
            "train_time_s": train_s, "total_time_s": time.time() - t_start, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "test_questions": n, "test_accuracy_all_tokens": correct / n,
            "majority_answer": majority_answer, "majority_baseline_accuracy": majority_count / limit,
            "parameters": sum(p.numel() for p in model.parameters())}
    return write_training(out_dir, info)


if __name__ == "__main__":
    sys.exit(main())
