"""Training configs: one dataclass per concern, loadable from a TOML file, every knob with a default."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import build_dataclass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

STAGES = ("vae", "class", "text", "aesthetic", "distill", "inpaint", "control", "upscale", "pixel_upscale",
          "preview")


@dataclass
class DataConfig:
    """Where images come from. source: emoji | folder | jsonl | tar | classes."""

    source: str = "emoji"
    path: str = ""  # folder, manifest file, or a folder / glob of .tar shards
    size: int = 128  # training resolution (square crops unless buckets are on)
    random_flip: bool = False  # off by default: captions may say left/right
    random_crop: bool = True
    buckets: bool = False  # aspect-ratio buckets (batches share one shape)
    min_score: float | None = None  # aesthetic stage: drop samples scored lower
    workers: int = 0  # processes that draw batches ahead of the training step (0: in the training process)
    emoji_seed: int = 0
    emoji_p_two: float | None = None  # share of two-sprite scenes (None: SceneConfig's); they teach positions


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 100
    decay: str = "constant"  # constant | cosine
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # parameter-name prefix -> learning-rate multiplier, e.g. {"generator.pos_proj" = 10.0} to let a zero-started
    # block catch up; the longest matching prefix wins
    lr_scales: dict[str, float] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """One training run of one stage."""

    stage: str = "text"
    model: str = "nano"  # a variant name or a model folder to start from
    out_dir: str = "runs/iris"
    steps: int = 1000
    batch_size: int = 16
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    time_limit: float = 0.0  # minutes; > 0 stops (and exports) then, with a cosine decay planned to end there
    log_every: int = 10
    save_every: int = 200
    sample_every: int = 500
    keep_checkpoints: int = 2
    export_dtype: str = "float16"  # float32 | float16 for the exported model
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # rectified flow
    weighting: str = "none"  # none | snr (the model card's t / (1 - t), clamped)
    t_mean: float = 0.0
    t_std: float = 1.0
    text_dropout: float = 0.1  # drop captions so the model learns the unconditional velocity (CFG)
    train_text_encoder: bool = True  # only for the built-in tiny encoder; CLIP stays frozen
    vocab_captions: int = 20000  # build the tiny encoder's compact vocabulary from this many captions
    iterations: tuple[int, int] | None = None  # range of core iterations per batch (None: model config)
    backprop_iterations: int | None = None  # truncated backprop through the last k (None: model config)
    # VAE
    kl_weight: float = 1e-6
    wavelet_weight: float = 1.0
    high_band_weight: float = 2.0
    disc_weight: float = 0.0  # > 0 turns on the patch discriminator after disc_start steps
    disc_start: int = 1000
    train_encoder: bool = True  # False: fine-tune the decoder only, keeping the latent space fixed
    # distillation from a teacher along its guided flow ODE (stage 5)
    teacher: str = ""  # model folder; empty = the starting model
    # "consistency": one teacher Euler step per sample, the student's own prediction as the target;
    # "trajectory": the teacher's whole guided solve from noise, the student maps its states to its end point
    distill_method: str = "consistency"
    distill_intervals: int = 16  # discretisation of [0, 1] for consistency distillation
    distill_guidance: float = 3.0
    distill_teacher_steps: int = 4  # trajectory: teacher solver steps; the student learns at their times
    distill_teacher_iterations: int = 0  # trajectory: teacher core iterations (0: the teacher's default)
    distill_cache: str = ""  # trajectory: solves cached by `python -m iris.train.trajectories` (comma-separated)
    # adapters
    control_kind: str = "canny"
    # pixel upscaler: this share of each batch is Gaussian-blurred first (random width), so that the upscaler
    # learns to leave soft images soft as well as to sharpen crisp ones
    blur_fraction: float = 0.0

    @classmethod
    def from_toml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        data = tomllib.loads(Path(path).read_text()) if path else {}
        for item in overrides or []:
            key, _, value = item.partition("=")
            _set_dotted(data, key.strip(), _parse_value(value.strip()))
        return _from_dict(cls, data, "config")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for part in parts[:-1]:
        data = data.setdefault(part, {})
    data[parts[-1]] = value


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    cfg = build_dataclass(cls, data, where, ValueError)
    if isinstance(cfg, TrainConfig) and cfg.stage not in STAGES:
        raise ValueError(f"unknown stage {cfg.stage!r}; expected one of {', '.join(STAGES)}")
    if isinstance(cfg, TrainConfig) and cfg.precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"unknown precision {cfg.precision!r}; expected auto, bf16 or fp32")
    return cfg
