"""Rectified flow: z_t = (1 - t) z_0 + t eps, target velocity v = eps - z_0.

Time is sampled logit-normal (SD3); the loss weighting is either none (SD3 practice, the default) or
the model card's t / (1 - t), clamped.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

WEIGHTINGS = ("none", "snr")


def sample_t(n: int, mean: float = 0.0, std: float = 1.0, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> torch.Tensor:
    """t ~ logit-normal(mean, std), [n] in (0, 1)."""
    u = torch.randn(n, generator=generator, device=generator.device if generator else "cpu")
    return torch.sigmoid(u * std + mean).to(device)


def interpolate(z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = (1 - t) z0 + t noise, with t [B] broadcast over [B, ...]."""
    tt = t.view(-1, *([1] * (z0.dim() - 1))).to(z0)
    return (1 - tt) * z0 + tt * noise


def loss_weight(t: torch.Tensor, weighting: str = "none", clamp: float = 5.0) -> torch.Tensor:
    """Per-sample weight [B]: 1 ("none") or t / (1 - t) clamped to [0, clamp] ("snr")."""
    if weighting == "none":
        return torch.ones_like(t)
    if weighting == "snr":
        return (t / (1 - t).clamp_min(1e-6)).clamp(0.0, clamp)
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def velocity_errors(v: torch.Tensor, z0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error [B] of a predicted velocity [B, ...] against the target eps - z0 (fp32)."""
    return (v.float() - (noise - z0).float()).pow(2).flatten(1).mean(1)


def rectified_flow_loss(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    t: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
    weighting: str = "none",
) -> torch.Tensor:
    """Mean weighted squared error of velocity_fn(z_t, t) [B, ...] against eps - z0."""
    if t is None:
        t = sample_t(z0.shape[0], device=z0.device)
    if noise is None:
        noise = torch.randn_like(z0)
    err = velocity_errors(velocity_fn(interpolate(z0, noise, t), t), z0, noise)
    return (err * loss_weight(t, weighting).to(err)).mean()
