"""``vtc saliency``: attention-based importance maps per layer and prompt, with trend statistics."""

from __future__ import annotations


from evaluation.saliency import SCORES, run_saliency
from reports.tables import text_table
from vlm import load

from .profile_cmd import device_of

HELP = "saliency heatmaps (Algorithm 1, FastV, CLS) per layer and prompt, and their trend statistics"


def add_arguments(p) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--model-path", help="a LLaVA checkpoint folder (with its tokenizer)")
    g.add_argument("--preset", help="a random-weight preset (needs a tokenizer: not for presets without one)")
    im = p.add_mutually_exclusive_group(required=True)
    im.add_argument("--image", nargs="+", help="image files")
    im.add_argument("--easy-vqa-images", type=int, metavar="N", help="the first N test images of easy-vqa (offline)")
    p.add_argument("--prompt", nargs="+", action="extend", required=True,
                   help="questions (quote each; repeat the flag or list several)")
    p.add_argument("--layers", default="0,1,2", help="LLM layers, comma-separated (e.g. 0,1,2,8,16,31)")
    p.add_argument("--scores", default=",".join(SCORES), help=f"comma-separated: {', '.join(SCORES)}")
    p.add_argument("--rope", action="store_true",
                   help="rotate the saliency score's q/k to the tokens' real positions (the saliency reducers' "
                        "rope=True); default: no rotary positions, as the paper's Algorithm 1")
    p.add_argument("--text", choices=("all", "after_image"), default="all",
                   help="the saliency score's query tokens: every non-image token (default, the paper's Q_text) "
                        "or only those after the image (the reducers' text=...)")
    p.add_argument("--device", default=None)
    p.add_argument("--out", required=True, help="folder for heatmaps, scores.csv and trends.json")


def run(args) -> int:
    try:
        layers = [int(x) for x in args.layers.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--layers {args.layers!r} is not a comma-separated list of integers") from None
    images = args.image
    if args.easy_vqa_images is not None:
        from evaluation.tasks.easy_vqa import load_easy_vqa
        available = list(dict.fromkeys(s.image for s in load_easy_vqa()))
        if not 1 <= args.easy_vqa_images <= len(available):
            raise ValueError(f"--easy-vqa-images {args.easy_vqa_images} is not allowed; use 1..{len(available)}")
        images = available[: args.easy_vqa_images]
    device = device_of(args)
    lm = load(preset=args.preset, model_path=args.model_path, device=device)
    stats = run_saliency(lm, images, args.prompt, layers, args.out, kinds=tuple(args.scores.split(",")),
                         rope=args.rope, text=args.text)
    ks = stats["ks"]
    for kind, t in stats["trend1_across_layers"].items():
        rows = [[pair, f"{v['spearman']:.3f}", f"{v['kendall']:.3f}"] + [f"{v[f'top{k}']:.3f}" for k in ks]
                for pair, v in t["layer_pairs"].items()]
        rows += [[f"vs {ref}", f"{t[f'vs_{ref}']['spearman']:.3f}", f"{t[f'vs_{ref}']['kendall']:.3f}"]
                 + [f"{t[f'vs_{ref}'][f'top{k}']:.3f}" for k in ks] for ref in ("spatial", "random")]
        print(f"Trend 1, {kind}: rankings across layers ({stats['images']} images x {stats['prompts']} prompts)")
        print(text_table(["layers", "Spearman", "Kendall"] + [f"top-{k} overlap" for k in ks], rows))
        t2 = stats["trend2_across_prompts"].get(kind)
        if t2 is None:
            print(f"Trend 2, {kind}: not computed: {stats['notes'][0]}\n")
            continue
        print(f"Trend 2, {kind}: across prompts, Spearman {t2['prompt_pairs']['spearman']:.3f}, Kendall "
              f"{t2['prompt_pairs']['kendall']:.3f}, " + ", ".join(
                  f"top-{k} overlap {t2['prompt_pairs'][f'top{k}']:.3f} (shared by all prompts "
                  f"{t2[f'top{k}_shared_by_all_prompts']:.3f}; pairwise chance {k / stats['visual_tokens']:.3f})" for k in ks))
        print()
    print(f"heatmaps, scores.csv and trends.json in {args.out}")
    return 0
