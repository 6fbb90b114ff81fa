"""Shared fixtures for the engine tests: offline hub, a tiny generator config, a perturbed nano pipeline."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub: tests never touch the network

# Hermetic: every user folder the code or its libraries may use (caches, config, data, the hub cache,
# gradio's uploads) points into one temporary folder per test session, inherited by the subprocesses
# and studio servers the tests start. No test reads or writes the user's own folders.
_SESSION_HOME = tempfile.mkdtemp(prefix="iris-tests-")
for _var, _sub in (("IRIS_CACHE_DIR", "cache/iris"), ("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"),
                   ("XDG_DATA_HOME", "data"), ("XDG_STATE_HOME", "state"), ("HF_HOME", "cache/huggingface"),
                   ("IRIS_STUDIO_CONFIG_DIR", "config/iris-studio"), ("GRADIO_TEMP_DIR", "gradio"),
                   ("MPLCONFIGDIR", "config/matplotlib")):
    os.environ[_var] = os.path.join(_SESSION_HOME, _sub)
# One compute thread per process (inherited by the studio servers the tests start): on 2 shared cores,
# two spinning thread pools slow each other down 10-30x. Set OMP_NUM_THREADS to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from torch import nn  # noqa: E402

from iris.config import GeneratorConfig  # noqa: E402

# no example database or patch files in the working tree; no per-example deadline on a shared, busy CPU
try:
    from hypothesis.configuration import set_hypothesis_home_dir

    set_hypothesis_home_dir(os.path.join(tempfile.gettempdir(), "iris-tests-hypothesis"))
except ImportError:  # pragma: no cover - older hypothesis
    pass
settings.register_profile("iris", database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("iris")


def perturb(module: nn.Module, std: float = 0.02, seed: int = 0) -> nn.Module:
    """Add small seeded Gaussian noise to every parameter of `module`, in place; returns the module.

    A freshly initialised IRIS module has zero adaLN-Zero gates and a zero final layer, so its output is
    exactly zero whatever the input; perturbing it makes inputs, labels and iteration counts matter.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p) * std)
    return module


def tiny_config(**overrides) -> GeneratorConfig:
    """A generator small enough to run dozens of times in a test (about 0.1M parameters)."""
    base = dict(latent_channels=4, dim=32, heads=2, core_layers=2, mlp_ratio=2.0, text_dim=16, afno_blocks=2,
                window=4, scan_chunk=8, max_iterations=16)
    base.update(overrides)
    return GeneratorConfig(**base)


@pytest.fixture
def tiny_gen_cfg() -> GeneratorConfig:
    return tiny_config()


@pytest.fixture(scope="session")
def nano_pipe():
    """The nano variant with random (seeded) weights and a perturbed generator, shared by the whole session.

    The preview decoder (zero-initialised, so every preview would be flat grey) is perturbed too.
    Tests must not change its weights.
    """
    from iris import IrisPipeline

    pipe = IrisPipeline.from_variant("nano", seed=0)
    perturb(pipe.generator, std=0.02, seed=0)
    perturb(pipe.previewer, std=0.1, seed=1)
    return pipe


def pytest_sessionfinish(session, exitstatus):
    import shutil

    shutil.rmtree(_SESSION_HOME, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Browser tests belong to the slow tier (before `-m` selects a tier)."""
    for item in items:
        if item.get_closest_marker("browser") is not None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)
