"""Every task's own options, in one place: their types, defaults, bounds and help text.

One frozen dataclass per task (`EditOptions`, `InpaintOptions`, ...), each field carrying its bounds and help in
its metadata. The task functions (`iris.editing`) take their defaults and check their values from here; the
CLI builds its arguments (`add_arguments`), the studio its controls and the PNG restore its coercion from the
same table, so a default or a limit is written once.

    >>> TASK_OPTIONS["inpaint"]
    (Option('mask_blur', float, 4.0, 0.0, 64.0), Option('masked_only', ...), Option('padding', ...))
    >>> InpaintOptions.mask_blur
    4.0

The budget (steps, iterations, guidance, sampler, seed) is common to every task, with defaults from the
model's config: `iris.budget.Budget` and `IrisCore.check_budget`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import limits

MAX_CONTROL_WEIGHT = 2.0
UPSCALE_SCALES = (2, 4)


def option(default: Any, low: float | None = None, high: float | None = None, help: str = "",
           choices: tuple[Any, ...] | None = None, step: float | None = None, label: str = "",
           ui_range: tuple[float, float] | None = None) -> Any:
    """A dataclass field with its bounds (inclusive), choices, help, and the studio's slider step, label and
    range (when narrower than the bounds)."""
    meta = {"low": low, "high": high, "help": help, "choices": choices, "step": step, "label": label,
            "ui_range": ui_range}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One task option as the CLI, the studio and the PNG restore see it."""

    name: str
    kind: type  # int, float, bool or str
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    step: float | None = None
    label: str = ""
    ui_range: tuple[float, float] | None = None

    def __repr__(self) -> str:
        return f"Option({self.name!r}, {self.kind.__name__}, {self.default!r}, {self.low!r}, {self.high!r})"

    @property
    def flag(self) -> str:
        """The CLI flag: --mask-blur, or --no-preprocess for a switch that is on by default."""
        name = self.name.replace("_", "-")
        return f"--no-{name}" if self.kind is bool and self.default else f"--{name}"


@dataclass(frozen=True)
class GenerateOptions:
    width: int | None = option(None, 0, limits.MAX_SIDE, "output width in px (default: the model's)")
    height: int | None = option(None, 0, limits.MAX_SIDE, "output height in px (default: the model's)")


@dataclass(frozen=True)
class EditOptions:
    strength: float = option(0.6, 0.0, 1.0, "0 keeps the image, 1 ignores it (noise level strength²)", step=0.05,
                             label="Strength (0 keeps the image, 1 ignores it)")


@dataclass(frozen=True)
class InpaintOptions:
    mask_blur: float = option(4.0, 0.0, limits.MAX_MASK_BLUR, "px the soft edge eases out beyond the mask",
                              step=1, label="Mask blur")
    masked_only: bool = option(False, help="work on a crop around the mask at the model's native size",
                               label="Masked area only (crop around the mask)")
    padding: int = option(32, 0, limits.MAX_PADDING, "px of context around the mask with masked-only", step=8,
                          label="Padding (masked only)")


@dataclass(frozen=True)
class UpscaleOptions:
    scale: int = option(2, 2, 4, "2x, or 4x (2x twice)", choices=UPSCALE_SCALES, label="Scale")
    strength: float = option(0.2, 0.0, 1.0, "detail the generator adds on top of the learned upscaler "
                             "(0: the upscaler alone, fastest)", step=0.05,
                             label="Generated detail (0: the upscaler alone)")
    tile: int = option(512, 0, limits.MAX_TILE, "refine in tiles of this many output px (0: never)", step=64,
                       label="Tile size", ui_range=(128, 1024))


@dataclass(frozen=True)
class ControlOptions:
    kind: str = option("canny", help="the control adapter: canny, scribble, color, ... (the model's own)",
                       label="Kind")
    weight: float = option(1.0, 0.0, MAX_CONTROL_WEIGHT, "how strongly the control steers (0: plain generate)",
                           step=0.05, label="Weight")
    start: float = option(0.0, 0.0, 1.0, "fraction of the schedule where the control starts", step=0.05,
                          label="Start")
    end: float = option(1.0, 0.0, 1.0, "fraction of the schedule where the control ends", step=0.05, label="End")
    preprocess: bool = option(True, help="turn the image into the kind's map first (--no-preprocess: the image "
                              "already is a map)", label="Preprocess (off: the image already is a map)")
    width: int | None = option(None, 0, limits.MAX_SIDE, "output width in px (default: the control image's shape)")
    height: int | None = option(None, 0, limits.MAX_SIDE, "output height in px (default: the control image's shape)")


OPTION_CLASSES: dict[str, type] = {"generate": GenerateOptions, "edit": EditOptions, "inpaint": InpaintOptions,
                                   "upscale": UpscaleOptions, "control": ControlOptions}
_KINDS = {"int": int, "float": float, "bool": bool, "str": str, "int | None": int}


def _options(cls: type) -> tuple[Option, ...]:
    return tuple(Option(f.name, _KINDS[str(f.type)], f.default, **f.metadata) for f in dataclasses.fields(cls))


TASK_OPTIONS: dict[str, tuple[Option, ...]] = {task: _options(cls) for task, cls in OPTION_CLASSES.items()}
TASKS = tuple(TASK_OPTIONS)


def task_option(task: str, name: str) -> Option:
    """The option `name` of `task` (KeyError if it has none)."""
    for opt in TASK_OPTIONS[task]:
        if opt.name == name:
            return opt
    raise KeyError(f"{task} has no option {name!r}")


def add_arguments(parser: Any, task: str) -> None:
    """Add `task`'s options to an argparse parser: --mask-blur 4, --masked-only, --no-preprocess, ..."""
    for opt in TASK_OPTIONS[task]:
        if opt.kind is bool:
            action = "store_false" if opt.default else "store_true"
            parser.add_argument(opt.flag, dest=opt.name, action=action, help=opt.help)
            continue
        bounds = f" [{opt.low:g}, {opt.high:g}]" if opt.low is not None and opt.high is not None else ""
        default = f" (default {opt.default:g})" if isinstance(opt.default, (int, float)) else ""
        parser.add_argument(opt.flag, dest=opt.name, type=opt.kind, default=opt.default, choices=opt.choices,
                            help=f"{opt.help}{bounds if opt.choices is None else ''}{default}")


def check_option(task: str, name: str, value: Any) -> Any:
    """`value` checked against `task`'s option `name`: a number in its bounds, a bool, a text or one of its
    choices; raises InvalidInputError with a one-line message otherwise."""
    from .errors import InvalidInputError
    from .inputs import check_float, check_int, check_prompt

    opt = task_option(task, name)
    if opt.kind is bool:
        if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy's too
            return bool(value)
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise InvalidInputError(f"{name} must be true or false, got {value!r}")
    if opt.kind is str:
        return check_prompt(value, name)
    lo = -float("inf") if opt.low is None else opt.low
    hi = float("inf") if opt.high is None else opt.high
    checked = check_int(name, value, int(lo), int(hi)) if opt.kind is int else check_float(name, value, lo, hi)
    if opt.choices is not None and checked not in opt.choices:
        raise InvalidInputError(f"{name} must be {' or '.join(map(str, opt.choices))}, got {checked}")
    return checked


def option_values(task: str, source: Any) -> dict[str, Any]:
    """`task`'s option values from an object holding them as attributes (an argparse Namespace)."""
    return {opt.name: getattr(source, opt.name) for opt in TASK_OPTIONS[task]}
