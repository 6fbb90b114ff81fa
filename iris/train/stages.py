"""The training stages, each a module whose forward(batch, rng) returns (loss, logs).

    vae        1  pixel L1 + per-subband wavelet L1 (high bands weighted up) + KL (+ patch discriminator)
    class      2  class-conditional rectified flow
    text       3  text-image rectified flow, captions dropped for classifier-free guidance
    aesthetic  4  text-image fine-tune weighted by aesthetic score (or filtered by data.min_score)
    distill    5  consistency distillation along the teacher's guided flow ODE -> 1-4 step sampler
    inpaint / control / upscale   adapters trained with the base model frozen
    pixel_upscale  the learned 2x pixel upscaler: MSE against the original from its 2x2 box downscale
    preview    the tiny live-preview decoder: L1 + MSE against the image at preview size, from its latent

Randomness comes only from the `rng` generator the trainer derives from (seed, rank, step), so a
resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .. import sampling
from ..flow import interpolate, loss_weight, sample_t, velocity_errors
from ..models.adapters import build_adapter
from ..models.generator import TextCondition
from ..models.wavelet import dwt
from ..pipeline import IrisPipeline
from .config import TrainConfig


def randn(shape: tuple[int, ...], rng: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=rng).to(like)


def randint(lo: int, hi: int, rng: torch.Generator) -> int:
    """Uniform integer in [lo, hi]."""
    return int(torch.randint(lo, hi + 1, (1,), generator=rng))


class Stage(nn.Module):
    """Holds the pipeline's modules; `trainable` lists the ones the optimiser updates."""

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__()
        self.pipe_ref = [pipe]  # plain list: keep the pipeline out of the module tree
        self.cfg = cfg

    @property
    def pipe(self) -> IrisPipeline:
        return self.pipe_ref[0]

    def trainable(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def freeze_all_but_trainable(self) -> None:
        for module in (self.pipe.generator, self.pipe.vae, self.pipe.text_encoder, self.pipe.adapters):
            module.requires_grad_(False)
        for module in self.trainable().values():
            module.requires_grad_(True)
            module.train()


# ---------------------------------------------------------------------------------------------------- VAE


class PatchDiscriminator(nn.Module):
    """PatchGAN: image [B, 3, H, W] -> real/fake logits [B, 1, H/8, W/8]."""

    def __init__(self, width: int = 64):
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for w in (width, 2 * width, 4 * width):
            layers += [nn.Conv2d(c, w, 4, stride=2, padding=1), nn.GroupNorm(8, w), nn.LeakyReLU(0.2)]
            c = w
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def wavelet_l1(recon: torch.Tensor, target: torch.Tensor, high_weight: float) -> torch.Tensor:
    """Per-subband L1 between DWTs: LL weight 1, LH/HL/HH weight `high_weight`."""
    diff = (dwt(recon) - dwt(target)).abs()  # [B, 4*3, h, w], per channel (LL, LH, HL, HH)
    weights = torch.tensor([1.0, high_weight, high_weight, high_weight], device=diff.device).repeat(3)
    return (diff.mean(dim=(0, 2, 3)) * weights).sum() / weights.sum()


class VAEStage(Stage):
    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.vae = pipe.vae
        self.disc = PatchDiscriminator() if cfg.disc_weight > 0 else None
        self.step = 0

    def trainable(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"vae": self.vae} if self.cfg.train_encoder else {"decoder": self.vae.decoder}
        if self.disc is not None:
            parts["disc"] = self.disc
        return parts

    def forward(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.cfg.train_encoder):
            mean, logvar = self.vae.moments(x)
        z = mean + randn(tuple(mean.shape), rng, mean) * (0.5 * logvar).exp()
        from ..models.wavelet import idwt

        recon = idwt(self.vae.decoder(z))
        l1 = (recon - x).abs().mean()
        wl = wavelet_l1(recon, x, self.cfg.high_band_weight)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = l1 + self.cfg.wavelet_weight * wl + self.cfg.kl_weight * kl
        logs = {"l1": l1.item(), "wavelet": wl.item(), "kl": kl.item()}
        if self.disc is not None and self.step >= self.cfg.disc_start:
            frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
            g_loss = -functional_call(self.disc, frozen, (recon,)).mean()
            d_loss = F.relu(1 - self.disc(x)).mean() + F.relu(1 + self.disc(recon.detach())).mean()
            loss = loss + self.cfg.disc_weight * g_loss + d_loss
            logs.update(g_adv=g_loss.item(), d_loss=d_loss.item())
        self.step += 1
        mse = F.mse_loss(recon.clamp(-1, 1), x)
        logs["psnr"] = (10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))).item()
        return loss, logs


# --------------------------------------------------------------------------------------------------- Flow


class FlowStage(Stage):
    """Rectified flow on VAE latents: class, text and aesthetic stages (and the adapters build on it)."""

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.generator = pipe.generator
        self.text_encoder = pipe.text_encoder
        self.train_text = cfg.train_text_encoder and pipe.config.text.kind == "tiny" and cfg.stage == "text"
        gcfg = pipe.config.generator
        self.iter_range = tuple(cfg.iterations or gcfg.train_iterations)
        self.backprop = cfg.backprop_iterations or gcfg.backprop_iterations

    def trainable(self) -> dict[str, nn.Module]:
        parts: dict[str, nn.Module] = {"generator": self.generator}
        if self.train_text:
            parts["text_encoder"] = self.text_encoder
        return parts

    @torch.no_grad()
    def latents(self, images: torch.Tensor) -> torch.Tensor:
        return self.pipe.vae.encode(images)

    def text(self, captions: list[str], rng: torch.Generator) -> TextCondition:
        drop = torch.rand(len(captions), generator=rng) < self.cfg.text_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        if self.train_text:
            return self.text_encoder.encode(captions)
        with torch.no_grad():
            return self.text_encoder.encode(captions)

    def labels(self, batch: dict[str, Any], rng: torch.Generator) -> torch.Tensor | None:
        return None

    def residual(self, batch: dict[str, Any], z0: torch.Tensor, rng: torch.Generator) -> torch.Tensor | None:
        return None

    def sample_weights(self, batch: dict[str, Any]) -> torch.Tensor | None:
        return None

    def forward(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        z0 = self.latents(batch["image"])
        b = z0.shape[0]
        t = sample_t(b, self.cfg.t_mean, self.cfg.t_std, rng).to(z0.device)
        noise = randn(tuple(z0.shape), rng, z0)
        text = self.text(batch["caption"], rng)
        r = randint(*self.iter_range, rng)
        v = self.generator(
            interpolate(z0, noise, t), t, text, r, labels=self.labels(batch, rng),
            residual=self.residual(batch, z0, rng), state_generator=rng,
            backprop_iterations=min(self.backprop, r),
        )
        err = velocity_errors(v, z0, noise)
        w = loss_weight(t, self.cfg.weighting).to(err)
        extra = self.sample_weights(batch)
        if extra is not None:
            w = w * extra.to(err)
        loss = (err * w).mean()
        return loss, {"mse": err.mean().item(), "iterations": float(r)}


class ClassStage(FlowStage):
    """Class-conditional: labels in, null class for dropped samples, empty text."""

    def text(self, captions: list[str], rng: torch.Generator) -> TextCondition:
        with torch.no_grad():
            return self.text_encoder.encode([""] * len(captions))

    def labels(self, batch: dict[str, Any], rng: torch.Generator) -> torch.Tensor:
        labels = batch["label"].clone().clamp_min(0)
        drop = torch.rand(len(labels), generator=rng) < self.cfg.text_dropout
        labels[drop] = self.pipe.config.generator.num_classes  # the null class
        return labels.to(self.pipe.device)


class AestheticStage(FlowStage):
    """Text-image fine-tune with per-sample weights from aesthetic scores (normalised to mean 1)."""

    def sample_weights(self, batch: dict[str, Any]) -> torch.Tensor | None:
        s = batch["score"].clamp_min(0)
        return None if float(s.sum()) == 0 else s / s.mean()


# --------------------------------------------------------------------------------------------- Distill


class DistillStage(FlowStage):
    """Stage 5: a few-step, unguided student of a guided teacher, both x0-parametrised: f(z, t) = z - t v,
    so f(z, 0) = z holds by construction. Two methods (`distill_method`):

    consistency: consistency distillation (Song et al. 2023). The teacher takes one guided Euler step from
        t_{n+1} to t_n; the target is the student's own stop-gradient prediction at t_n (no EMA target, as
        in improved consistency training).
    trajectory: the teacher solves its guided ODE from noise in `distill_teacher_steps` Euler steps; the
        student learns to map the state at each of those times straight to the solve's end point. The
        consistency sampler at 1, 2 or 4 steps visits exactly those times (for 4 teacher steps).
    """

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig, teacher: IrisPipeline | None = None):
        super().__init__(pipe, cfg)
        if cfg.distill_method not in ("consistency", "trajectory"):
            raise ValueError(f"distill_method must be consistency or trajectory, got {cfg.distill_method!r}")
        self.teacher = copy.deepcopy((teacher or pipe).generator).requires_grad_(False).eval()
        self.teacher_iterations = cfg.distill_teacher_iterations or (teacher or pipe).config.sampler.iterations
        self.teacher_guidance_max_t = (teacher or pipe).config.sampler.guidance_max_t  # its guidance interval
        self.cache = None
        if cfg.distill_cache:
            from .trajectories import load

            self.cache = load(cfg.distill_cache)

    def f(self, gen: nn.Module, z: torch.Tensor, t: torch.Tensor, text: TextCondition, r: int,
          rng: torch.Generator, k: int | None) -> torch.Tensor:
        v = gen(z, t, text, r, state_generator=rng, backprop_iterations=k)
        return z - t.view(-1, 1, 1, 1) * v

    @torch.no_grad()
    def guided_velocity(self, z: torch.Tensor, t: torch.Tensor, text: TextCondition, null: TextCondition,
                        rng: torch.Generator) -> torch.Tensor:
        """The teacher's classifier-free-guided velocity (`trajectories.guided_velocity`)."""
        from .trajectories import guided_velocity

        return guided_velocity(self.teacher, z, t, text, null, self.teacher_iterations, self.cfg.distill_guidance, rng)

    def forward(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if self.cfg.distill_method == "trajectory":
            return self.forward_trajectory(batch, rng)
        z0 = self.latents(batch["image"])
        b, n = z0.shape[0], self.cfg.distill_intervals
        idx = torch.randint(1, n + 1, (b,), generator=rng)
        t_hi, t_lo = (idx.float() / n).to(z0.device), ((idx - 1).float() / n).to(z0.device)
        noise = randn(tuple(z0.shape), rng, z0)
        z_hi = interpolate(z0, noise, t_hi)
        with torch.no_grad():
            text = self.text_encoder.encode(batch["caption"])
            null = self.text_encoder.encode([""] * b)
            v = self.guided_velocity(z_hi, t_hi, text, null, rng)
            z_lo = z_hi + (t_lo - t_hi).view(-1, 1, 1, 1) * v
            r = randint(*self.iter_range, rng)
            target = self.f(self.generator, z_lo, t_lo, text, r, rng, None)
        pred = self.f(self.generator, z_hi, t_hi, text, r, rng, min(self.backprop, r))
        loss = (pred.float() - target.float()).pow(2).mean()
        return loss, {"cd": loss.item()}

    @torch.no_grad()
    def teacher_solve(self, captions: list[str], shape: tuple[int, ...], rng: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
        """States [B, K, C, h, w] of the teacher's guided Euler solve at its K times, and its end [B, C, h, w]."""
        from .trajectories import solve_from

        times = sampling.flow_timesteps(self.cfg.distill_teacher_steps, self.pipe.config.sampler.shift)
        z = torch.randn(shape, generator=rng).to(self.pipe.device)
        states, end = solve_from(self.teacher, self.text_encoder, z, captions, times, self.teacher_iterations,
                                 self.cfg.distill_guidance, rng, self.teacher_guidance_max_t)
        return states, end, times[:-1]

    def forward_trajectory(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        images, device = batch["image"], self.pipe.device
        b, f = images.shape[0], self.pipe.latent_factor
        if self.cache is not None:  # cached solves: the batch only sets the batch size
            pick = torch.randint(0, len(self.cache), (b,), generator=rng)
            states, end = self.cache.states[pick].to(device), self.cache.ends[pick].to(device)
            captions, times = [self.cache.captions[i] for i in pick.tolist()], self.cache.times
        else:
            shape = (b, self.pipe.config.vae.latent_channels, images.shape[-2] // f, images.shape[-1] // f)
            states, end, times = self.teacher_solve(batch["caption"], shape, rng)
            captions = batch["caption"]
        with torch.no_grad():
            text = self.text_encoder.encode(captions)
            k = torch.randint(0, len(times), (b,), generator=rng)
            z_in = states[torch.arange(b), k]
            t_in = torch.tensor(times, dtype=torch.float32)[k].to(device)
        r = randint(*self.iter_range, rng)
        pred = self.f(self.generator, z_in, t_in, text, r, rng, min(self.backprop, r))
        err = (pred.float() - end.float()).pow(2).flatten(1).mean(1)
        logs = {"traj": err.mean().item(), "iterations": float(r)}
        first = k == 0
        if bool(first.any()):
            logs["traj_from_noise"] = err[first].mean().item()
        return err.mean(), logs


# --------------------------------------------------------------------------------------------- Adapters


def random_masks(b: int, h: int, w: int, rng: torch.Generator, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Training masks [B, 1, h, w] in {0, 1}: rectangles, ellipses, or (when given) dilated sprite alphas."""
    masks = torch.zeros(b, 1, h, w)
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for i in range(b):
        kind = int(torch.randint(0, 3 if alpha is not None else 2, (1,), generator=rng))
        if kind == 2:
            a = F.interpolate(alpha[i : i + 1].float(), size=(h, w), mode="area")
            masks[i] = (F.max_pool2d(a, 5, 1, 2) > 0.1).float()[0]
            continue
        cy, cx = (torch.rand(2, generator=rng) * torch.tensor([h, w])).tolist()
        ry, rx = ((0.15 + 0.35 * torch.rand(2, generator=rng)) * torch.tensor([h, w])).tolist()
        if kind == 0:
            masks[i, 0] = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= rx)
        else:
            masks[i, 0] = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def adapter_of(pipe: IrisPipeline, name: str) -> nn.Module:
    """The pipeline's adapter `name`, built fresh (and added to it) when it has none."""
    if name not in pipe.adapters:
        pipe.adapters[name] = build_adapter(name, pipe.config).to(pipe.device)
    return pipe.adapters[name]


class AdapterStage(FlowStage):
    """Trains one adapter with the base model frozen (gradients pass through it to the adapter)."""

    name = ""

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.adapter = adapter_of(pipe, self.name)

    def trainable(self) -> dict[str, nn.Module]:
        return {"adapter": self.adapter}


class InpaintStage(AdapterStage):
    name = "inpaint"

    def residual(self, batch: dict[str, Any], z0: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        mask = random_masks(z0.shape[0], *z0.shape[-2:], rng, batch.get("alpha")).to(z0)
        return self.adapter(z0, mask)


class ControlStage(AdapterStage):
    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        self.name = f"control_{cfg.control_kind}"
        super().__init__(pipe, cfg)

    def residual(self, batch: dict[str, Any], z0: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        from ..control import preprocess_tensor

        control = preprocess_tensor(self.cfg.control_kind, batch["image"])
        return self.adapter(control.to(z0))


class UpscaleStage(AdapterStage):
    name = "upscale"

    def residual(self, batch: dict[str, Any], z0: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        low = F.avg_pool2d(batch["image"], 2)
        return self.adapter(low.to(z0))


def random_blur(x: torch.Tensor, fraction: float, rng: torch.Generator, sigmas: tuple[float, float] = (0.6, 3.0)
                ) -> torch.Tensor:
    """Gaussian-blur about `fraction` of the images [B, C, H, W], each with its own width in `sigmas` (px)."""
    from torchvision.transforms.v2.functional import gaussian_blur

    pick = torch.rand(x.shape[0], generator=rng) < fraction
    widths = sigmas[0] + (sigmas[1] - sigmas[0]) * torch.rand(x.shape[0], generator=rng)
    out = x.clone()
    for i in torch.nonzero(pick).flatten().tolist():
        sigma = float(widths[i])
        out[i] = gaussian_blur(x[i : i + 1], [2 * (int(3 * sigma) + 1) + 1] * 2, [sigma, sigma])[0]
    return out


class PixelUpscaleStage(Stage):
    """The pixel upscaler on (2x2 box downscale, original) pairs; the rest of the model is untouched."""

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        self.upscaler = adapter_of(pipe, "pixel_upscale")

    def trainable(self) -> dict[str, nn.Module]:
        return {"adapter": self.upscaler}

    def forward(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        if self.cfg.blur_fraction > 0:
            x = random_blur(x, self.cfg.blur_fraction, rng)
        low = F.avg_pool2d(x, 2)
        out = self.upscaler(low)
        loss = F.mse_loss(out, x)  # what PSNR measures; an L1 loss keeps the zero-initialised residual at zero
        with torch.no_grad():
            to_db = lambda y: (10 * torch.log10(4.0 / F.mse_loss(y.clamp(-1, 1), x).clamp_min(1e-10))).item()
            psnr = to_db(out)
            gain = psnr - to_db(F.interpolate(low, scale_factor=2, mode="bicubic", align_corners=False))
        return loss, {"psnr": psnr, "gain_over_bicubic_db": gain}


class PreviewStage(Stage):
    """The tiny preview decoder (`vae.preview = "tiny"`) on (VAE latent, image at 8x the latent grid) pairs.

    Previews decode predicted x0 latents, blurred and off the data early in a run, so the latents get
    Gaussian noise of a random strength up to 0.5 (per sample) as often as not."""

    def __init__(self, pipe: IrisPipeline, cfg: TrainConfig):
        super().__init__(pipe, cfg)
        if pipe.config.vae.preview != "tiny":
            from ..models.vae import TinyPreviewDecoder

            pipe.config.vae.preview = "tiny"
            pipe.previewer = TinyPreviewDecoder(pipe.config.vae.latent_channels).to(pipe.device)
        self.previewer = pipe.previewer

    def trainable(self) -> dict[str, nn.Module]:
        return {"previewer": self.previewer}

    def forward(self, batch: dict[str, Any], rng: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        x = batch["image"]
        with torch.no_grad():
            z = self.pipe.vae.encode(x)
            b = z.shape[0]
            strength = torch.rand(b, generator=rng).to(z) * 0.5 * (torch.rand(b, generator=rng).to(z) < 0.5)
            z = z + strength[:, None, None, None] * randn(tuple(z.shape), rng, z)
        out = self.previewer(z)
        target = F.interpolate(x, size=out.shape[-2:], mode="area")
        mse = F.mse_loss(out, target)
        loss = (out - target).abs().mean() + mse
        return loss, {"psnr": (10 * torch.log10(4.0 / mse.detach().clamp_min(1e-10))).item()}


def build_stage(cfg: TrainConfig, pipe: IrisPipeline, teacher: IrisPipeline | None = None) -> Stage:
    stages: dict[str, Any] = {
        "vae": VAEStage, "class": ClassStage, "text": FlowStage, "aesthetic": AestheticStage,
        "inpaint": InpaintStage, "control": ControlStage, "upscale": UpscaleStage,
        "pixel_upscale": PixelUpscaleStage, "preview": PreviewStage,
    }
    if cfg.stage == "distill":
        return DistillStage(pipe, cfg, teacher)
    return stages[cfg.stage](pipe, cfg)
