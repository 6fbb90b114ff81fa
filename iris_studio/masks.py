"""Turning what the image editors send into the engine's inputs: a pure black/white mask, a control image."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

ALPHA_THRESHOLD = 128  # painted pixels at or above this opacity belong to the mask


def editor_image(value: Any) -> Image.Image | None:
    """The editor's background (the uploaded image) as RGB, or None when there is none."""
    if not isinstance(value, dict):
        return value if isinstance(value, Image.Image) else None
    background = value.get("background")
    if background is None:
        return None
    from iris.inputs import open_image

    return open_image(background)


def editor_composite(value: Any) -> Image.Image | None:
    """The editor's flattened image (background with the strokes on it) as RGB."""
    if not isinstance(value, dict):
        return value if isinstance(value, Image.Image) else None
    image = value.get("composite") or value.get("background")
    if image is None:
        return None
    from iris.inputs import open_image

    return open_image(image)


def editor_mask(value: Any, size: tuple[int, int]) -> Image.Image | None:
    """The painted strokes as a binary "L" mask (0 or 255, white = change) of `size`; None if nothing painted.

    Every layer counts: a pixel is masked when any layer's alpha there is >= ALPHA_THRESHOLD. Each painted
    layer is brought to `size` on its own (as an uploaded mask is: resized when its shape matches, refused with
    a message when not), so layers of different sizes combine instead of failing to broadcast.
    """
    if not isinstance(value, dict):
        return None
    from iris.inputs import read_image

    union: np.ndarray | None = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = read_image(layer)  # in its own mode: the alpha is the stroke
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.getextrema()[1] < ALPHA_THRESHOLD:
            continue  # nothing painted on this layer
        painted = np.asarray(binarize(alpha.point(lambda v: 255 if v >= ALPHA_THRESHOLD else 0), size))
        union = painted if union is None else np.maximum(union, painted)
    if union is None:
        return None
    return Image.fromarray(union, "L")


def binarize(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Any mask image -> pure black/white "L" of `size` (threshold at mid grey, nearest resize)."""
    from iris.inputs import open_mask

    return open_mask(mask, size)


def is_blank(image: Image.Image) -> bool:
    """True when every pixel has the same colour (an untouched canvas)."""
    return all(lo == hi for lo, hi in image.getextrema())
