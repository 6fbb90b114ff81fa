"""Control-map preprocessors that need no extra model: canny edges, scribbles and colour layouts.

    canny(image)          white 1-px edges on black (Gaussian blur, Sobel, non-maximum suppression,
                          double threshold and hysteresis), written here in torch
    scribble(image)       thick white lines on black: a drawing (mostly one background colour, thin strokes)
                          is thresholded, anything else gives dilated canny edges
    color_layout(image)   a coarse colour grid (area-average to `cells` cells, nearest upsampling)
    preprocess(kind, im)  dispatch by control kind; maps the user supplies (depth, pose, ...) pass through
    preprocess_tensor     the same on a batch [B, 3, H, W] in [-1, 1] (used by adapter training)

The PIL functions wrap the tensor ones, so training and inference see identical maps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InvalidInputError
from .inputs import check_float, check_int, open_image, pil_to_tensor, tensor_to_pil
from .models.adapters import CONTROL_KINDS

PREPROCESSED_KINDS = ("canny", "scribble", "color")  # kinds with a preprocessor; the others pass through


# ------------------------------------------------------------------------------------------------ helpers
def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] (replicate borders), as sums of shifted slices."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (r / sigma) ** 2)
    k = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    p = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    x = sum(k[i] * p[..., :, i : i + w] for i in range(len(k)))
    p = F.pad(x, (0, 0, radius, radius), mode="replicate")
    return sum(k[i] * p[..., i : i + h, :] for i in range(len(k)))


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """3x3 Sobel gradients (d/dx, d/dy) of [B, C, H, W], replicate borders."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dx = p[..., :, 2:] - p[..., :, :w]  # [B, C, H + 2, W]
    dy = p[..., 2:, :] - p[..., :h, :]  # [B, C, H, W + 2]
    gx = dx[..., :h, :] + 2 * dx[..., 1 : h + 1, :] + dx[..., 2:, :]
    gy = dy[..., :w] + 2 * dy[..., 1 : w + 1] + dy[..., 2:]
    return gx, gy


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary dilation of a [B, 1, H, W] bool mask with a size x size square (size odd)."""
    if size <= 1:
        return mask
    return F.max_pool2d(mask.float(), size, stride=1, padding=size // 2) > 0


def _erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Binary erosion of a [B, 1, H, W] bool mask with a size x size square (size odd)."""
    if size <= 1:
        return mask
    return ~_dilate(~mask, size)


def _default_thickness(h: int, w: int) -> int:
    """Line thickness for scribbles: 3 px at 128 px, growing with the image (always odd)."""
    t = max(3, round(min(h, w) / 48))
    return t if t % 2 else t + 1


def _check_images(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InvalidInputError(f"control images must be a tensor [B, 3, H, W] in [-1, 1], got {shape}")
    return images


def _mask_to_image(mask: torch.Tensor) -> torch.Tensor:
    """Bool [B, 1, H, W] -> white-on-black [B, 3, H, W] in [-1, 1]."""
    return (mask.float() * 2 - 1).expand(-1, 3, -1, -1).contiguous()


# ------------------------------------------------------------------------------------------ tensor maps
def canny_edges(images: torch.Tensor, low: float = 100.0, high: float = 200.0,
                sigma: float = 1.0) -> torch.Tensor:
    """Canny edges of [B, 3, H, W] in [-1, 1] -> bool [B, 1, H, W].

    Colour Canny: the gradient at each pixel is that of the RGB channel where it is largest, so edges
    between colours of equal brightness are found too. Thresholds are on the L2 magnitude of the 3x3
    Sobel gradient of 0..255 values (OpenCV's scale with L2gradient), after a Gaussian blur of std `sigma`
    px: with the defaults a step of about 60 levels is a strong edge, 30 a weak one.
    """
    images = _check_images(images)
    g = _gaussian_blur((images.float().clamp(-1, 1) + 1) * 127.5, sigma)
    gx3, gy3 = _sobel(g)
    mag3 = torch.hypot(gx3, gy3)
    mag, channel = mag3.max(dim=1, keepdim=True)
    gx, gy = gx3.gather(1, channel), gy3.gather(1, channel)

    # non-maximum suppression along the gradient direction, quantised to 0/45/90/135 degrees
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    m = F.pad(mag, (1, 1, 1, 1))
    h, w = mag.shape[-2:]
    at = lambda dy, dx: m[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
    pairs = {  # (forward neighbour, backward neighbour) with y pointing down
        0: (at(0, 1), at(0, -1)),
        45: (at(1, 1), at(-1, -1)),
        90: (at(1, 0), at(-1, 0)),
        135: (at(1, -1), at(-1, 1)),
    }
    sector = torch.where((angle < 22.5) | (angle >= 157.5), 0,
                         torch.where(angle < 67.5, 45, torch.where(angle < 112.5, 90, 135)))
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for deg, (fwd, bwd) in pairs.items():
        keep |= (sector == deg) & (mag > fwd) & (mag >= bwd)
    nms = torch.where(keep, mag, torch.zeros_like(mag))

    # double threshold + hysteresis: weak pixels connected (8-neighbourhood) to a strong one survive
    strong = nms >= high
    weak = nms >= low
    edges = strong
    count = int(edges.sum())
    while True:
        for _ in range(4):
            edges = weak & _dilate(edges, 3)
        new = int(edges.sum())
        if new == count:
            return edges
        count = new


def scribble_lines(images: torch.Tensor, thickness: int | None = None,
                   threshold: float = 0.2) -> torch.Tensor:
    """Thick white lines of [B, 3, H, W] in [-1, 1] -> bool [B, 1, H, W].

    An image that looks like a drawing — at least 60% of it within `threshold` of the background colour
    (the median of its border) and strokes so thin that 70% of them vanish under an erosion by the line
    thickness — is thresholded against that background; anything else gives its canny edges. Either way
    the lines are then dilated to `thickness` px (default: 3 px at 128 px, growing with the image).
    """
    images = _check_images(images)
    b, _, h, w = images.shape
    t = _default_thickness(h, w) if thickness is None else int(thickness)
    x = (images.float().clamp(-1, 1) + 1) / 2
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], dim=-1)  # [B, 3, N]
    background = border.median(dim=-1).values.view(b, 3, 1, 1)
    fg = (x - background).abs().amax(1, keepdim=True) > threshold
    fg_count = fg.flatten(1).sum(1).float()
    share_bg = 1 - fg_count / (h * w)
    survivors = _erode(fg, t).flatten(1).sum(1).float()
    drawing = (share_bg >= 0.6) & (fg_count > 0) & (survivors <= 0.3 * fg_count)
    lines = torch.where(drawing.view(b, 1, 1, 1), fg, canny_edges(images))
    return _dilate(lines, t)


def color_grid(images: torch.Tensor, cells: int = 8) -> torch.Tensor:
    """Colour layout of [B, 3, H, W] in [-1, 1]: area-average to `cells` cells along the longer side
    (proportionally fewer along the shorter), then nearest upsampling back -> [B, 3, H, W]."""
    images = _check_images(images)
    h, w = images.shape[-2:]
    long = max(h, w)
    ch = max(1, min(h, round(cells * h / long)))
    cw = max(1, min(w, round(cells * w / long)))
    coarse = F.adaptive_avg_pool2d(images.float(), (ch, cw))
    return F.interpolate(coarse, size=(h, w), mode="nearest").clamp(-1, 1)


def check_kind(kind: Any) -> str:
    """A control kind: a short lowercase name such as canny, scribble, color, depth or pose."""
    examples = ", ".join(CONTROL_KINDS)
    if not isinstance(kind, str) or not kind.strip():
        raise InvalidInputError(f"control kind must be a name such as {examples}, got {kind!r}")
    name = kind.strip().lower()
    if name == "colour":
        name = "color"
    if len(name) > 40 or not name.replace("_", "").replace("-", "").isalnum():
        raise InvalidInputError(f"control kind must be a short name such as {examples}, got {kind!r}")
    return name


def preprocess_tensor(kind: str, images: torch.Tensor) -> torch.Tensor:
    """Control maps of a batch: [B, 3, H, W] in [-1, 1] -> [B, 3, H, W] in [-1, 1] (same device and dtype).

    canny / scribble / color are computed; any other kind (depth, pose, ...) passes through unchanged.
    """
    kind = check_kind(kind)
    images = _check_images(images)
    with torch.no_grad():
        if kind == "canny":
            out = _mask_to_image(canny_edges(images))
        elif kind == "scribble":
            out = _mask_to_image(scribble_lines(images))
        elif kind == "color":
            out = color_grid(images)
        else:
            return images
    return out.to(images.dtype)


# ---------------------------------------------------------------------------------------------- PIL API
def _run(image: Any, fn: Any) -> Image.Image:
    x = pil_to_tensor(open_image(image))
    return tensor_to_pil(fn(x))[0]


def canny(image: Any, low: float = 100.0, high: float = 200.0, sigma: float = 1.0) -> Image.Image:
    """White canny edges on black ("RGB", the image's size). Thresholds on OpenCV's 0..255 Sobel scale."""
    low = check_float("low", low, 0.0, 10_000.0)
    high = check_float("high", high, 0.0, 10_000.0)
    sigma = check_float("sigma", sigma, 0.0, 20.0)
    if low > high:
        raise InvalidInputError(f"canny's low threshold ({low:g}) must not exceed its high one ({high:g})")
    return _run(image, lambda x: _mask_to_image(canny_edges(x, low, high, sigma)))


def scribble(image: Any, thickness: int | None = None) -> Image.Image:
    """Thick white lines on black ("RGB", the image's size): a thresholded drawing or dilated edges."""
    t = None if thickness is None else check_int("thickness", thickness, 1, 63)
    if t is not None and t % 2 == 0:
        t += 1
    return _run(image, lambda x: _mask_to_image(scribble_lines(x, t)))


def color_layout(image: Any, cells: int = 8) -> Image.Image:
    """Coarse colour layout ("RGB", the image's size): `cells` blocks along the longer side."""
    cells = check_int("cells", cells, 1, 256)
    return _run(image, lambda x: color_grid(x, cells))


def preprocess(kind: str, image: Any) -> Image.Image:
    """The control map of `image` for `kind`; kinds without a preprocessor (depth, pose, ...) pass through."""
    kind = check_kind(kind)
    if kind == "canny":
        return canny(image)
    if kind == "scribble":
        return scribble(image)
    if kind == "color":
        return color_layout(image)
    return open_image(image)


__all__ = [
    "CONTROL_KINDS", "PREPROCESSED_KINDS", "canny", "scribble", "color_layout", "preprocess",
    "preprocess_tensor", "canny_edges", "scribble_lines", "color_grid", "check_kind",
]
