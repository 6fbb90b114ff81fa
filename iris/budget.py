"""The small types every task shares: a validated budget and what it costs, preview events, results.

Both the pipeline (`iris.pipeline`) and the editing tasks (`iris.editing`) build on these; neither needs the
other to describe a run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image


@dataclass
class PreviewEvent:
    """Sent after every core iteration. `image` is None when the preview throttle skipped it."""

    step: int  # 1-based sampler step
    steps: int
    iteration: int  # 1-based core iteration within the step
    iterations: int
    image: Image.Image | None
    elapsed: float  # seconds since the run started

    @property
    def progress(self) -> float:
        """Fraction of the run's core iterations done, in (0, 1]."""
        return ((self.step - 1) * self.iterations + self.iteration) / (self.steps * self.iterations)

    @property
    def label(self) -> str:
        return f"step {self.step}/{self.steps} · iteration {self.iteration}/{self.iterations}"


PreviewCallback = Callable[[PreviewEvent], None]


@dataclass
class IrisResult:
    """Images and every setting needed to reproduce them."""

    images: list[Image.Image]
    params: dict[str, Any]
    latents: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        return self.images[0]


class PreviewThrottle:
    """Allows a preview only while total preview time stays under `fraction` of elapsed time."""

    def __init__(self, fraction: float | None):
        self.fraction = fraction
        self.spent = 0.0
        self.last_cost = 0.0
        self.start = time.perf_counter()

    def allow(self) -> bool:
        if self.fraction is None:
            return True
        elapsed = time.perf_counter() - self.start
        return self.spent + self.last_cost <= self.fraction * elapsed

    def record(self, seconds: float) -> None:
        self.spent += seconds
        self.last_cost = seconds


@dataclass
class Budget:
    """Validated sampling settings of one run."""

    steps: int
    iterations: int
    guidance: float
    sampler: str
    shift: float
    exit_threshold: float | None
    regional: bool  # place the prompt's subjects where it says (`iris.layout`)
    compose: bool = False  # text to image: draw each placed subject on its own, then paste it (`iris.compose`)
    guidance_max_t: float = 1.0  # guidance only at times t <= this (`iris.sampling.guidance_at`)



@dataclass(frozen=True)
class BudgetCost:
    """What a budget costs, as the pipeline runs it."""

    calls: int  # velocity evaluations the sampler makes
    nfe: int  # network evaluations: calls x text branches (2 with classifier-free guidance)
    core_iterations: int  # passes through the shared core: nfe x iterations
    effective_depth: int  # layers per network evaluation: prelude + iterations x core + coda
