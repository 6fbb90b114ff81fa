"""Checking and converting what users hand the engine: settings, prompts, images and masks.

Every check raises `InvalidInputError` with a one-line message naming the setting and its valid range.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidInputError
from .limits import MAX_FILE_BYTES, MAX_PIXELS, MAX_PROMPT_CHARS, MAX_SEED  # noqa: F401 - re-exported


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """An integer in [lo, hi] (integral floats and numeric strings accepted)."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}")
    try:
        number = _parse_number(value) if isinstance(value, str) else value
        if isinstance(number, float):
            if not math.isfinite(number) or number != int(number):
                raise ValueError
            number = int(number)
        number = int(number)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{name} must be a whole number, got {value!r}") from None
    if not lo <= number <= hi:
        raise InvalidInputError(f"{name} must be between {lo} and {hi}, got {number}")
    return number


def _parse_number(text: str) -> int | float:
    """A numeric string: whole numbers exactly (int, so long seeds keep every digit), else a float."""
    try:
        return int(text.strip())
    except ValueError:
        return float(text)


def check_float(name: str, value: Any, lo: float, hi: float) -> float:
    """A finite number in [lo, hi]."""
    if isinstance(value, bool):
        raise InvalidInputError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInputError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or not lo <= number <= hi:
        raise InvalidInputError(f"{name} must be between {lo:g} and {hi:g}, got {value!r}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be true or false, got {value!r:.60}")
    return value


def check_seed(value: Any) -> int:
    """A seed in [0, 2^63 - 1]."""
    return check_int("seed", value, 0, MAX_SEED)


def is_text(value: Any) -> bool:
    """True for a string of at most MAX_PROMPT_CHARS that can be written as UTF-8 (no lone surrogates)."""
    if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_prompt(value: Any, name: str = "prompt") -> str:
    """A prompt string (None means empty). Over-long prompts are refused; the encoder truncates tokens."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be text, got {type(value).__name__}")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidInputError(f"{name} is {len(value)} characters; the limit is {MAX_PROMPT_CHARS}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:  # lone surrogates: undecodable bytes on a command line, broken JSON
        raise InvalidInputError(f"{name} holds characters that are not valid Unicode text (at position "
                                f"{err.start}); was it decoded with the wrong encoding?") from None
    return value.replace("\x00", " ")


def check_device(value: Any) -> torch.device:
    """A device this machine can run on: cpu, cuda, cuda:N or mps."""
    text = str(value).strip().lower() if value is not None else "cpu"
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise InvalidInputError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise InvalidInputError(f"device must be cpu, cuda, cuda:N or mps, got {value!r}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError("CUDA was asked for but no CUDA device is available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InvalidInputError(f"there is no CUDA device {device.index} ({torch.cuda.device_count()} found)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise InvalidInputError("MPS was asked for but this machine has no MPS device")
    return device


def round_size(name: str, value: Any, multiple: int, lo: int, hi: int) -> int:
    """A pixel size in [lo, hi], rounded to the nearest multiple of `multiple` (a documented correction)."""
    size = check_int(name, value, lo, hi)
    return max(multiple, int(round(size / multiple)) * multiple)


def open_image(source: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """A PIL image from a PIL image, path, bytes or array, EXIF-rotated and converted to RGB.

    Refuses corrupt, truncated, empty and over-large files with `InvalidInputError`. Alpha is composited
    on white; 16-bit, CMYK, palette and greyscale images are converted.
    """
    return to_rgb(read_image(source, max_pixels))


def read_image(source: Any, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Like `open_image`, but in the image's own mode (alpha and 16-bit values kept)."""
    if source is None:
        raise InvalidInputError("no image given")
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source)
    elif isinstance(source, (bytes, bytearray)):
        image = _decode(io.BytesIO(source), "image data", max_pixels)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"image file not found: {path}")
        size = path.stat().st_size
        if size == 0:
            raise InvalidInputError(f"image file {path.name} is empty")
        if size > MAX_FILE_BYTES:
            limit = MAX_FILE_BYTES >> 20
            raise InvalidInputError(f"image file {path.name} is {size >> 20} MB; the limit is {limit} MB")
        image = _decode(path, path.name, max_pixels)
    else:
        raise InvalidInputError(f"cannot read an image from {type(source).__name__}")
    if image.width * image.height > max_pixels:
        raise InvalidInputError(f"image is {image.width}x{image.height}; the limit is {max_pixels:,} pixels")
    if image.width < 1 or image.height < 1:
        raise InvalidInputError("image is empty")
    return image


def _decode(fp: Any, label: str, max_pixels: int) -> Image.Image:
    try:
        with Image.open(fp) as probe:
            if probe.width * probe.height > max_pixels:
                raise InvalidInputError(
                    f"{label} is {probe.width}x{probe.height}; the limit is {max_pixels:,} pixels"
                )
            probe.load()
            image = ImageOps.exif_transpose(probe)
            return image.copy() if image is probe else image
    except InvalidInputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InvalidInputError(f"{label} is not a readable image ({type(err).__name__}: {err})") from None


def _from_array(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        raise InvalidInputError(f"image array must be HxW, HxWx3 or HxWx4, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise InvalidInputError(f"image array must hold numbers, got dtype {a.dtype}")
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if not np.isfinite(a).all():
            raise InvalidInputError("image array holds NaN or infinite values")
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        a = np.clip(a, 0, 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(a)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy of any PIL mode; transparency is composited over white."""
    if image.mode == "RGB":
        return image
    if image.mode == "La":  # premultiplied: PIL converts it only to LA (it raised ValueError for RGB)
        image = image.convert("LA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if a.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_mask(source: Any, size: tuple[int, int]) -> Image.Image:
    """A binary mask ("L", 0 or 255) of `size` (w, h); white = region to change.

    Accepts any image mode; alpha-only masks use their alpha. A mask of another size but the same shape
    (aspect ratio within 2%) is resized (nearest) to the image's size — the documented correction; a mask of
    another shape is refused, since stretching it would move the region.
    """
    if isinstance(source, Image.Image):
        mask = source
    elif isinstance(source, np.ndarray):
        mask = _from_array(source.astype(np.uint8) * 255 if source.dtype == bool else source)
    else:
        if source is None:
            raise InvalidInputError("no mask given")
        mask = read_image(source)  # in its own mode: an alpha-only mask keeps its alpha
    if mask.mode in ("La", "RGBa"):  # premultiplied alpha: as the plain alpha modes
        mask = mask.convert("LA" if mask.mode == "La" else "RGBA")
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1] != (255, 255):
        gray = mask.getchannel("A")
    else:
        gray = to_rgb(mask).convert("L")
    if gray.size != size:
        (mw, mh), (w, h) = gray.size, size
        if min(mw, mh) < 1 or abs(mh * w - h * mw) > max(1.0, 0.02 * h) * mw:
            raise InvalidInputError(f"the mask is {mw}x{mh} but the image is {w}x{h}: another shape (a mask is "
                                    f"resized to the image only when their aspect ratios match)")
        gray = gray.resize(size, Image.Resampling.NEAREST)
    return gray.point(lambda v: 255 if v >= 128 else 0)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL -> [1, 3, H, W] in [-1, 1]."""
    a = torch.from_numpy(np.asarray(to_rgb(image), dtype=np.float32).copy())
    return (a.permute(2, 0, 1)[None] / 127.5) - 1.0


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """[B, 3, H, W] in [-1, 1] -> list of RGB PIL images."""
    a = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(img) for img in a]
