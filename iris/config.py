"""Dataclass configs for every IRIS part, the named variants, and their JSON round trip.

One `IrisConfig` describes a whole model folder (`config.json` beside the `*.safetensors` files).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import limits

MAX_CONFIG_BYTES = 1 << 20  # a model config.json is a few KB

SCAN_METHODS = ("cumsum", "blocked", "matrix")  # see iris.models.scan


PREVIEW_KINDS = ("linear", "tiny")


@dataclass
class VAEConfig:
    """WaveletVAE: Haar DWT (2x) then one stride-2 stage per entry of `channels`."""

    image_channels: int = 3
    latent_channels: int = 16
    channels: tuple[int, ...] = (64, 128, 256)
    blocks_per_stage: int = 1
    scale: float = 1.0  # latent = (mean - shift) * scale
    shift: float = 0.0
    # the live-preview decoder: "linear" (a least-squares latent -> RGB map, fitted after VAE training) or
    # "tiny" (a small learned conv decoder to 8x the latent grid, trained by `iris-train preview`)
    preview: str = "linear"

    @property
    def downsample(self) -> int:
        """Pixels per latent cell along one side (2 for the DWT, 2 per stage)."""
        return 2 * 2 ** len(self.channels)


@dataclass
class TextConfig:
    """Text encoder: CLIP-L/14 through open_clip, or the small built-in encoder on its tokenizer."""

    kind: str = "clip"  # "clip" | "tiny"
    dim: int = 768  # width of the per-token states handed to the generator
    max_length: int = 77
    clip_model: str = "ViT-L-14"
    clip_hub_id: str = "timm/vit_large_patch14_clip_224.openai"
    # tiny encoder only
    layers: int = 2
    heads: int = 4
    vocab: list[int] = field(default_factory=list)  # open_clip token ids kept, in order; empty = all


@dataclass
class GeneratorConfig:
    """Prelude -> Core x r -> Coda velocity predictor over a latent grid."""

    latent_channels: int = 16
    patch_size: int = 1
    dim: int = 384
    heads: int = 6
    core_layers: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 768
    num_classes: int = 0  # >0 adds a class embedding (class-conditional stage)
    # a fixed 2D sin-cos embedding of each cell's place on the grid (as a fraction of the grid, so any grid
    # size), through a learned linear map that starts at zero; lets cross-attention bind "on the left"
    position_embedding: bool = False
    # GRFM
    afno_blocks: int = 8
    softshrink: float = 0.01
    fourier_impl: str = "auto"  # "fft" | "dft" | "auto" (dft on small grids)
    recurrent_dim: int = 0  # 0 means = dim
    rglru_c: float = 8.0
    conv_width: int = 4
    scan_chunk: int = 64
    scan_method: str = "cumsum"  # "cumsum" | "blocked" (static shapes, for torch.compile) | "matrix" (ONNX)
    manhattan_exact_max_tokens: int = 1024
    # Coda
    window: int = 8
    # recurrence
    max_iterations: int = limits.MAX_ITERATIONS
    state_init_std: float = 1.0
    train_iterations: tuple[int, int] = (4, 12)  # inclusive range sampled per batch in training
    backprop_iterations: int = 2  # truncated backprop through the last k iterations

    @property
    def recurrent_width(self) -> int:
        return self.recurrent_dim or self.dim


@dataclass
class SamplerConfig:
    """Defaults the pipeline uses when a call leaves them out."""

    steps: int = 4
    iterations: int = 8
    guidance: float = 3.0
    guidance_max_t: float = 1.0  # guidance only at steps with t <= this (`iris.sampling.guidance_at`); 1: every step
    shift: float = 1.0  # timestep shift; >1 spends more steps at high noise
    sampler: str = "euler"  # "euler" | "heun" | "consistency"
    regional: bool = True  # draw each subject the prompt places ("on the left") in its region (`iris.layout`)
    compose: bool = False  # text to image: draw each placed subject alone, then paste it there (`iris.compose`)


@dataclass
class IrisConfig:
    """Everything needed to rebuild a model folder."""

    name: str = "iris"
    resolution: int = 256
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextConfig = field(default_factory=TextConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    distilled: bool = False
    adapters: list[str] = field(default_factory=list)  # e.g. ["inpaint", "control_canny", "upscale"]
    notes: str = ""
    # a sibling model folder (a plain name, e.g. "iris-nano-emoji") whose weight files stand in for the ones
    # this folder lacks: a distilled student ships its own generator and shares its teacher's VAE
    shares: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IrisConfig:
        config = build_dataclass(cls, data, "config")
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ModelLoadError naming the first setting that cannot describe a working model."""
        from .errors import ModelLoadError

        g, v, t = self.generator, self.vae, self.text
        checks = [
            (lambda: self.resolution >= 1, "resolution must be >= 1"),
            (lambda: len(v.channels) >= 1 and all(c >= 4 for c in v.channels),
             "vae.channels needs >= 1 entry, each >= 4"),
            (lambda: v.latent_channels >= 1 and v.scale > 0, "vae.latent_channels and vae.scale must be positive"),
            (lambda: v.preview in PREVIEW_KINDS, f"vae.preview must be one of {', '.join(PREVIEW_KINDS)}"),
            (lambda: min(g.dim, g.heads, g.core_layers, g.afno_blocks, g.window, g.patch_size, g.max_iterations) >= 1,
             "generator sizes (dim, heads, core_layers, afno_blocks, window, patch_size, max_iterations) must be >= 1"),
            (lambda: g.dim % g.heads == 0, f"generator.dim {g.dim} must be divisible by heads {g.heads}"),
            (lambda: g.dim % g.afno_blocks == 0,
             f"generator.dim {g.dim} must be divisible by afno_blocks {g.afno_blocks}"),
            (lambda: g.latent_channels == v.latent_channels,
             "generator.latent_channels must equal vae.latent_channels"),
            (lambda: g.text_dim == t.dim or t.kind == "clip", "generator.text_dim must equal text.dim"),
            (lambda: t.kind in ("clip", "tiny"), f"text.kind must be 'clip' or 'tiny', got {t.kind!r}"),
            (lambda: t.max_length >= 2 and t.dim >= 1 and t.heads >= 1 and t.dim % t.heads == 0,
             "text.max_length >= 2 and text.dim divisible by text.heads"),
            (lambda: g.fourier_impl in ("fft", "dft", "auto"), "generator.fourier_impl must be fft, dft or auto"),
            (lambda: g.scan_method in SCAN_METHODS, f"generator.scan_method must be one of {', '.join(SCAN_METHODS)}"),
            (lambda: self.sampler.steps >= 1 and self.sampler.iterations >= 1,
             "sampler steps and iterations must be >= 1"),
            (lambda: not self.shares or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", self.shares) is not None,
             f"shares must name a sibling model folder (letters, digits, '.', '_', '-'), got {self.shares!r}"),
        ]
        for ok, message in checks:  # in order: later checks may divide by sizes checked earlier
            if not ok():
                raise ModelLoadError(f"invalid model config: {message}")

    @classmethod
    def load(cls, path: str | Path) -> IrisConfig:
        from .errors import ModelLoadError

        try:
            if Path(path).stat().st_size > MAX_CONFIG_BYTES:
                raise ModelLoadError(f"model config {path} is over {MAX_CONFIG_BYTES // 1024} KB: not an IRIS config")
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelLoadError(f"cannot read model config {path}: {err}") from err
        except RecursionError:
            raise ModelLoadError(f"model config {path} is nested too deeply to be an IRIS config") from None
        if not isinstance(data, dict):
            raise ModelLoadError(f"model config {path} is not a JSON object")
        return cls.from_dict(data)


def build_dataclass(cls: type, data: dict[str, Any], where: str, error: type[Exception] | None = None) -> Any:
    """Build a (nested) dataclass from a dict (parsed JSON or TOML), with a clear `error` (ModelLoadError by
    default) for unknown or mistyped keys: a field's default says its type."""
    from .errors import ModelLoadError

    err = error or ModelLoadError
    if not isinstance(data, dict):
        raise err(f"{where}: expected an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise err(f"{where}: unknown keys {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for name, value in data.items():
        default = getattr(defaults, name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_dataclass(type(default), value, f"{where}.{name}", error)
        elif isinstance(default, tuple):
            if not isinstance(value, (list, tuple)):
                raise err(f"{where}.{name}: expected a list")
            kind = type(default[0]) if default else None  # a default's entries say the entries' type
            kwargs[name] = tuple(value if kind is None else
                                 [_scalar(kind(), item, f"{where}.{name}[{i}]", err) for i, item in enumerate(value)])
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise err(f"{where}.{name}: expected true/false")
            kwargs[name] = value
        elif isinstance(default, (int, float, str)):
            kwargs[name] = _scalar(default, value, f"{where}.{name}", err)
        else:  # a list (a list default), or anything for an optional field (a list read as a tuple)
            kwargs[name] = tuple(value) if default is None and isinstance(value, list) else value
    return cls(**kwargs)


def _scalar(default: Any, value: Any, where: str, err: type[Exception]) -> Any:
    """`value` as the type of `default` (an int, float or str), or `err` naming `where`. A whole number written
    as a float (192.0) is an int; 192.5 (or NaN) where an int belongs is refused, not handed to torch."""
    if isinstance(default, str):
        if not isinstance(value, str):
            raise err(f"{where}: expected a string, got {_shown(value)}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise err(f"{where}: expected a number, got {_shown(value)}")
    if isinstance(default, float):
        try:
            return float(value)
        except OverflowError:  # an integer of 400 digits
            raise err(f"{where}: {_shown(value)} is too large") from None
    if isinstance(value, float):
        if not value.is_integer():
            raise err(f"{where}: expected a whole number, got {_shown(value)}")
        return int(value)
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def _variant(name: str, resolution: int, dim: int, heads: int, vae: tuple[int, ...], **gen: Any) -> IrisConfig:
    return IrisConfig(
        name=f"iris-{name}",
        resolution=resolution,
        vae=VAEConfig(channels=vae),
        text=TextConfig(),
        generator=GeneratorConfig(dim=dim, heads=heads, **gen),
    )


def nano_config() -> IrisConfig:
    """Demo-sized IRIS (a few M parameters, 128 px) with the small built-in text encoder."""
    return IrisConfig(
        name="iris-nano",
        resolution=128,
        vae=VAEConfig(channels=(48, 96, 192)),
        text=TextConfig(kind="tiny", dim=256, max_length=32, layers=2, heads=4),
        generator=GeneratorConfig(
            dim=192, heads=4, text_dim=256, afno_blocks=4, window=8, train_iterations=(2, 8)
        ),
        sampler=SamplerConfig(steps=4, iterations=8, guidance=3.0, shift=1.0),
    )


VARIANTS: dict[str, Any] = {
    "nano": nano_config,
    "tiny": lambda: _variant("tiny", 256, 320, 5, (64, 128, 256)),
    "small": lambda: _variant("small", 256, 512, 8, (64, 128, 256)),
    "base": lambda: _variant("base", 512, 896, 14, (96, 192, 384)),
}


def variant_config(name: str) -> IrisConfig:
    """The config of a named variant: nano, tiny, small or base."""
    from .errors import InvalidInputError

    key = name.lower().removeprefix("iris-")
    if key not in VARIANTS:
        raise InvalidInputError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]()
