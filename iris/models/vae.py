"""WaveletVAE: Haar DWT -> conv encoder -> latent [B, C, H/f, W/f] -> conv decoder -> IDWT.

Also the preview decoder: a linear latent -> RGB map used for cheap live previews.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VAEConfig
from .wavelet import dwt, idwt


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels // 4) or 1, channels, eps=1e-6)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv residual block, [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """DWT subbands [B, 4*3, H/2, W/2] -> moments [B, 2*C, H/f, W/f]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = cfg.channels
        self.stem = nn.Conv2d(4 * cfg.image_channels, chans[0], 3, padding=1)
        layers: list[nn.Module] = []
        c_prev = chans[0]
        for c in chans:
            for _ in range(cfg.blocks_per_stage):
                layers.append(ResBlock(c_prev, c))
                c_prev = c
            layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        layers.append(ResBlock(c_prev, c_prev))
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.stem(x)))


class Decoder(nn.Module):
    """Latent [B, C, H/f, W/f] -> DWT subbands [B, 4*3, H/2, W/2]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = tuple(reversed(cfg.channels))
        self.stem = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(chans[0], chans[0])]
        c_prev = chans[0]
        for c in chans:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_prev, c, 3, padding=1)]
            for _ in range(cfg.blocks_per_stage):
                layers.append(ResBlock(c, c))
            c_prev = c
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, 4 * cfg.image_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.stem(z)))


class WaveletVAE(nn.Module):
    """Images in [-1, 1] `[B, 3, H, W]` <-> scaled latents `[B, C, H/f, W/f]` (f = cfg.downsample)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled posterior mean and log-variance, each [B, C, H/f, W/f]."""
        mean, logvar = self.encoder(dwt(images)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Scaled latent of `images` [B, 3, H, W]; the posterior mean unless a generator asks for a sample."""
        mean, logvar = self.moments(images)
        if generator is not None:
            noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean)
            mean = mean + noise * (0.5 * logvar).exp()
        return ((mean - self.config.shift) * self.config.scale).contiguous()  # whatever the weights' layout

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latent [B, C, h, w] -> image [B, 3, h*f, w*f] (not clamped)."""
        z = latents / self.config.scale + self.config.shift
        return idwt(self.decoder(z)).contiguous()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, posterior mean, log-variance), all unscaled."""
        mean, logvar = self.moments(images)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return idwt(self.decoder(z)), mean, logvar


class PreviewDecoder(nn.Module):
    """Cheap latent -> RGB for live previews: a linear map from each latent cell to a 4x4 RGB patch.

    [B, C, h, w] -> [B, 3, h*f, w*f]; fitted by least squares against the real decoder (see `fit`).
    """

    def __init__(self, latent_channels: int, downsample: int, patch: int = 4):
        super().__init__()
        self.patch = min(patch, downsample)
        self.upscale = downsample // self.patch
        self.proj = nn.Conv2d(latent_channels, 3 * self.patch**2, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = F.pixel_shuffle(self.proj(latents), self.patch)
        if self.upscale > 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return x

    @torch.no_grad()
    def fit(self, latents: torch.Tensor, images: torch.Tensor) -> float:
        """Least-squares fit to (latents [N, C, h, w], images [N, 3, H, W]); returns the fit's RMSE."""
        p = self.patch
        target = F.interpolate(images, size=(latents.shape[-2] * p, latents.shape[-1] * p), mode="area")
        target = F.pixel_unshuffle(target, p)  # [N, 3*p*p, h, w]
        x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).double()
        y = target.permute(0, 2, 3, 1).reshape(-1, target.shape[1]).double()
        x1 = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        sol = torch.linalg.lstsq(x1, y).solution  # [C+1, 3*p*p]
        self.proj.weight.copy_(sol[:-1].T.reshape_as(self.proj.weight).float())
        self.proj.bias.copy_(sol[-1].float())
        return float((x1 @ sol - y).pow(2).mean().sqrt())


class TinyPreviewDecoder(nn.Module):
    """Learned latent -> RGB preview in the spirit of TAESD: two 3x3 convs on the latent grid, then three
    (nearest 2x upsample, 3x3 conv) stages narrowing 64 -> 48 -> 32 -> 16 channels, then RGB.

    [B, C, h, w] -> [B, 3, 8h, 8w] in [-1, 1] (64 px for an 8 x 8 latent); about 0.1 GFLOP per 64 px image.
    Trained on (latent, image) pairs by `iris-train preview`.
    """

    widths = (64, 48, 32, 16)

    def __init__(self, latent_channels: int):
        super().__init__()
        w = self.widths
        layers: list[nn.Module] = [nn.Conv2d(latent_channels, w[0], 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(w[0], w[0], 3, padding=1), nn.ReLU()]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(w[-1], 3, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(latents))


def build_previewer(config: VAEConfig) -> nn.Module:
    """The live-preview decoder `config.preview` names."""
    if config.preview == "tiny":
        return TinyPreviewDecoder(config.latent_channels)
    return PreviewDecoder(config.latent_channels, config.downsample)
