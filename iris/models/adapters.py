"""Adapters that condition the Prelude output, so every core iteration sees them.

Each maps a conditioning input to features [B, D, h, w] on the generator's token grid through a
zero-initialised projection: an untrained adapter changes nothing.

- `control_<kind>`: control image [B, 3, H, W] -> DWT -> strided convs -> D   (canny, scribble, color, depth, pose)
- `inpaint`: known latent and mask [B, C + 1, h, w] -> convs -> D
- `upscale`: low-resolution image [B, 3, H/2, W/2] (the LL band of the target) -> DWT -> convs -> D

Stored beside them, though it conditions nothing: `pixel_upscale`, the learned 2x upscaler in pixel space
that `upscale` starts from (see `upscaler.py`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import IrisConfig
from .upscaler import PixelUpscaler
from .wavelet import dwt

CONTROL_KINDS = ("canny", "scribble", "color", "depth", "pose")


class ImageAdapter(nn.Module):
    """Image [B, 3, H, W] -> features [B, D, H/downsample, W/downsample] (DWT, then stride-2 convs)."""

    def __init__(self, dim: int, downsample: int, width: int = 64):
        super().__init__()
        stages = int(math.log2(downsample)) - 1  # the DWT halves once
        if 2 ** (stages + 1) != downsample or stages < 0:
            raise ValueError(f"adapter downsample must be a power of two >= 2, got {downsample}")
        layers: list[nn.Module] = [nn.Conv2d(12, width, 3, padding=1), nn.SiLU()]
        for _ in range(stages):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(width, dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(dwt(image))).contiguous()  # the layout the generator expects


class InpaintAdapter(nn.Module):
    """Known latent and mask [B, C + 1, h, w] -> features [B, D, h/p, w/p] (mask 1 = to be generated)."""

    def __init__(self, latent_channels: int, dim: int, patch: int = 1, width: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(latent_channels + 1, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, patch, stride=patch), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
        )
        self.proj = nn.Conv2d(width, dim, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, known: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(torch.cat([known * (1 - mask), mask], dim=1))).contiguous()


def build_adapter(name: str, config: IrisConfig) -> nn.Module:
    """A fresh adapter by name: 'inpaint', 'upscale', 'pixel_upscale' or 'control_<kind>'."""
    d = config.generator.dim
    factor = config.vae.downsample * config.generator.patch_size
    if name == "inpaint":
        return InpaintAdapter(config.vae.latent_channels, d, config.generator.patch_size)
    if name == "upscale":
        return ImageAdapter(d, factor // 2)
    if name == "pixel_upscale":
        return PixelUpscaler()
    if name.startswith("control_") and name.removeprefix("control_"):
        return ImageAdapter(d, factor)
    raise ValueError(f"unknown adapter {name!r}; expected inpaint, upscale, pixel_upscale or control_<kind>")
