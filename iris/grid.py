"""The budget grid: one prompt and seed rendered across a grid of budgets, steps down and core iterations
across, each cell labelled with its budget, time and network evaluations. It is the model card's
"adaptive quality, same model" table as a picture.

    from iris.grid import budget_grid
    grid = budget_grid(pipe, "a red apple on a blue background", iterations=(1, 2, 4, 8, 16), steps=(1, 2, 4, 8))
    grid.image.save("grid.png")           # labelled; grid.cells holds every image with its timing
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .errors import InvalidInputError
from .inputs import check_int, check_seed
from .limits import MAX_ITERATIONS, MAX_STEPS

DEFAULT_ITERATIONS = (1, 2, 4, 8, 16)
DEFAULT_STEPS = (1, 2, 4, 8)
MAX_CELLS = 64


@dataclass
class GridCell:
    """One budget of the grid and what it gave."""

    steps: int
    iterations: int
    image: Image.Image
    seconds: float
    nfe: int

    @property
    def label(self) -> str:
        return f"{self.steps}×{self.iterations} · {self.seconds * 1000:.0f} ms · NFE {self.nfe}"


@dataclass
class BudgetGrid:
    """Every cell (row-major: steps down, iterations across), the labelled picture and the settings."""

    cells: list[GridCell]
    steps: tuple[int, ...]
    iterations: tuple[int, ...]
    image: Image.Image
    params: dict[str, Any] = field(default_factory=dict)


def parse_list(text: str | Sequence[int], name: str, high: int | None = None) -> tuple[int, ...]:
    """"1,2,4" or "1 2 4" (or a sequence) -> (1, 2, 4); whole numbers from 1 to `high` (the engine's limit for
    `name`: MAX_STEPS for steps, MAX_ITERATIONS for iterations), none repeated, at most MAX_CELLS of them."""
    if high is None:
        high = MAX_STEPS if name == "steps" else MAX_ITERATIONS
    parts = re.split(r"[,;\s]+", text.strip()) if isinstance(text, str) else list(text)
    parts = [p for p in parts if p != ""]
    if len(parts) > MAX_CELLS:
        raise InvalidInputError(f"{name}: at most {MAX_CELLS} values, got {len(parts)}")
    values = tuple(check_int(name, p, 1, high) for p in parts)
    if not values:
        raise InvalidInputError(f"{name}: give at least one value, e.g. 1,2,4")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise InvalidInputError(f"{name}: {', '.join(map(str, repeated))} given more than once")
    return values


def parse_grid(iterations: str | Sequence[int], steps: str | Sequence[int],
               max_iterations: int = MAX_ITERATIONS) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Both lists of a grid, checked, and at most MAX_CELLS cells in all (before any picture is drawn)."""
    its, sts = parse_list(iterations, "iterations", max_iterations), parse_list(steps, "steps", MAX_STEPS)
    if len(its) * len(sts) > MAX_CELLS:
        raise InvalidInputError(f"a grid has at most {MAX_CELLS} cells, asked for {len(its) * len(sts)}")
    return its, sts


def compose(cells: Sequence[GridCell | None], steps: Sequence[int], iterations: Sequence[int],
            cell_size: int = 160) -> Image.Image:
    """The grid picture: a header row (iterations), a header column (steps), and under each cell its label.
    Missing cells (None, still rendering) are left grey."""
    font = ImageFont.load_default()
    head, label_h = 48, 16
    w = head + len(iterations) * cell_size
    h = head + len(steps) * (cell_size + label_h)
    canvas = Image.new("RGB", (w, h), (24, 24, 28))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), "rows: sampler steps, columns: core iterations r", fill=(200, 200, 200), font=font)
    for j, r in enumerate(iterations):
        draw.text((head + j * cell_size + cell_size // 2 - 12, 28), f"r={r}", fill=(255, 255, 255), font=font)
    for i, s in enumerate(steps):
        y = head + i * (cell_size + label_h)
        draw.text((6, y + cell_size // 2 - 6), f"{s} step{'s' if s > 1 else ''}", fill=(255, 255, 255), font=font)
        for j in range(len(iterations)):
            x = head + j * cell_size
            cell = cells[i * len(iterations) + j] if i * len(iterations) + j < len(cells) else None
            if cell is None:
                draw.rectangle((x + 2, y + 2, x + cell_size - 3, y + cell_size - 3), fill=(60, 60, 66))
                continue
            image = cell.image.convert("RGB")
            scale = (cell_size - 4) / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.LANCZOS)
            canvas.paste(image, (x + (cell_size - image.width) // 2, y + (cell_size - image.height) // 2))
            draw.text((x + 4, y + cell_size), cell.label.split(" · ", 1)[1], fill=(190, 190, 190), font=font)
    return canvas


def budget_grid(
    pipe: Any,
    prompt: str,
    iterations: Sequence[int] | str = DEFAULT_ITERATIONS,
    steps: Sequence[int] | str = DEFAULT_STEPS,
    seed: int = 0,
    *,
    on_cell: Callable[[GridCell, int, int], None] | None = None,
    **generate_kwargs: Any,
) -> BudgetGrid:
    """Render `prompt` with `seed` at every (steps, iterations) pair; `on_cell(cell, index, total)` after each
    one (the studio streams the grid from it). `generate_kwargs` go to `pipe.generate` (guidance,
    negative_prompt, sampler, width, height, ...). Raise `GenerationCancelled` from `on_cell` to stop."""
    its, sts = parse_grid(iterations, steps, pipe.config.generator.max_iterations)
    seed = check_seed(seed)
    generate_kwargs.setdefault("preview_fraction", None)
    pipe.generate(prompt, steps=1, iterations=1, seed=seed, **{**generate_kwargs, "on_preview": None})  # warm-up:
    # the first call pays for lazy initialisation, which would otherwise land on the first cell's time
    cells: list[GridCell] = []
    total = len(its) * len(sts)
    params: dict[str, Any] = {}
    for s in sts:
        for r in its:
            t0 = time.perf_counter()
            result = pipe.generate(prompt, steps=s, iterations=r, seed=seed, **generate_kwargs)
            cell = GridCell(s, r, result.image, time.perf_counter() - t0, int(result.timings.get("nfe", 0)))
            cells.append(cell)
            params = params or {k: v for k, v in result.params.items() if k not in ("steps", "iterations")}
            if on_cell is not None:
                on_cell(cell, len(cells) - 1, total)
    params.update(task="grid", grid_steps=list(sts), grid_iterations=list(its),
                  cells=[{"steps": c.steps, "iterations": c.iterations, "seconds": round(c.seconds, 4), "nfe": c.nfe}
                         for c in cells])
    return BudgetGrid(cells, sts, its, compose(cells, sts, its), params)
