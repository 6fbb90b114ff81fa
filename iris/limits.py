"""The engine's limits, in one place: what every check enforces and every control (CLI, studio, settings)
offers. A model's own `max_iterations` bounds its core iterations on top of these."""

from __future__ import annotations

MAX_STEPS = 200  # sampler steps
MAX_ITERATIONS = 64  # core iterations per step, a model config's default max_iterations
MAX_GUIDANCE = 30.0  # classifier-free guidance scale (0: the negative prompt alone, 1: the prompt alone)
MAX_SIDE = 2048  # pixels, width or height of an output
MAX_IMAGES = 16  # images per call
MAX_BATCH = 16  # the studio's batch count: runs of consecutive seeds per click
MAX_SEED = 2**63 - 1
RANDOM_SEED_MAX = 2**32 - 1  # seeds picked at random stay short enough to read and type
MAX_PADDING = 512  # px of context around the mask in masked-only inpainting
MAX_MASK_BLUR = 64.0  # px
MAX_TILE = 8192  # px, upscale tile size (0: no tiling)
MAX_PROMPT_CHARS = 10_000
MAX_PIXELS = 40_000_000  # decoded images above this are refused (decompression bombs)
MAX_FILE_BYTES = 100 * 1024 * 1024
PREVIEW_FRACTION = 0.1  # the share of a run's time previews may take, by default
MAX_MODEL_PARAMETERS = 600_000_000  # a config implying more is refused before anything is built (IRIS-Base: ~0.3B)


def max_model_parameters() -> int:
    """The parameter limit for loading a model: MAX_MODEL_PARAMETERS, or $IRIS_MAX_PARAMETERS when set."""
    import os

    text = os.environ.get("IRIS_MAX_PARAMETERS", "").strip().replace("_", "")
    try:
        return int(float(text)) if text else MAX_MODEL_PARAMETERS
    except ValueError:
        return MAX_MODEL_PARAMETERS
