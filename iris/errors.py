"""Typed errors of the engine. Every message is one line a user can act on."""


class IrisError(Exception):
    """Base class of every error the engine raises on purpose."""


class InvalidInputError(IrisError, ValueError):
    """A prompt, image, mask or setting the engine cannot use."""


class ModelLoadError(IrisError):
    """A model folder, config or weights file that cannot be loaded."""


class HubOfflineError(ModelLoadError):
    """A hub id was asked for while the hub is unreachable or offline mode is on."""


class GenerationCancelled(IrisError):
    """Raised from a preview callback (or by the pipeline) to stop a run between core iterations."""
