"""The IRIS generator: Prelude -> Core x r (shared weights) -> Coda, predicting rectified-flow velocity.

    z [B, C, h, w] --patch embed--> Prelude (2 conv blocks) --> e
    s_0 ~ N(0, std^2) from a seeded generator
    for i in 1..r:  s_i = RMSNorm(Core(W_u [s_{i-1}, e], c_i)),   c_i = c + emb(i)
    v = Coda([s_r, e], c)                                          (long skip, 2 windowed attention blocks)

With `position_embedding`, e also gets `W_pos sincos(cell centre / grid side)` after the patch embedding.

`c = MLP(sinusoid(t)) + proj(pooled text)` drives adaLN everywhere; adaLN-single in the core shares one
modulation projection per iteration across its layers, each layer adding its own offsets, and every
residual branch is gated by an adaLN-Zero gate that starts at zero.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GeneratorConfig
from . import native
from .grfm import GRFM
from .layers import MLP, CrossAttention, RMSNorm, ScaleShiftTable, TimestepEmbedder, add_gated, modulate


@lru_cache(maxsize=16)
def grid_sincos(h: int, w: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """A fixed 2D sin-cos embedding [h, w, dim] of each cell's centre as a fraction of the grid side (cached
    per grid; do not modify the returned tensor).

    The first half of the channels encodes the row, the second the column, each as sin and cos of
    dim // 4 frequencies from 1/2 to 16 cycles per side; unused channels (dim not divisible by 4) are zero.
    """
    q = dim // 4
    freqs = 0.5 * 32.0 ** (torch.arange(q, device=device, dtype=torch.float32) / max(q - 1, 1))

    def axis(n: int) -> torch.Tensor:  # [n, 2q]
        angle = 2 * torch.pi * ((torch.arange(n, device=device, dtype=torch.float32) + 0.5) / n)[:, None] * freqs
        return torch.cat([angle.sin(), angle.cos()], dim=-1)

    rows, cols = axis(h)[:, None, :].expand(h, w, 2 * q), axis(w)[None, :, :].expand(h, w, 2 * q)
    return F.pad(torch.cat([rows, cols], dim=-1), (0, dim - 4 * q))


@dataclass
class TextCondition:
    """Text conditioning: per-token states [B, L, Dt] with their validity mask [B, L] (True = real token)."""

    tokens: torch.Tensor
    mask: torch.Tensor | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # cross-attention keys/values
    # where the prompt places its subjects (`iris.layout`): which reading of the prompt each token belongs to,
    # [B, L] long (0: the prompt as written, k: placement k's variant), and placement k's region box in
    # row k - 1 of [B, K, 4] (x0, y0, x1, y1 fractions)
    regions: tuple[torch.Tensor, torch.Tensor] | None = None

    def attention_mask(self, h: int, w: int) -> torch.Tensor | None:
        """The cross-attention mask of an h x w image grid: [B, 1, 1, L] from the padding mask alone, or
        [B, 1, h*w, L] when subjects are placed (each image token hears its own region's reading)."""
        if self.regions is None:
            return None if self.mask is None else self.mask[:, None, None, :]
        if torch.compiler.is_compiling():  # compiled code builds it in its graph (a dict would re-guard it)
            return self._region_mask(h, w)
        key = ("regions", h, w)
        if key not in self.cache:
            self.cache[key] = self._region_mask(h, w)
        return self.cache[key]

    def _region_mask(self, h: int, w: int) -> torch.Tensor:
        """[B, 1, h*w, L]: each image token may hear its own region's reading (and no padding)."""
        from ..layout import region_attention_mask

        allowed = region_attention_mask(*self.regions, h, w).to(self.tokens.device)
        return allowed if self.mask is None else allowed & self.mask[:, None, None, :]

    @staticmethod
    def cat(parts: list[TextCondition]) -> TextCondition:
        """The conditions of `parts` stacked along the batch; shorter ones are padded with masked tokens."""
        n = max(p.tokens.shape[1] for p in parts)
        if any(p.tokens.shape[1] != n for p in parts) and any(p.mask is None for p in parts):
            raise ValueError("text conditions of different lengths need padding masks")
        tokens, masks, labels, boxes = [], [], [], []
        k = max((p.regions[1].shape[1] for p in parts if p.regions is not None), default=0)
        for p in parts:
            b, length, d = p.tokens.shape
            pad = n - length
            tokens.append(torch.cat([p.tokens, p.tokens.new_zeros(b, pad, d)], 1) if pad else p.tokens)
            if p.mask is not None:
                masks.append(torch.cat([p.mask, p.mask.new_zeros(b, pad)], 1) if pad else p.mask)
            if k:
                lab, box = p.regions if p.regions is not None else (torch.zeros(b, length, dtype=torch.long),
                                                                     torch.zeros(b, 0, 4))
                labels.append(torch.cat([lab, lab.new_zeros(b, pad)], 1))
                boxes.append(torch.cat([box, box.new_zeros(b, k - box.shape[1], 4)], 1))
        mask = torch.cat(masks) if len(masks) == len(parts) else None
        regions = (torch.cat(labels), torch.cat(boxes)) if k else None
        return TextCondition(torch.cat(tokens), mask, regions=regions)

    def pooled(self) -> torch.Tensor:
        """Mean of the valid token states of the prompt as written, [B, Dt]."""
        mask = self.mask
        if self.regions is not None:
            own = self.regions[0] == 0
            mask = own if mask is None else mask & own
        if mask is None:
            return self.tokens.mean(1)
        m = mask.to(self.tokens.dtype)[..., None]
        return (self.tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


# A hook called after each core iteration with (iteration index from 1, state [B, h, w, D]).
IterationHook = Callable[[int, torch.Tensor], None]


class PreludeBlock(nn.Module):
    """ConvNeXt-style block on [B, h, w, D]: depthwise 7x7 conv, then an adaLN-modulated MLP."""

    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = RMSNorm(dim, affine=False)
        self.mlp = MLP(dim, mlp_ratio)
        self.ada = nn.Linear(dim, 3 * dim)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.ada(F.silu(c)).chunk(3, dim=-1)
        h = self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return add_gated(x, self.mlp(modulate(self.norm(h), shift, scale)), gate)


class CoreLayer(nn.Module):
    """GRFM -> cross-attention -> FFN on [B, h, w, D], each pre-normed, modulated and gated by c_i."""

    def __init__(self, cfg: GeneratorConfig, column_major: bool):
        super().__init__()
        d = cfg.dim
        self.norm1, self.norm2, self.norm3 = (RMSNorm(d, affine=False) for _ in range(3))
        self.mixer = GRFM(cfg, column_major)
        self.cross = CrossAttention(d, cfg.text_dim, cfg.heads)
        self.ffn = MLP(d, cfg.mlp_ratio)
        self.table = ScaleShiftTable(d, 9, gate_index=(2, 5, 8), scale_index=(1, 4, 7))

    def forward(self, x: torch.Tensor, mod: torch.Tensor, text: TextCondition) -> torch.Tensor:
        # shifts, 1 + scales and gates, each [B, 1, 1, D]: modulate is addcmul(shift, x, 1 + scale), and the
        # gated residual addcmul(x, branch, gate)
        sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self.table.broadcast(mod, x.dim())
        b, h, w, d = x.shape
        x = torch.addcmul(x, self.mixer(self.norm_modulate(self.norm1, x, sh1, sc1)), g1)
        y = self.cross(self.norm_modulate(self.norm2, x, sh2, sc2).view(b, h * w, d), text.tokens,
                       text.attention_mask(h, w), text.cache)
        x = torch.addcmul(x, y.view(b, h, w, d), g2)
        return torch.addcmul(x, self.ffn(self.norm_modulate(self.norm3, x, sh3, sc3)), g3)

    @staticmethod
    def norm_modulate(norm: RMSNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """shift + norm(x) * scale, x [B, h, w, D], shift and scale [B, 1, 1, D]: one fused kernel at inference
        on the CPU (`native.rms_modulate`), else torch ops."""
        if norm.weight is None and x.is_contiguous() and native.usable(x, shift, scale):
            return native.rms_modulate(x, shift, scale, norm.eps)
        return torch.addcmul(shift, norm(x), scale)


def window_partition(x: torch.Tensor, ws: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """[B, h, w, D] -> windows [B*nw, ws*ws, D], padding h and w up to multiples of ws."""
    b, h, w, d = x.shape
    ph, pw = (-h) % ws, (-w) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, d), (hp, wp)


def window_merge(win: torch.Tensor, b: int, hw: tuple[int, int], padded: tuple[int, int], ws: int) -> torch.Tensor:
    """Inverse of `window_partition`, cropping the padding: -> [B, h, w, D]."""
    hp, wp = padded
    d = win.shape[-1]
    x = win.view(b, hp // ws, wp // ws, ws, ws, d).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, d)
    return x[:, : hw[0], : hw[1]]


class WindowAttention(nn.Module):
    """Self-attention inside non-overlapping ws x ws windows of [B, h, w, D] (QK-normed)."""

    def __init__(self, dim: int, heads: int, window: int, shift: bool):
        super().__init__()
        self.heads, self.window, self.shift = heads, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        ws = min(self.window, max(h, w))
        offset = ws // 2 if self.shift and max(h, w) > ws else 0
        if offset:
            x = torch.roll(x, (-offset, -offset), dims=(1, 2))
        win, padded = window_partition(x, ws)
        n, t, _ = win.shape
        q, k, v = self.qkv(win).view(n, t, 3, self.heads, d // self.heads).unbind(2)
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        y = window_merge(self.out(y.transpose(1, 2).reshape(n, t, d)), b, (h, w), padded, ws)
        if offset:
            y = torch.roll(y, (offset, offset), dims=(1, 2))
        return y


class CodaBlock(nn.Module):
    """Windowed attention + MLP on [B, h, w, D], adaLN-Zero modulated by c."""

    def __init__(self, cfg: GeneratorConfig, shift: bool):
        super().__init__()
        d = cfg.dim
        self.norm1, self.norm2 = RMSNorm(d, affine=False), RMSNorm(d, affine=False)
        self.attn = WindowAttention(d, cfg.heads, cfg.window, shift)
        self.mlp = MLP(d, cfg.mlp_ratio)
        self.ada = nn.Linear(d, 6 * d)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        x = add_gated(x, self.attn(modulate(self.norm1(x), sh1, sc1)), g1)
        return add_gated(x, self.mlp(modulate(self.norm2(x), sh2, sc2)), g2)


class IrisGenerator(nn.Module):
    """Velocity predictor v(z_t, t, text) with a recurrent-depth core.

    forward(z [B, C, h, w], t [B], text, iterations) -> v [B, C, h, w].
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        self.config = cfg
        d, p, c = cfg.dim, cfg.patch_size, cfg.latent_channels
        self.patch_embed = nn.Conv2d(c, d, p, stride=p)
        # W_pos starts at zero: a model given the embedding behaves exactly as before until it learns to use it
        self.pos_proj = nn.Linear(d, d, bias=False) if cfg.position_embedding else None
        if self.pos_proj is not None:
            nn.init.zeros_(self.pos_proj.weight)
        self.t_embed = TimestepEmbedder(d)
        self.text_proj = nn.Linear(cfg.text_dim, d)
        self.class_embed = nn.Embedding(cfg.num_classes + 1, d) if cfg.num_classes else None
        self.iter_embed = nn.Embedding(cfg.max_iterations, d)
        nn.init.normal_(self.iter_embed.weight, std=0.02)
        self.prelude = nn.ModuleList([PreludeBlock(d, cfg.mlp_ratio) for _ in range(2)])
        self.inject = nn.Linear(2 * d, d)
        self.core_mod = nn.Linear(d, 9 * d)  # adaLN-single: shared by all core layers
        nn.init.zeros_(self.core_mod.weight)
        nn.init.zeros_(self.core_mod.bias)
        self.core = nn.ModuleList([CoreLayer(cfg, column_major=bool(i % 2)) for i in range(cfg.core_layers)])
        self.state_norm = RMSNorm(d)
        self.coda_in = nn.Linear(2 * d, d)
        self.coda = nn.ModuleList([CodaBlock(cfg, shift=bool(i % 2)) for i in range(2)])
        self.final_norm = RMSNorm(d, affine=False)
        self.final_ada = nn.Linear(d, 2 * d)
        self.final = nn.Linear(d, c * p * p)
        for layer in (self.final_ada, self.final):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # -- pieces, usable on their own by the pipeline (previews) and by adapters
    def condition(self, t: torch.Tensor, text: TextCondition, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Conditioning vector c [B, D] from time [B], pooled text and optional class labels [B]."""
        c = self.t_embed(t) + self.text_proj(text.pooled())
        if self.class_embed is not None and labels is not None:
            c = c + self.class_embed(labels)
        return c

    def embed(self, z: torch.Tensor, c: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Prelude: latent [B, C, h, w] -> e [B, h/p, w/p, D]; `residual` [B, D, h/p, w/p] (adapters) added."""
        x = self.patch_embed(z)
        if residual is not None:
            x = x + residual
        x = x.permute(0, 2, 3, 1)
        if self.pos_proj is not None:
            x = x + self.pos_proj(grid_sincos(x.shape[1], x.shape[2], x.shape[3], x.device).to(x.dtype))
        for block in self.prelude:
            x = block(x, c)
        return x

    def initial_state(self, e: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """s_0 [B, h, w, D]: Gaussian noise, drawn from `generator` on the CPU when one is given."""
        if generator is None:
            return torch.randn_like(e) * self.config.state_init_std
        noise = torch.randn(e.shape, generator=generator, device=generator.device, dtype=torch.float32)
        return noise.to(e) * self.config.state_init_std

    def inject_input(self, e: torch.Tensor) -> torch.Tensor:
        """The half of the injection W_u [s, e] + b that every iteration shares: W_e e + b, [B, h, w, D]."""
        return F.linear(e, self.inject.weight[:, self.config.dim :], self.inject.bias)

    def iterate(self, s: torch.Tensor, e: torch.Tensor, c: torch.Tensor, text: TextCondition, i: int,
                injected: torch.Tensor | None = None) -> torch.Tensor:
        """One core iteration (1-based index i): s_{i-1} -> s_i, all [B, h, w, D]. `injected`: the
        iteration-invariant `inject_input(e)`, computed here when not given."""
        idx = torch.full((s.shape[0],), min(i - 1, self.config.max_iterations - 1), device=s.device)
        mod = self.core_mod(F.silu(c + self.iter_embed(idx)))
        if injected is None:
            injected = self.inject_input(e)
        d = self.config.dim
        x = torch.addmm(injected.reshape(-1, d), s.reshape(-1, d), self.inject.weight[:, :d].t()).view(s.shape)
        return self.core_stack(x, mod, text)

    def core_stack(self, x: torch.Tensor, mod: torch.Tensor, text: TextCondition) -> torch.Tensor:
        """The shared core layers and the state norm on x [B, h, w, D], given this iteration's adaLN table
        `mod`: the same code at every iteration, so `torch.compile` builds it once per shape."""
        for layer in self.core:
            x = layer(x, mod, text)
        return self.state_norm(x)

    def decode(self, s: torch.Tensor, e: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Coda: state and prelude output [B, h, w, D] -> velocity [B, C, h*p, w*p]."""
        x = self.coda_in(torch.cat([s, e], dim=-1))
        for block in self.coda:
            x = block(x, c)
        shift, scale = self.final_ada(F.silu(c)).chunk(2, dim=-1)
        v = self.final(modulate(self.final_norm(x), shift, scale)).permute(0, 3, 1, 2)
        p = self.config.patch_size
        return F.pixel_shuffle(v, p) if p > 1 else v

    def forward(
        self,
        z: torch.Tensor,
        t: torch.Tensor,
        text: TextCondition,
        iterations: int,
        *,
        labels: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        state_generator: torch.Generator | None = None,
        backprop_iterations: int | None = None,
        on_iteration: IterationHook | None = None,
        exit_threshold: float | None = None,
    ) -> torch.Tensor:
        """Velocity [B, C, h, w] after `iterations` core iterations.

        backprop_iterations: keep gradients only through the last k iterations (truncated backprop).
        on_iteration(i, s_i): called after every iteration (previews, cancellation).
        exit_threshold: stop early once ||s_i - s_{i-1}|| / ||s_i|| falls below it (adaptive exit).
        """
        c = self.condition(t, text, labels)
        e = self.embed(z, c, residual)
        s = self.initial_state(e, state_generator)
        s = self.run_core(s, e, c, text, iterations, backprop_iterations=backprop_iterations,
                          on_iteration=on_iteration, exit_threshold=exit_threshold)
        return self.decode(s, e, c)

    def run_core(
        self,
        s: torch.Tensor,
        e: torch.Tensor,
        c: torch.Tensor,
        text: TextCondition,
        iterations: int,
        *,
        backprop_iterations: int | None = None,
        on_iteration: IterationHook | None = None,
        exit_threshold: float | None = None,
    ) -> torch.Tensor:
        """The recurrent-depth loop, s_0 -> s_r (all [B, h, w, D]): the one every caller runs (training through
        `forward`, and the sampling loop of every task).

        backprop_iterations: keep gradients only through the last k iterations (truncated backprop).
        on_iteration(i, s_i): called after every iteration (previews, cancellation).
        exit_threshold: stop early once ||s_i - s_{i-1}|| / ||s_i|| falls below it for every sample.
        """
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        k = iterations if backprop_iterations is None else backprop_iterations
        injected = self.inject_input(e)
        for i in range(1, iterations + 1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i > iterations - k):
                s_next = self.iterate(s, e, c, text, i, injected)
            done = False
            if exit_threshold is not None:
                change = (s_next - s).flatten(1).norm(dim=1) / s_next.flatten(1).norm(dim=1).clamp_min(1e-8)
                done = bool((change < exit_threshold).all())
            s = s_next
            if on_iteration is not None:
                on_iteration(i, s)
            if done:
                break
        return s
