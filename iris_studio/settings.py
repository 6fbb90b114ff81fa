"""Studio settings: defaults, model and theme, persisted as JSON in the user config folder.

The folder is platformdirs' `user_config_dir("iris-studio")`, or `$IRIS_STUDIO_CONFIG_DIR` when set (tests).
A damaged or half-written file never stops the app: `load_settings` falls back to defaults (field by field
where it can) and returns a one-line warning the UI shows.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iris import limits
from iris.files import atomic_path
from iris.inputs import is_text
from iris.options import EditOptions, InpaintOptions, UpscaleOptions, task_option

APP_NAME = "iris-studio"
FILE_NAME = "settings.json"
THEMES = ("soft", "default", "base", "glass", "monochrome", "ocean", "citrus", "origin")


@dataclass
class Settings:
    """Everything the studio remembers between runs."""

    model: str = "demo"  # "demo", a model folder, a hub id (owner/name) or a variant name (random weights)
    device: str = "cpu"
    theme: str = "soft"
    # task defaults
    negative_prompt: str = ""
    steps: int = 4
    iterations: int = 8
    guidance: float = 3.0
    width: int = 0  # 0: the model's native resolution
    height: int = 0
    live: bool = False
    # previews: at most one image every `preview_interval_ms`; previews may cost `preview_cost` of run time
    preview_interval_ms: int = 80
    preview_cost: float = limits.PREVIEW_FRACTION  # 0: a preview after every core iteration, whatever it costs
    # task extras
    edit_strength: float = EditOptions.strength
    upscale_strength: float = UpscaleOptions.strength
    mask_blur: int = int(InpaintOptions.mask_blur)
    padding: int = InpaintOptions.padding

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, **changes: Any) -> Settings:
        """A copy with `changes` applied (checked as on load); unknown keys raise KeyError."""
        data = self.to_dict()
        for key in changes:
            if key not in data:
                raise KeyError(key)
        data.update(changes)
        settings, problems = from_dict(data)
        if problems:
            raise ValueError("; ".join(problems))
        return settings


def config_dir() -> Path:
    env = os.environ.get("IRIS_STUDIO_CONFIG_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME))


def settings_path() -> Path:
    return config_dir() / FILE_NAME


# the task options whose defaults the settings keep: (task, option) -> settings field
OPTION_SETTINGS = {("edit", "strength"): "edit_strength", ("upscale", "strength"): "upscale_strength",
                   ("inpaint", "mask_blur"): "mask_blur", ("inpaint", "padding"): "padding"}
_LIMITS: dict[str, tuple[float, float]] = {  # the engine's limits (iris.limits); a model may allow fewer iterations
    "steps": (1, limits.MAX_STEPS),
    "iterations": (1, limits.MAX_ITERATIONS),
    "guidance": (0.0, limits.MAX_GUIDANCE),
    "width": (0, limits.MAX_SIDE),
    "height": (0, limits.MAX_SIDE),
    "preview_interval_ms": (0, 5000),
    "preview_cost": (0.0, 1.0),
    **{key: (task_option(*option).low, task_option(*option).high) for option, key in OPTION_SETTINGS.items()},
}
DEVICE_FORM = re.compile(r"(cpu|mps|cuda(:\d{1,2})?)")


def from_dict(data: Any) -> tuple[Settings, list[str]]:
    """Settings from a parsed JSON object; bad or unknown fields are dropped with a note each."""
    defaults = Settings()
    if not isinstance(data, dict):
        return defaults, [f"expected a JSON object, got {type(data).__name__}"]
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in dataclasses.fields(Settings):
        if f.name not in data:
            continue
        default, value = getattr(defaults, f.name), data[f.name]
        ok = True
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):  # an int of any length, or a whole float (never float() of a long int)
            ok = not isinstance(value, bool) and (isinstance(value, int)
                                                  or isinstance(value, float) and value.is_integer())
            value = int(value) if ok else value
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _fits_float(value)
            value = float(value) if ok else value
        elif isinstance(default, str):
            ok = is_text(value)
        if ok and f.name in _LIMITS:
            lo, hi = _LIMITS[f.name]
            ok = lo <= value <= hi
        if ok and f.name == "theme":
            ok = value in THEMES
        if ok and f.name == "device":
            ok = DEVICE_FORM.fullmatch(value) is not None
        if ok:
            values[f.name] = value
        else:
            problems.append(f"{f.name}={_shown(value)} is not valid, using {default!r}")
    return Settings(**values), problems


def _fits_float(value: int | float) -> bool:
    try:
        float(value)
    except OverflowError:  # an integer past 1e308
        return False
    return True


def _shown(value: Any, limit: int = 60) -> str:
    """`value`'s repr, shortened: a 20,000-character value in the file gives a warning line, not a page."""
    if isinstance(value, int) and abs(value) >= 10**limit:  # str() of an int over 4,300 digits raises
        return f"a number of about {value.bit_length() * 30103 // 100000 + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_settings(path: str | Path | None = None) -> tuple[Settings, str | None]:
    """(settings, warning): a missing file gives defaults silently, a damaged one defaults and a warning."""
    path = Path(path) if path is not None else settings_path()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors write one) is not damage
    except FileNotFoundError:
        return Settings(), None
    except (OSError, UnicodeDecodeError) as err:
        return Settings(), f"could not read settings file {path} ({err}); using defaults"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return Settings(), f"settings file {path} is damaged ({err.msg} at line {err.lineno}); using defaults"
    except RecursionError:
        return Settings(), f"settings file {path} is damaged (nested too deeply); using defaults"
    except ValueError:  # json.loads refuses integers over 4,300 digits with a plain ValueError
        return Settings(), f"settings file {path} is damaged (a number too long to read); using defaults"
    settings, problems = from_dict(data)
    if problems and not isinstance(data, dict):
        return settings, f"settings file {path} is damaged ({problems[0]}); using defaults"
    if problems:
        return settings, f"settings file {path}: " + "; ".join(problems)
    return settings, None


def save_settings(settings: Settings, path: str | Path | None = None) -> Path:
    """Write settings atomically (temp file + rename): a crash never leaves a half-written file."""
    path = Path(path) if path is not None else settings_path()
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(settings.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
