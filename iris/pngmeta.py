"""PNG files that carry their generation parameters (a JSON text chunk), written atomically."""

from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=png_info(params or {}))
            f.flush()
            os.fsync(f.fileno())  # the rename must never expose a file whose bytes are still in flight
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; a saved image gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: setting it is process-wide, so never while other threads write files


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
    except (json.JSONDecodeError, RecursionError, TypeError):
        return None
    return data if isinstance(data, dict) else None
