"""Placed subjects drawn on their own, then put where the prompt says.

With `compose` on, text-to-image draws a prompt that places its subjects ("a cat on the left and a dog on
the right, on blue") as one draft per subject, each from that subject's own prompt (`Layout.subject_prompt`:
"a cat, on blue") over the whole frame, where the model draws a subject best. Each subject is then cut out of
its draft (the pixels that differ from the draft's border colour), scaled so that its longer side is `FILL`
of the image's shorter side (less if its region is smaller), and pasted in the middle of its region, on the
drafts' mean border colour.

The drafts share one batch (as many as `iris.limits.MAX_IMAGES` allows), so each subject after the first
adds about half a run (`EXTRA_SUBJECT_COST`). It suits subjects on a plain background (the bundled emoji
model's world): a draft's own backdrop is replaced by one flat colour, and whatever the prompt says that
names no placed subject survives only as the drafts' shared words.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

FILL = 0.4  # a subject's longer side, as a fraction of the image's shorter side
REGION_MARGIN = 0.95  # a subject never fills more of its region's shorter side than this
FOREGROUND_THRESHOLD = 60  # summed |R, G, B difference| from the border colour that counts as the subject
MIN_FOREGROUND_PIXELS = 10  # fewer than this: no subject found, the whole draft is used

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) as fractions of the image


# The time one more subject adds to a composed image, as a fraction of one plain run: the drafts share a batch
# (2 images in one batch took 1.56x one image for the demo model, 1.48x for its student, 2 threads).
EXTRA_SUBJECT_COST = 0.55


def composed_subjects(prompt: str, compose: bool) -> int:
    """How many drafts text to image makes for `prompt`: one per placed subject when composing
    (`iris.layout.parse_layout`), else one."""
    from .layout import parse_layout

    layout = parse_layout(prompt) if compose and isinstance(prompt, str) else None
    return len(layout.placements) if layout is not None else 1


def composed_cost(subjects: int) -> float:
    """The time of a composed image of `subjects` drafts (`composed_subjects`) as a multiple of one plain run."""
    return 1.0 + EXTRA_SUBJECT_COST * (subjects - 1)


def subject_seed(seed: int, k: int) -> int:
    """The seed of placed subject k's draft: the run's own seed for the first, distinct ones after it."""
    return seed if k == 0 else (seed * 1_000_003 + 7_907 * k) % 2**63


def border_colour(image: Image.Image) -> np.ndarray:
    """The median colour [3] of an RGB image's outermost pixels: its background, for a subject on a backdrop."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    return np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]]), axis=0)


def foreground_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The pixel box (x0, y0, x1, y1) of what differs from the border colour, or None when nothing does."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32)
    ys, xs = np.nonzero(np.abs(a - border_colour(image)).sum(-1) > FOREGROUND_THRESHOLD)
    if len(xs) < MIN_FOREGROUND_PIXELS:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def compose(drafts: Sequence[Image.Image], boxes: Sequence[Box], size: tuple[int, int],
            fill: float = FILL) -> Image.Image:
    """One image of `size` (width, height): each draft's subject pasted in the middle of its box, in order
    (a later one covers an earlier one where they meet), on the drafts' mean border colour."""
    if len(drafts) != len(boxes) or not drafts:
        raise ValueError(f"compose needs one box per draft, got {len(drafts)} drafts and {len(boxes)} boxes")
    width, height = size
    background = np.mean([border_colour(d) for d in drafts], axis=0)
    canvas = Image.new("RGB", (width, height), tuple(int(round(v)) for v in background))
    for draft, (x0, y0, x1, y1) in zip(drafts, boxes):
        draft = draft.convert("RGB")
        box = foreground_box(draft)
        subject = draft.crop(box) if box is not None else draft
        left, top, right, bottom = x0 * width, y0 * height, x1 * width, y1 * height
        side = min(fill * min(width, height), REGION_MARGIN * min(right - left, bottom - top))
        scale = side / max(subject.size)
        new = (max(1, round(subject.width * scale)), max(1, round(subject.height * scale)))
        subject = subject.resize(new, Image.Resampling.LANCZOS)
        canvas.paste(subject, (round((left + right - new[0]) / 2), round((top + bottom - new[1]) / 2)))
    return canvas


__all__ = ["FILL", "EXTRA_SUBJECT_COST", "compose", "composed_cost", "composed_subjects", "foreground_box",
           "border_colour", "subject_seed"]
