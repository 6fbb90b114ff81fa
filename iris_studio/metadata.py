"""PNG parameters <-> the controls of a task tab.

Every saved image carries its parameters in a PNG text chunk (`iris.pngmeta`). Dropping such a PNG on a tab
turns those parameters back into control values: `controls_from_params(params, task)` gives one value per
control of the tab (`SKIP` where the PNG says nothing about it, so the control keeps its value).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIP = object()  # "leave this control as it is"

# The controls every task tab has, in the order handlers take them.
COMMON = ("prompt", "negative_prompt", "seed", "guidance", "steps", "iterations", "sampler")
# Task-specific controls (besides images), in order.
EXTRAS: dict[str, tuple[str, ...]] = {
    "generate": ("width", "height"),
    "inpaint": ("mask_blur", "masked_only", "padding"),
    "edit": ("strength",),
    "upscale": ("scale", "strength", "tile"),
    "control": ("kind", "weight", "start", "end", "preprocess", "width", "height"),
}

_INT = {"seed", "steps", "iterations", "width", "height", "mask_blur", "padding", "scale", "tile"}
_FLOAT = {"guidance", "strength", "weight", "start", "end"}
_BOOL = {"masked_only", "preprocess"}
_TEXT = {"prompt", "negative_prompt", "sampler", "kind"}


def fields(task: str) -> tuple[str, ...]:
    """The restorable controls of a task tab, in order."""
    return COMMON + EXTRAS[task]


def coerce(name: str, value: Any) -> Any:
    """A PNG value converted to the control's type, or SKIP when it does not fit."""
    if value is None:
        return SKIP
    try:
        if name in _INT:
            if isinstance(value, bool):
                return SKIP
            number = float(value)
            return int(number) if number.is_integer() else SKIP
        if name in _FLOAT:
            if isinstance(value, bool):
                return SKIP
            return float(value)
        if name in _BOOL:
            return value if isinstance(value, bool) else SKIP
        if name in _TEXT:
            return value if isinstance(value, str) else SKIP
    except (TypeError, ValueError, OverflowError):
        return SKIP
    return value


def controls_from_params(params: dict[str, Any] | None, task: str) -> list[Any]:
    """One value per `fields(task)`: the PNG's value, or SKIP."""
    params = params or {}
    return [coerce(name, params.get(name)) for name in fields(task)]


def read_png_params(path: str | Path | None) -> dict[str, Any] | None:
    """Parameters stored in an IRIS PNG (None for other files)."""
    if not path:
        return None
    from iris.pngmeta import read_params

    try:
        return read_params(path)
    except (OSError, ValueError, SyntaxError):
        return None


def describe(params: dict[str, Any] | None) -> str:
    """A one-line summary of restored parameters."""
    if not params:
        return "This file carries no IRIS parameters."
    task = params.get("task", "generate")
    budget = f"{params.get('steps', '?')} steps × {params.get('iterations', '?')} iterations"
    seed, guidance = params.get("seed", "?"), params.get("guidance", "?")
    return f"Restored a **{task}** run: seed {seed}, {budget}, guidance {guidance}."
