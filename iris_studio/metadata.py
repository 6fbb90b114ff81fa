"""PNG parameters <-> the controls of a task tab.

Every saved image carries its parameters in a PNG text chunk (`iris.pngmeta`). Dropping such a PNG on a tab
turns those parameters back into control values: `controls_from_params(params, task)` gives one value per
control of the tab (`SKIP` where the PNG says nothing about it, so the control keeps its value).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from iris import limits
from iris.inputs import is_text
from iris.options import TASK_OPTIONS

SKIP = object()  # "leave this control as it is"

# The controls every task tab has, in the order handlers take them.
COMMON = ("prompt", "negative_prompt", "seed", "guidance", "steps", "iterations", "sampler", "regional")
# Budget settings only one task takes: text to image alone composes the subjects a prompt places.
TASK_BUDGET: dict[str, tuple[str, ...]] = {"generate": ("compose",)}
# Task-specific controls (besides images), in order: those budget settings, then the task's options (iris.options).
EXTRAS: dict[str, tuple[str, ...]] = {task: TASK_BUDGET.get(task, ()) + tuple(o.name for o in opts)
                                      for task, opts in TASK_OPTIONS.items()}

_OPTIONS = {o.name: o for opts in TASK_OPTIONS.values() for o in opts}  # a name means the same in every task
_INT = {"seed", "steps", "iterations"} | {n for n, o in _OPTIONS.items() if o.kind is int}
_FLOAT = {"guidance"} | {n for n, o in _OPTIONS.items() if o.kind is float}
_BOOL = {"regional", "compose"} | {n for n, o in _OPTIONS.items() if o.kind is bool}
_TEXT = {"prompt", "negative_prompt", "sampler"} | {n for n, o in _OPTIONS.items() if o.kind is str}
# the engine's limits: a value outside them (a seed of 1e20, NaN) is not restored
_RANGE: dict[str, tuple[float, float]] = {
    "seed": (0, limits.MAX_SEED), "steps": (1, limits.MAX_STEPS), "iterations": (1, limits.MAX_ITERATIONS),
    "guidance": (0.0, limits.MAX_GUIDANCE),
    **{n: (o.low, o.high) for n, o in _OPTIONS.items() if o.low is not None and o.high is not None},
}


def fields(task: str) -> tuple[str, ...]:
    """The restorable controls of a task tab, in order."""
    return COMMON + EXTRAS[task]


def coerce(name: str, value: Any) -> Any:
    """A PNG value converted to the control's type, or SKIP when it does not fit (or lies outside the
    engine's limits)."""
    if value is None:
        return SKIP
    try:
        if name in _INT or name in _FLOAT:
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                return SKIP
            number = value if isinstance(value, (int, float)) else _number(value)
            if isinstance(number, float) and not (math.isfinite(number) and (name in _FLOAT or number.is_integer())):
                return SKIP
            lo, hi = _RANGE.get(name, (-math.inf, math.inf))
            if not lo <= number <= hi:
                return SKIP
            return int(number) if name in _INT else float(number)
        if name in _BOOL:
            return value if isinstance(value, bool) else SKIP
        if name in _TEXT:
            return value if is_text(value) else SKIP
    except (TypeError, ValueError, OverflowError):
        return SKIP
    return value


def _number(text: str) -> int | float:
    """A numeric string: whole numbers exactly (long seeds keep every digit), else a float."""
    try:
        return int(text.strip())
    except ValueError:
        return float(text)


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
    task = task if task in EXTRAS else "generate"
    return f"Restored {'an' if task[0] in 'aeiou' else 'a'} **{task}** run: seed {seed}, {budget}, guidance {guidance}."
