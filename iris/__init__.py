"""IRIS: a small recurrent-depth image generator (Prelude -> Core x r -> Coda) with a wavelet latent space.

Public API:
    IrisPipeline        from_pretrained / from_variant / generate (and the editing tasks)
    IrisResult          images + params
    PreviewEvent        sent after every core iteration
    BudgetCost          IrisPipeline.cost(): network evaluations, core passes, effective depth of a budget
    SAMPLERS            the sampler names
    VARIANTS            nano, tiny, small, base
    errors              IrisError, InvalidInputError, ModelLoadError, HubOfflineError, GenerationCancelled
"""

from .config import VARIANTS, IrisConfig, variant_config
from .errors import GenerationCancelled, HubOfflineError, InvalidInputError, IrisError, ModelLoadError
from .pipeline import BudgetCost, IrisPipeline, IrisResult, PreviewEvent
from .sampling import SAMPLERS

__version__ = "0.1.0"

__all__ = [
    "IrisPipeline", "IrisResult", "PreviewEvent", "BudgetCost", "SAMPLERS", "IrisConfig", "VARIANTS", "variant_config",
    "IrisError", "InvalidInputError", "ModelLoadError", "HubOfflineError", "GenerationCancelled",
]
