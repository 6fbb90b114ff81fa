"""The budget grid (iris.grid): every budget once, the same seed, labels, streaming and stopping."""

from __future__ import annotations

import numpy as np
import pytest

from iris.errors import GenerationCancelled, InvalidInputError
from iris.grid import budget_grid, compose, parse_list


def test_grid_renders_every_budget_with_the_same_seed(nano_pipe):
    seen = []
    grid = budget_grid(nano_pipe, "a cat", iterations=(1, 3), steps="1,2", seed=7, guidance=2.0, width=32,
                       height=32, on_cell=lambda cell, i, n: seen.append((i, n, cell.steps, cell.iterations)))
    assert seen == [(0, 4, 1, 1), (1, 4, 1, 3), (2, 4, 2, 1), (3, 4, 2, 3)]
    for cell in grid.cells:
        assert cell.nfe == nano_pipe.cost(cell.steps, cell.iterations, 2.0).nfe and cell.seconds > 0
        same = nano_pipe.generate("a cat", steps=cell.steps, iterations=cell.iterations, seed=7, guidance=2.0,
                                  width=32, height=32).image
        assert np.array_equal(np.asarray(same), np.asarray(cell.image))  # each cell is that budget's image
    assert grid.image.size == (48 + 2 * 160, 48 + 2 * (160 + 16))
    assert grid.params["task"] == "grid" and grid.params["seed"] == 7 and len(grid.params["cells"]) == 4
    assert grid.params["grid_steps"] == [1, 2] and grid.params["grid_iterations"] == [1, 3]


def test_grid_stops_when_asked_and_checks_its_lists(nano_pipe):
    def stop_after_two(cell, index, total):
        if index == 1:
            raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled):
        budget_grid(nano_pipe, "x", iterations=(1, 2, 3), steps=(1,), width=32, height=32, on_cell=stop_after_two)
    for bad in ("", "0", "1,1", "a,b", [1, -2]):
        with pytest.raises(InvalidInputError):
            parse_list(bad, "steps")
    with pytest.raises(InvalidInputError, match="at most"):
        budget_grid(nano_pipe, "x", iterations=list(range(1, 11)), steps=list(range(1, 11)))
    with pytest.raises(InvalidInputError, match="iterations"):
        budget_grid(nano_pipe, "x", iterations=(1, 999), steps=(1,))



def test_grid_lists_read_spaces_as_separators_and_are_bounded_before_any_cell(nano_pipe, monkeypatch):
    """"1 2" was read as 12 (spaces were dropped); steps up to 1000 were taken and the grid failed at the first
    such row, after rendering the rows before it; 1000 distinct values per list made the studio draw a
    160,000 x 176,000 px empty grid before the cell count was checked; a repeat listed every value."""
    from iris.grid import parse_grid
    from iris.limits import MAX_ITERATIONS, MAX_STEPS

    assert parse_list("1 2", "iterations") == (1, 2) and parse_list(" 1, 2 ;4 ", "steps") == (1, 2, 4)
    with pytest.raises(InvalidInputError, match=f"between 1 and {MAX_STEPS}"):
        parse_list(f"1,{MAX_STEPS + 1}", "steps")
    with pytest.raises(InvalidInputError, match=f"between 1 and {MAX_ITERATIONS}"):
        parse_list(f"{MAX_ITERATIONS + 1}", "iterations")
    with pytest.raises(InvalidInputError, match="at most 64 values"):
        parse_list(",".join(map(str, range(1, 200))), "steps")
    with pytest.raises(InvalidInputError, match="at most 64 cells") as err:
        parse_grid(",".join(map(str, range(1, 65))), ",".join(map(str, range(1, 65))))
    with pytest.raises(InvalidInputError) as err:
        parse_list(",".join(["1"] * 60), "steps")
    assert str(err.value) == "steps: 1 given more than once"
    calls = []
    monkeypatch.setattr(nano_pipe, "generate", lambda *a, **k: calls.append(k))
    with pytest.raises(InvalidInputError, match="steps"):
        budget_grid(nano_pipe, "x", iterations=(1,), steps=(1, 2, 500))
    assert calls == []  # refused before the warm-up or any cell

def test_compose_leaves_missing_cells_grey(nano_pipe):
    grid = budget_grid(nano_pipe, "x", iterations=(1,), steps=(1,), width=32, height=32)
    partial = compose([grid.cells[0], None], (1, 2), (1,))
    a = np.asarray(partial)
    assert a.shape == (48 + 2 * 176, 48 + 160, 3)
    assert (a[48 + 176 + 80, 48 + 80] == (60, 60, 66)).all()
