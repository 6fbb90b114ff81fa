"""One-level orthonormal Haar DWT and its inverse, written as a fixed stride-2 conv (exportable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def haar_filters(channels: int) -> torch.Tensor:
    """Conv weights [4*C, 1, 2, 2]: per input channel the LL, LH, HL, HH filters (each ÷2)."""
    ll = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    lh = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    hl = torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    hh = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    bank = torch.stack([ll, lh, hl, hh]) / 2.0  # [4, 2, 2]
    return bank.repeat(channels, 1, 1).unsqueeze(1)


def dwt(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2], channels grouped per input channel as (LL, LH, HL, HH)."""
    c = x.shape[1]
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise ValueError(f"Haar DWT needs even height and width, got {tuple(x.shape[-2:])}")
    return F.conv2d(x, haar_filters(c).to(x), stride=2, groups=c)


def idwt(y: torch.Tensor) -> torch.Tensor:
    """Inverse of `dwt`: [B, 4C, H/2, W/2] -> [B, C, H, W]."""
    c = y.shape[1] // 4
    return F.conv_transpose2d(y, haar_filters(c).to(y), stride=2, groups=c)


def ll_band(y: torch.Tensor) -> torch.Tensor:
    """The LL subbands of a DWT output: [B, 4C, h, w] -> [B, C, h, w] (= 2 × the 2×2 box mean)."""
    return y[:, 0::4]


def with_ll_band(y: torch.Tensor, ll: torch.Tensor) -> torch.Tensor:
    """A copy of DWT output `y` whose LL subbands are replaced by `ll` [B, C, h, w]."""
    out = y.clone()
    out[:, 0::4] = ll
    return out


class HaarDWT(nn.Module):
    """Module form of `dwt` (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dwt(x)


class HaarIDWT(nn.Module):
    """Module form of `idwt` (no parameters)."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return idwt(y)
