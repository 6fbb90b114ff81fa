"""Writes tests/golden/tasks.json: a 16 x 16 thumbnail of every task's output on the bundled demo model, for
fixed prompts, seeds and budgets. `tests/test_golden.py` checks that the engine still makes the same images.

    python tests/golden/make_golden.py            # after a change meant to alter the images (say why)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "assets" / "examples"
GOLDEN = Path(__file__).with_name("tasks.json")
BUDGET = dict(steps=2, iterations=3, guidance=3.0)


def runs(pipe) -> dict:
    """Every task once, on the example apple and its mask: name -> output image."""
    apple = Image.open(EXAMPLES / "apple.png").convert("RGB")
    mask = Image.open(EXAMPLES / "apple-mask.png")
    out = {
        "generate": pipe.generate("a red apple on a blue background", seed=1, **BUDGET).image,
        "generate_96x64": pipe.generate("a star on a green background", seed=2, width=96, height=64,
                                        **BUDGET).image,
        "generate_composed": pipe.generate("left: a cat face; right: a dog face; pink background", seed=4,
                                           compose=True, **BUDGET).image,
        "edit": pipe.edit(apple, "a green apple on a blue background", strength=0.6, seed=3, **BUDGET).image,
        "inpaint": pipe.inpaint(apple, mask, "a rocket on a blue background", seed=4, **BUDGET).image,
        "inpaint_masked_only": pipe.inpaint(apple, mask, "a sun", masked_only=True, padding=16, seed=5,
                                            **BUDGET).image,
        "upscale": pipe.upscale(apple.resize((64, 64)), scale=2, strength=0.3, seed=6, **BUDGET).image,
    }
    if "control_canny" in pipe.adapters:
        out["control"] = pipe.control(apple, "a sun on a purple background", kind="canny", seed=7, **BUDGET).image
    return out


def thumbnail(image: Image.Image) -> list:
    """[16, 16, 3] uint8 area averages, as nested lists."""
    return np.asarray(image.convert("RGB").resize((16, 16), Image.Resampling.BOX)).tolist()


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from iris import IrisPipeline

    torch.set_num_threads(1)
    pipe = IrisPipeline.from_pretrained()
    data = {name: {"size": list(img.size), "thumbnail": thumbnail(img)} for name, img in runs(pipe).items()}
    GOLDEN.write_text(json.dumps({"budget": BUDGET, "runs": data}, separators=(",", ":")) + "\n")
    print(f"wrote {GOLDEN} ({len(data)} runs)")


if __name__ == "__main__":
    main()
