"""Why two-sprite positions fail: is it drawing the emoji, or placing them?

    python benchmarks/positions.py                       # the bundled model, 40 held-out pairs x 2 seeds, 4 x 8
    python benchmarks/positions.py --model /path/to/model --pairs 20 --budget 4x8
    python benchmarks/positions.py --pairs 179 --seeds 1 --modes composed   # every held-out pair, composed only

For every held-out two-sprite prompt the strict judge (`iris.judge`) reads each half of the image. Per named
sprite it reports:

- named side:    the judge names the sprite on the half the prompt put it on (the position metric's unit);
- other side:    the judge names it on the opposite half instead (drawn, but misplaced);
- either side:   the judge names it on some half (drawn at all, position ignored);
- first / second: the named-side rate for the sprite mentioned first and second in the prompt.
- left/right, top/bottom: named side / other side for sprites placed across or up and down.

Each set of prompts is drawn three ways: as written, with regional prompts (`iris.layout`), and composed
(`iris.compose`: each placed subject drawn alone, then pasted into its region).

If "other side" is close to "named side" the model draws the sprites but does not bind them to
the words; if "either side" is low, the sprites themselves are the problem. Real renders are scored the same
way as a ceiling.

Before any image, the text encoder is asked whether it can tell each prompt from the same prompt with the two
sides swapped ("A on the left and B on the right" against "A on the right and B on the left"): the least
cosine similarity over their token states. At 1.0 the words carry no side at all and nothing downstream
can place the sprites; it is reported for left/right and top/bottom pairs separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np
import torch
from PIL import Image

from iris import IrisPipeline
from iris.eval import eval_prompts, parse_budgets, phrase
from iris.hub import demo_model_path
from iris.judge import half_view, judge_images, load_judge
from iris.train.emoji import EMOJI

_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
# pair prompts in forms the caption templates never produce ({s1}/{s2}: "left", "top", ...)
NOVEL_PHRASINGS = (
    "{s1}: {a1}; {s2}: {a2}; the background is {c}",
    "{a1} {rel} {a2}, everything on {ac} backdrop",
    "the {s1} half shows {a1} and the {s2} half shows {a2}, over {c}",
    "on the {s2} there is {a2}, and on the {s1} there is {a1}; {c} background",
)
MODES = ("plain", "regional", "composed")
_RELATION = {"left": "to the left of", "right": "to the right of", "top": "above", "bottom": "below"}


def novel_phrase(scene, phrasing: int) -> str:
    """A held-out pair scene's prompt in one of NOVEL_PHRASINGS."""
    from iris.train.emoji import COLORS, article

    (e1, e2), (p1, p2) = scene.emoji, scene.positions
    n1, n2, c = EMOJI[e1].name, EMOJI[e2].name, COLORS[scene.color].name
    return NOVEL_PHRASINGS[phrasing % len(NOVEL_PHRASINGS)].format(
        s1=p1, s2=p2, a1=article(n1), a2=article(n2), rel=_RELATION[p1], c=c, ac=article(c))


def score(images: list[Image.Image], prompts, judge) -> dict[str, float | str]:
    """The per-sprite rates (see the module docstring) of `images`, one per pair prompt."""
    views, wants, order, across = [], [], [], []
    for image, p in zip(images, prompts):
        for k, (e, side) in enumerate(zip(p.scene.emoji, p.scene.positions)):
            views += [half_view(image, side), half_view(image, _OPPOSITE[side])]
            wants.append(EMOJI[e].char)
            across.append(side in ("left", "right"))
            # which sprite the prompt names first: phrase() names scene.emoji[0] first
            order.append(k)
    verdict = judge_images(views, judge)
    named = np.array([verdict.top5[2 * i][0] == w for i, w in enumerate(wants)])
    other = np.array([verdict.top5[2 * i + 1][0] == w for i, w in enumerate(wants)])
    order_a, across_a = np.array(order), np.array(across)
    both = named.reshape(-1, 2).all(1)

    def rate(hits: np.ndarray, keep: np.ndarray) -> float:
        return float(hits[keep].mean()) if keep.any() else float("nan")

    return {
        "positions (both named side)": float(both.mean()),
        "named side": float(named.mean()),
        "other side": float(other.mean()),
        "either side": float((named | other).mean()),
        "first named": float(named[order_a == 0].mean()),
        "second named": float(named[order_a == 1].mean()),
        "left/right: named / other side": f"{rate(named, across_a):.1%} / {rate(other, across_a):.1%}",
        "top/bottom: named / other side": f"{rate(named, ~across_a):.1%} / {rate(other, ~across_a):.1%}",
    }


def side_swap_similarity(pipe: IrisPipeline, prompts) -> dict[str, float]:
    """Per axis (left/right, top/bottom): the mean over pair prompts of the least cosine similarity, over
    token positions, between the text states [L, D] of the prompt and of the same prompt with its two sides
    swapped; and the share of prompts where that least similarity is above 0.99 (sides indistinguishable)."""
    by_axis: dict[str, list[float]] = {}
    for q in prompts:
        swapped = dataclasses.replace(q.scene, positions=[_OPPOSITE[s] for s in q.scene.positions])
        with torch.no_grad():
            cond = pipe.text_encoder.encode([q.text, phrase(swapped, q.phrasing)])
        n = int(cond.mask.sum(1).min())
        cos = torch.nn.functional.cosine_similarity(cond.tokens[0, :n], cond.tokens[1, :n], dim=-1)
        axis = "left/right" if q.scene.positions[0] in ("left", "right") else "top/bottom"
        by_axis.setdefault(axis, []).append(float(cos.min()))
    out = {}
    for axis, values in sorted(by_axis.items()):
        v = np.array(values)
        out[f"{axis}: least token similarity to the swap"] = float(v.mean())
        out[f"{axis}: sides indistinguishable (> 0.99)"] = float((v > 0.99).mean())
        out[f"{axis}: prompts"] = float(len(v))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled demo model)")
    p.add_argument("--pairs", type=int, default=40, help="held-out two-sprite prompts")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--budget", default="4x8", help="steps x iterations")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--modes", default="plain,regional,composed",
                   help="how each prompt is drawn, comma-separated: plain (as written), regional, composed")
    p.add_argument("--seed", type=int, default=0, help="first image seed (the k-th seed is seed + 1000 k + i)")
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes takes a comma-separated list of {', '.join(MODES)}, got {args.modes!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    (steps, iterations), = parse_budgets(args.budget)
    pipe = IrisPipeline.from_pretrained(args.model or demo_model_path())
    judge = load_judge()
    prompts = [q for q in eval_prompts(0, args.pairs, args.seeds, args.seed) if len(q.scene.emoji) == 2]
    text = side_swap_similarity(pipe, prompts[:: args.seeds])
    print("text encoder, prompt against its side-swapped twin:")
    for k, v in text.items():
        print(f"  {k}: {v:.0f}" if k.endswith("prompts") else f"  {k}: {v:.3f}")
    novel = [dataclasses.replace(q, text=novel_phrase(q.scene, i)) for i, q in enumerate(prompts)]
    rows = {"real renders": score([q.scene.image for q in prompts], prompts, judge)}
    for name, group in (("", prompts), (", new phrasings", novel)):
        for mode in modes:
            images = [pipe.generate(q.text, steps=steps, iterations=iterations, seed=q.seed,
                                    regional=mode != "plain", compose=mode == "composed",
                                    preview_fraction=None).images[0] for q in group]
            label = "" if mode == "plain" else f", {mode}"
            rows[f"{steps} x {iterations}{name}{label}"] = score(images, group, judge)
    keys = list(next(iter(rows.values())))
    print(f"{len(prompts)} two-sprite prompts ({args.pairs} scenes x {args.seeds} seeds)")
    print("| | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(v if isinstance(v := row[k], str) else f"{v:.1%}" for k in keys) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**rows, "text encoder": text}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
