"""PNG files that carry their generation parameters (a JSON text chunk), written atomically."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

from .files import atomic_path

CHUNK = "iris"


def png_info(params: dict[str, Any]) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_itxt(CHUNK, json.dumps(params, ensure_ascii=False, default=str))
    text = params.get("prompt", "")
    if text:
        info.add_itxt("parameters", f"{text}\n" + ", ".join(f"{k}: {v}" for k, v in params.items() if k != "prompt"))
    return info


def save_png(image: Image.Image, path: str | Path, params: dict[str, Any] | None = None) -> Path:
    """Write `image` with `params` to `path` via a temp file and rename (no partial files)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_info(params or {}))
    return path


def read_params(source: str | Path | Image.Image) -> dict[str, Any] | None:
    """The parameters stored in a PNG by `save_png`, or None when it has none."""
    try:
        image = source if isinstance(source, Image.Image) else Image.open(source)
        raw = getattr(image, "text", {}).get(CHUNK) if hasattr(image, "text") else image.info.get(CHUNK)
        if raw is None:
            raw = image.info.get(CHUNK)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError):
        return None  # a truncated or damaged PNG: no parameters
    if not raw:
        return None
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError, TypeError):  # ValueError: bad JSON, or an integer over 4,300 digits
        return None
    return data if isinstance(data, dict) else None
