"""IrisPipeline: the one object a user holds. Text -> image with a compute budget and live previews, and the
editing tasks, behind one facade.

    pipe = IrisPipeline.from_pretrained()            # bundled demo model
    result = pipe.generate("a red apple on a blue background", steps=4, iterations=8, seed=1)
    result.images[0].save("apple.png")
    pipe.edit("apple.png", "a green apple on a blue background", strength=0.6)

Loading, budgets, costs and the denoising loop live in `iris.core.IrisCore`; the editing tasks (and every
option they take) in `iris.editing`. This class only puts them together.
"""

from __future__ import annotations

from typing import Any

from . import editing
from .budget import Budget, BudgetCost, IrisResult, PreviewCallback, PreviewEvent, PreviewThrottle
from .core import IrisCore, count_parameters
from .errors import GenerationCancelled


class IrisPipeline(IrisCore):
    """A loaded IRIS model with every task: generate, edit, inpaint, upscale, control."""

    def edit(self, image: Any, prompt: str = "", **options: Any) -> IrisResult:
        """SDEdit towards `prompt` (strength=0.6, plus generate's budget options). See `iris.editing.edit`."""
        return editing.edit(self, image, prompt, **options)

    def inpaint(self, image: Any, mask: Any, prompt: str = "", **options: Any) -> IrisResult:
        """Regenerate the mask's white region (mask_blur, masked_only, padding). See `iris.editing.inpaint`."""
        return editing.inpaint(self, image, mask, prompt, **options)

    def upscale(self, image: Any, scale: int = 2, **options: Any) -> IrisResult:
        """Wavelet super-resolution, 2x or 4x (prompt, strength, tile, ...). See `iris.editing.upscale`."""
        return editing.upscale(self, image, scale, **options)

    def control(self, control_image: Any, prompt: str = "", **options: Any) -> IrisResult:
        """Generate following a control image (kind, weight, start, end, ...). See `iris.editing.control`."""
        return editing.control(self, control_image, prompt, **options)


__all__ = ["IrisPipeline", "IrisCore", "IrisResult", "PreviewEvent", "PreviewCallback", "PreviewThrottle", "Budget",
           "BudgetCost", "GenerationCancelled", "count_parameters"]
