"""A learned 2x upscaler in pixel space: the first pass of `upscale`, before any generative refinement.

    low [B, 3, h, w] -> bicubic 2x + residual(low) -> [B, 3, 2h, 2w]

The residual comes from a few 3x3 convolutions at the low resolution and a pixel shuffle (ESPCN-style);
its last convolution starts at zero, so an untrained upscaler is exactly bicubic. Trained with
`iris-train pixel_upscale` on (2x2 box downscale, original) pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PixelUpscaler(nn.Module):
    """[B, 3, h, w] in [-1, 1] -> [B, 3, 2h, 2w] (not clamped)."""

    def __init__(self, width: int = 48, depth: int = 5):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.tail = nn.Conv2d(width, 3 * 4, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, low: torch.Tensor) -> torch.Tensor:
        base = F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False)
        return (base + F.pixel_shuffle(self.tail(self.body(low)), 2)).contiguous()
