"""How much of a removed object inpainting leaves behind at the mask's edge, for each feather of the mask.

    python benchmarks/inpaint_seams.py                 # 24 held-out scenes, mask blur 4 and 8
    python benchmarks/inpaint_seams.py --scenes 48 --grow 0 3

Each scene is one emoji on its background; the mask is the sprite's silhouette grown by `grow` px (a careful
user's stroke), the prompt asks for the bare background, and the truth is the same scene drawn without the
sprite. `ghost` is the share of the old object's contrast still in the result inside the mask (1: untouched,
0: gone), `rim ghost` the same in the mask's inner band of 2 x blur px, where an outline would show; `outside`
is the mean change of pixels outside the mask (0 for an inward-only feather).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iris import IrisPipeline, editing  # noqa: E402
from iris.train.emoji import COLORS, EmojiScenes, SceneConfig  # noqa: E402


def inward_alpha(binary: np.ndarray, box: tuple[int, int, int, int], blur: float) -> np.ndarray:
    """The earlier feather: the mask blurred by `blur` px and zeroed outside it (old pixels kept at the rim)."""
    x0, y0, x1, y1 = box
    inside = binary[y0:y1, x0:x1]
    if blur <= 0:
        return inside.astype(np.float32)
    mask = Image.fromarray(binary.astype(np.uint8) * 255)
    a = np.asarray(mask.filter(ImageFilter.GaussianBlur(blur)), dtype=np.float32)[y0:y1, x0:x1] / 255.0
    return a * inside


FEATHERS = {"inward (before)": inward_alpha, "outward (now)": editing._feathered_alpha}


def ghost(out: np.ndarray, orig: np.ndarray, truth: np.ndarray, where: np.ndarray) -> float:
    """Share of the old object's contrast (orig - truth) left in `out` over the pixels `where`."""
    old = (orig - truth)[where]
    now = (out - truth)[where]
    return float((now * old).sum() / max((old * old).sum(), 1e-6))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--scenes", type=int, default=24)
    p.add_argument("--blur", type=float, nargs="+", default=[4.0, 8.0])
    p.add_argument("--grow", type=int, nargs="+", default=[2])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--iterations", type=int, default=8)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    pipe = IrisPipeline.from_pretrained(args.model)
    scenes = EmojiScenes(SceneConfig(max_sprites=1, p_gradient=0.0, p_off_edge=0.0), split="heldout")
    print("| grow | blur | feather | ghost | rim ghost | outside change |\n|---|---|---|---|---|---|")
    for grow in args.grow:
        for blur in args.blur:
            rows: dict[str, list[tuple[float, float, float]]] = {name: [] for name in FEATHERS}
            for i in range(args.scenes):
                plan = scenes.plan(i)
                scene = scenes.render(plan)
                truth = np.asarray(scenes.render(dataclasses.replace(plan, emoji=[], placements=[])).image,
                                   dtype=np.float32)
                orig = np.asarray(scene.image, dtype=np.float32)
                mask = scene.alpha.point(lambda v: 255 if v > 0 else 0)
                if grow:
                    mask = mask.filter(ImageFilter.MaxFilter(2 * grow + 1))
                binary = np.asarray(mask) > 127
                dist_in = np.asarray(mask.filter(ImageFilter.MinFilter(2 * int(2 * blur) + 1))) > 127
                rim = binary & ~dist_in
                prompt = f"a plain {COLORS[plan.color].name} background"
                for name, feather in FEATHERS.items():
                    original = editing._feathered_alpha
                    editing._feathered_alpha = feather
                    try:
                        out = pipe.inpaint(scene.image, mask, prompt, mask_blur=blur, steps=args.steps,
                                           iterations=args.iterations, seed=i).image
                    finally:
                        editing._feathered_alpha = original
                    o = np.asarray(out, dtype=np.float32)
                    outside = float(np.abs(o - orig)[~binary].mean())
                    rows[name].append((ghost(o, orig, truth, binary), ghost(o, orig, truth, rim), outside))
            for name, vals in rows.items():
                g, r, out = np.asarray(vals).mean(0)
                print(f"| {grow} | {blur:g} | {name} | {g:.3f} | {r:.3f} | {out:.2f} |", flush=True)


if __name__ == "__main__":
    main()
