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

    Every layer counts: a pixel is masked when any layer's alpha there is >= ALPHA_THRESHOLD.
    """
    if not isinstance(value, dict):
        return None
    union: np.ndarray | None = None
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = layer if isinstance(layer, Image.Image) else Image.open(layer)
        alpha = np.asarray(layer.convert("RGBA").getchannel("A"))
        union = alpha if union is None else np.maximum(union, alpha)
    if union is None or union.max(initial=0) < ALPHA_THRESHOLD:
        return None
    mask = Image.fromarray(np.where(union >= ALPHA_THRESHOLD, 255, 0).astype(np.uint8), "L")
    return binarize(mask, size)


def binarize(mask: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Any mask image -> pure black/white "L" of `size` (threshold at mid grey, nearest resize)."""
    from iris.inputs import open_mask

    return open_mask(mask, size)


def is_blank(image: Image.Image) -> bool:
    """True when every pixel has the same colour (an untouched canvas)."""
    return all(lo == hi for lo, hi in image.getextrema())
