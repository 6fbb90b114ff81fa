"""GRFM: the Gated Recurrent Fourier Mixer, the token mixer of the IRIS core.

Three pathways over an image-token grid x [B, h, w, D], merged by a learned gate:
  Fourier (AFNO2D)     global, O(N log N): rfft2 -> block-diagonal complex MLP -> softshrink -> irfft2
  Recurrent (RG-LRU)   O(N): Griffin's recurrent block, bidirectional, row- or column-major scan order
  Spatial (Manhattan)  RMT attention with a per-head decay gamma^(|drow| + |dcol|) inside the softmax
  out = W_o(g * x_f + (1 - g) * x_r + alpha * x_s),  g = sigmoid(W_g x)
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GeneratorConfig
from .scan import chunked_linear_scan

# ---------------------------------------------------------------------------------------------- Fourier


@lru_cache(maxsize=64)
def _dft_mats(h: int, w: int, device: str) -> tuple[torch.Tensor, ...]:
    """Orthonormal DFT matrices for rfft2/irfft2 as matmuls (cached per grid size and device)."""
    with torch.inference_mode(False):  # cached tensors must also serve autograd later
        return _make_dft_mats(h, w, device)


def _make_dft_mats(h: int, w: int, device: str) -> tuple[torch.Tensor, ...]:
    wf = w // 2 + 1
    n = torch.arange(w, dtype=torch.float64)
    k = torch.arange(wf, dtype=torch.float64)
    ang_w = 2 * math.pi * n[:, None] * k[None, :] / w  # [w, wf]
    cw, sw = torch.cos(ang_w) / math.sqrt(w), -torch.sin(ang_w) / math.sqrt(w)
    m = torch.arange(h, dtype=torch.float64)
    ang_h = 2 * math.pi * m[:, None] * m[None, :] / h  # [h, h]
    ch, sh = torch.cos(ang_h) / math.sqrt(h), -torch.sin(ang_h) / math.sqrt(h)
    # inverse along w (Hermitian): weights 1 for DC and Nyquist, 2 otherwise
    mult = torch.full((wf,), 2.0, dtype=torch.float64)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    icw = (mult[:, None] * torch.cos(ang_w.T)) / math.sqrt(w)  # [wf, w]
    isw = (-mult[:, None] * torch.sin(ang_w.T)) / math.sqrt(w)
    return tuple(t.float().to(device) for t in (cw, sw, ch, sh, icw, isw))


def rfft2_dft(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 over axes (1, 2) of x [B, h, w, D] as matmuls -> (real, imag), each [B, h, w//2+1, D]."""
    _, h, w, _ = x.shape
    cw, sw, ch, sh, _, _ = _dft_mats(h, w, str(x.device))
    xr = torch.einsum("bhwd,wk->bhkd", x, cw)
    xi = torch.einsum("bhwd,wk->bhkd", x, sw)
    yr = torch.einsum("bhkd,hm->bmkd", xr, ch) - torch.einsum("bhkd,hm->bmkd", xi, sh)
    yi = torch.einsum("bhkd,hm->bmkd", xi, ch) + torch.einsum("bhkd,hm->bmkd", xr, sh)
    return yr, yi


def irfft2_dft(yr: torch.Tensor, yi: torch.Tensor, w: int) -> torch.Tensor:
    """Inverse of `rfft2_dft`: (real, imag) [B, h, w//2+1, D] -> [B, h, w, D]."""
    h = yr.shape[1]
    _, _, ch, sh, icw, isw = _dft_mats(h, w, str(yr.device))
    # inverse along h is the conjugate transform: cos, +sin
    xr = torch.einsum("bmkd,mh->bhkd", yr, ch) + torch.einsum("bmkd,mh->bhkd", yi, sh)
    xi = torch.einsum("bmkd,mh->bhkd", yi, ch) - torch.einsum("bmkd,mh->bhkd", yr, sh)
    return torch.einsum("bhkd,kw->bhwd", xr, icw) + torch.einsum("bhkd,kw->bhwd", xi, isw)


class AFNO2D(nn.Module):
    """Adaptive Fourier neural operator mixing, [B, h, w, D] -> [B, h, w, D].

    impl: "fft" (torch.fft), "dft" (matmuls with cached matrices; exports to ONNX) or "auto"
    (dft on grids up to 16x16, where it is faster).
    """

    def __init__(self, dim: int, blocks: int = 8, softshrink: float = 0.01, impl: str = "auto"):
        super().__init__()
        if dim % blocks:
            raise ValueError(f"AFNO dim {dim} must be divisible by blocks {blocks}")
        self.blocks, self.bs, self.lam, self.impl = blocks, dim // blocks, softshrink, impl
        scale = 0.02
        self.w1 = nn.Parameter(scale * torch.randn(2, blocks, self.bs, self.bs))
        self.b1 = nn.Parameter(scale * torch.randn(2, blocks, self.bs))
        self.w2 = nn.Parameter(scale * torch.randn(2, blocks, self.bs, self.bs))
        self.b2 = nn.Parameter(scale * torch.randn(2, blocks, self.bs))

    def _use_dft(self, h: int, w: int) -> bool:
        return self.impl == "dft" or (self.impl == "auto" and h * w <= 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        dtype = x.dtype
        x = x.float()
        if self._use_dft(h, w):
            xr, xi = rfft2_dft(x)
        else:
            xf = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
            xr, xi = xf.real, xf.imag
        shape = xr.shape
        xr = xr.reshape(*shape[:3], self.blocks, self.bs)
        xi = xi.reshape(*shape[:3], self.blocks, self.bs)
        w1, b1, w2, b2 = self.w1.float(), self.b1.float(), self.w2.float(), self.b2.float()
        mul = lambda a, m: torch.einsum("...bi,bio->...bo", a, m)
        o1r = F.relu(mul(xr, w1[0]) - mul(xi, w1[1]) + b1[0])
        o1i = F.relu(mul(xi, w1[0]) + mul(xr, w1[1]) + b1[1])
        o2r = mul(o1r, w2[0]) - mul(o1i, w2[1]) + b2[0]
        o2i = mul(o1i, w2[0]) + mul(o1r, w2[1]) + b2[1]
        o2r = F.softshrink(o2r, self.lam).reshape(shape)
        o2i = F.softshrink(o2i, self.lam).reshape(shape)
        if self._use_dft(h, w):
            y = irfft2_dft(o2r, o2i, w)
        else:
            y = torch.fft.irfft2(torch.complex(o2r, o2i), s=(h, w), dim=(1, 2), norm="ortho")
        return y.to(dtype)


# -------------------------------------------------------------------------------------------- Recurrent


class RGLRU(nn.Module):
    """Real-Gated Linear Recurrent Unit over sequences [B, N, D] (Griffin), chunked parallel scan.

    log a_t = -c * sigmoid(W_a x_t) * softplus(-Lambda);  h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)
    """

    def __init__(self, dim: int, c: float = 8.0, chunk: int = 64, method: str = "cumsum"):
        super().__init__()
        self.c, self.chunk, self.method = c, chunk, method
        self.gates = nn.Linear(dim, 2 * dim)  # recurrence gate and input gate, fused
        # a^c uniform in [0.9, 0.999] at init: sigmoid(Lambda) = u^(1/c)
        u = torch.empty(dim).uniform_(0.9, 0.999) ** (1.0 / c)
        self.a_param = nn.Parameter(torch.log(u) - torch.log1p(-u))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_a, gate_x = torch.sigmoid(self.gates(x)).chunk(2, dim=-1)
        log_a = -self.c * gate_a.float() * F.softplus(-self.a_param.float())
        mult = torch.sqrt((1 - torch.exp(2 * log_a)).clamp_min(1e-12))
        return chunked_linear_scan(log_a, mult * (gate_x * x).float(), self.chunk, method=self.method).to(x.dtype)


class RecurrentBlock(nn.Module):
    """Griffin recurrent block on a grid, bidirectional: [B, h, w, D] -> [B, h, w, D].

    GeLU(W_y x) * RG-LRU(conv1d(W_x x)) -> W_o. The scan runs raster row-major, or column-major when
    `column_major`, in both directions (shared weights), and the two directions are averaged.
    """

    def __init__(self, dim: int, width: int, conv_width: int = 4, c: float = 8.0, chunk: int = 64,
                 column_major: bool = False, method: str = "cumsum"):
        super().__init__()
        self.column_major = column_major
        self.in_proj = nn.Linear(dim, 2 * width)
        self.conv = nn.Conv1d(width, width, conv_width, groups=width, padding=conv_width - 1)
        self.lru = RGLRU(width, c, chunk, method)
        self.out_proj = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        if self.column_major:
            x = x.transpose(1, 2)
        seq = x.reshape(b, h * w, -1)
        y, r = self.in_proj(seq).chunk(2, dim=-1)
        n = r.shape[1]
        r = torch.cat([r, r.flip(1)], dim=0)  # forward and reversed scans as one batch
        r = self.conv(r.transpose(1, 2))[..., :n].transpose(1, 2)
        r = self.lru(r)
        r = 0.5 * (r[:b] + r[b:].flip(1))
        out = self.out_proj(F.gelu(y, approximate="tanh") * r)
        out = out.view(b, *x.shape[1:3], -1)
        return out.transpose(1, 2) if self.column_major else out


# ---------------------------------------------------------------------------------------------- Spatial


def manhattan_distance(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """|drow| + |dcol| between all pairs of a raster h x w grid: [h*w, h*w]."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return ((rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()).float()


class _InferenceCache:
    """One tensor derived from a module's parameters, rebuilt when its key (sizes, parameter storage and
    version) changes.

    Only used without autograd: training always recomputes, so gradients flow as usual.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def get(self, key: tuple, build) -> torch.Tensor:
        if torch.is_grad_enabled():
            return build()
        if key != self.key or self.value is None:
            with torch.inference_mode(False), torch.no_grad():  # usable later inside or outside inference mode
                self.value = build()
            self.key = key
        return self.value


class ManhattanAttention(nn.Module):
    """RMT Manhattan self-attention on [B, h, w, D]: logits + log(gamma_h) * (|drow| + |dcol|), softmaxed.

    Exact 2D form up to `exact_max_tokens`, then the decomposed form (attend along each row with
    gamma^|dcol|, then along each column with gamma^|drow|) whose cost is O(N (h + w)).
    """

    def __init__(self, dim: int, heads: int, exact_max_tokens: int = 1024):
        super().__init__()
        self.heads, self.exact_max_tokens = heads, exact_max_tokens
        self.qkv = nn.Linear(dim, 3 * dim)
        # per-head decays spread over scales: gamma_h = 1 - 2^-(2 + 5 h / (H - 1))  (0.75 ... 0.992)
        gamma = 1 - 2.0 ** (-(2 + 5 * torch.arange(heads, dtype=torch.float32) / max(heads - 1, 1)))
        self.log_gamma_raw = nn.Parameter(torch.log(torch.expm1(-torch.log(gamma))))  # softplus^-1(-log g)
        self._bias = _InferenceCache()

    def log_gamma(self) -> torch.Tensor:
        """Per-head log(gamma) [H], always negative."""
        return -F.softplus(self.log_gamma_raw)

    def bias(self, h: int, w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Decay bias log(gamma_h) * (|drow| + |dcol|): [H, N, N]; cached between calls at inference."""
        build = lambda: self.log_gamma().to(dtype)[:, None, None] * manhattan_distance(h, w, device).to(dtype)
        key = (h, w, dtype, device, self.log_gamma_raw.data_ptr(), self.log_gamma_raw._version)
        return self._bias.get(key, build)

    def forward(self, x: torch.Tensor, exact: bool | None = None) -> torch.Tensor:
        b, h, w, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(x).view(b, h, w, 3, self.heads, hd).unbind(3)  # each [B, h, w, H, hd]
        lg = self.log_gamma().to(x.dtype)
        if exact if exact is not None else h * w <= self.exact_max_tokens:
            bias = self.bias(h, w, x.dtype, x.device)  # [H, N, N]
            flat = lambda t: t.reshape(b, h * w, self.heads, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=bias[None])
            return y.transpose(1, 2).reshape(b, h, w, d)
        # decomposed: rows first (decay over columns), then columns (decay over rows)
        dist_w = (torch.arange(w, device=x.device)[:, None] - torch.arange(w, device=x.device)).abs()
        dist_h = (torch.arange(h, device=x.device)[:, None] - torch.arange(h, device=x.device)).abs()
        rows = lambda t: t.permute(0, 1, 3, 2, 4)  # [B, h, H, w, hd]
        y = F.scaled_dot_product_attention(
            rows(q), rows(k), rows(v), attn_mask=(lg[:, None, None] * dist_w.to(x.dtype))
        )  # [B, h, H, w, hd]
        cols = lambda t: t.permute(0, 2, 3, 1, 4)  # [B, w, H, h, hd]
        y = y.permute(0, 1, 3, 2, 4)  # [B, h, w, H, hd]
        y = F.scaled_dot_product_attention(
            cols(q), cols(k), cols(y), attn_mask=(lg[:, None, None] * dist_h.to(x.dtype))
        )  # [B, w, H, h, hd]
        return y.permute(0, 3, 1, 2, 4).reshape(b, h, w, d)


# ------------------------------------------------------------------------------------------------ Merge


class GRFM(nn.Module):
    """Gated Recurrent Fourier Mixer, [B, h, w, D] -> [B, h, w, D]."""

    def __init__(self, cfg: GeneratorConfig, column_major: bool = False):
        super().__init__()
        d = cfg.dim
        self.fourier = AFNO2D(d, cfg.afno_blocks, cfg.softshrink, cfg.fourier_impl)
        self.recurrent = RecurrentBlock(d, cfg.recurrent_width, cfg.conv_width, cfg.rglru_c, cfg.scan_chunk,
                                        column_major, cfg.scan_method)
        self.spatial = ManhattanAttention(d, cfg.heads, cfg.manhattan_exact_max_tokens)
        self.gate = nn.Linear(d, d)
        self.alpha = nn.Parameter(torch.full((d,), 0.5))
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(x))
        mixed = g * self.fourier(x) + (1 - g) * self.recurrent(x) + self.alpha * self.spatial(x)
        return self.out(mixed)
