"""GRFM: the Gated Recurrent Fourier Mixer, the token mixer of the IRIS core.

Three pathways over an image-token grid x [B, h, w, D], merged by a learned gate:
  Fourier (AFNO2D)     global, O(N log N): rfft2 -> block-diagonal complex MLP -> softshrink -> irfft2
  Recurrent (RG-LRU)   O(N): Griffin's recurrent block, bidirectional, row- or column-major scan order
  Spatial (Manhattan)  RMT attention with a per-head decay gamma^(|drow| + |dcol|) inside the softmax
  out = W_o(g * x_f + (1 - g) * x_r + alpha * x_s),  g = sigmoid(W_g x)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import GeneratorConfig
from . import native
from .layers import gelu_tanh
from .scan import LOG2E, chunked_linear_scan

# ---------------------------------------------------------------------------------------------- Fourier


class _InferenceCache:
    """A value derived from a module's parameters (a tensor or a tuple of them), rebuilt when its key (sizes,
    parameter storage and version) changes.

    Only used without autograd: training always recomputes, so gradients flow as usual.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: Any = None

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            return build()  # (compiled: traced into the graph, whose constants are folded once)
        if key != self.key or self.value is None:
            with torch.inference_mode(False), torch.no_grad():  # usable later inside or outside inference mode
                self.value = build()
            self.key = key
        return self.value


def _make_dft_mats(h: int, w: int) -> tuple[torch.Tensor, ...]:
    """(cw, sw [w, wf], ch, sh [h, h], icw, isw [wf, w]) in float64, wf = w // 2 + 1."""
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
    return cw, sw, ch, sh, icw, isw


@lru_cache(maxsize=64)
def _separable_mats(h: int, w: int, device: str) -> tuple[torch.Tensor, ...]:
    """`_make_dft_mats` in float32 on `device` (cached per grid size and device)."""
    with torch.inference_mode(False):  # cached tensors must also serve autograd later
        return tuple(t.float().to(device) for t in _make_dft_mats(h, w))


# The whole-grid DFT matrices hold 2 F N values each (4.5 MB at 32 x 32); above this many tokens the "dft"
# form goes one axis at a time instead.
DENSE_DFT_MAX_TOKENS = 256


@lru_cache(maxsize=64)
def _dense_dft_mats(h: int, w: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 and irfft2 over a whole h x w grid as one matrix each (cached per grid size and device):
    forward [2 F, N] maps N = h w tokens to the real then imaginary parts of F = h (w//2+1) frequencies;
    inverse [N, 2 F] maps them back."""
    cw, sw, ch, sh, icw, isw = _make_dft_mats(h, w)
    kron = lambda a, b: torch.einsum("hm,wk->mkhw", a, b).reshape(a.shape[1] * b.shape[1], -1)
    # forward: y = (ch + i sh)^T x (cw + i sw)
    fr, fi = kron(ch, cw) - kron(sh, sw), kron(ch, sw) + kron(sh, cw)
    # inverse: x = sum over (m, k) of yr (ch icw - sh isw) + yi (sh icw + ch isw), conjugate along h
    ikron = lambda a, b: torch.einsum("mh,kw->hwmk", a, b).reshape(a.shape[1] * b.shape[1], -1)
    ir, ii = ikron(ch, icw) - ikron(sh, isw), ikron(sh, icw) + ikron(ch, isw)
    with torch.inference_mode(False):
        return torch.cat([fr, fi]).float().to(device), torch.cat([ir, ii], dim=1).float().to(device)


def separable_rfft2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 of x [B, h, w, D] one axis at a time, as matmuls with [w, wf] and [h, h] matrices -> (real, imag)
    [B, h, wf, D]. Small matrices at any grid size (the ONNX export's form on large grids)."""
    _, h, w, _ = x.shape
    cw, sw, ch, sh, _, _ = _separable_mats(h, w, str(x.device))
    xr, xi = torch.einsum("bhwd,wk->bhkd", x, cw), torch.einsum("bhwd,wk->bhkd", x, sw)
    yr = torch.einsum("bhkd,hm->bmkd", xr, ch) - torch.einsum("bhkd,hm->bmkd", xi, sh)
    yi = torch.einsum("bhkd,hm->bmkd", xi, ch) + torch.einsum("bhkd,hm->bmkd", xr, sh)
    return yr, yi


def separable_irfft2(yr: torch.Tensor, yi: torch.Tensor, w: int) -> torch.Tensor:
    """Inverse of `separable_rfft2`: (real, imag) [B, h, wf, D] -> [B, h, w, D]."""
    _, _, ch, sh, icw, isw = _separable_mats(yr.shape[1], w, str(yr.device))
    xr = torch.einsum("bmkd,mh->bhkd", yr, ch) + torch.einsum("bmkd,mh->bhkd", yi, sh)
    xi = torch.einsum("bmkd,mh->bhkd", yi, ch) - torch.einsum("bmkd,mh->bhkd", yr, sh)
    return torch.einsum("bhkd,kw->bhwd", xr, icw) + torch.einsum("bhkd,kw->bhwd", xi, isw)


def _spectrum(x: torch.Tensor, use_dft: bool) -> torch.Tensor:
    """rfft2 of x [B, h, w, D] over (h, w), orthonormal -> [B, 2 (real, imag), h, w//2+1, D]."""
    b, h, w, d = x.shape
    if use_dft and h * w <= DENSE_DFT_MAX_TOKENS:
        forward, _ = _dense_dft_mats(h, w, str(x.device))
        return (forward @ x.reshape(b, h * w, d)).view(b, 2, h, w // 2 + 1, d)
    if use_dft:
        return torch.stack(separable_rfft2(x), dim=1)
    xf = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
    return torch.stack([xf.real, xf.imag], dim=1)


def _from_spectrum(spec: torch.Tensor, w: int, use_dft: bool) -> torch.Tensor:
    """Inverse of `_spectrum`: [B, 2, h, w//2+1, D] -> [B, h, w, D] (torch's irfft2 semantics)."""
    b, _, h, wf, d = spec.shape
    if use_dft and h * w <= DENSE_DFT_MAX_TOKENS:
        _, inverse = _dense_dft_mats(h, w, str(spec.device))
        return (inverse @ spec.reshape(b, 2 * h * wf, d)).view(b, h, w, d)
    if use_dft:
        return separable_irfft2(spec[:, 0], spec[:, 1], w)
    return torch.fft.irfft2(torch.complex(spec[:, 0], spec[:, 1]), s=(h, w), dim=(1, 2), norm="ortho")


def rfft2_dft(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rfft2 over axes (1, 2) of x [B, h, w, D] as one matmul -> (real, imag), each [B, h, w//2+1, D]."""
    spec = _spectrum(x, use_dft=True)
    return spec[:, 0], spec[:, 1]


def irfft2_dft(yr: torch.Tensor, yi: torch.Tensor, w: int) -> torch.Tensor:
    """Inverse of `rfft2_dft`: (real, imag) [B, h, w//2+1, D] -> [B, h, w, D]."""
    return _from_spectrum(torch.stack([yr, yi], dim=1), w, use_dft=True)


class AFNO2D(nn.Module):
    """Adaptive Fourier neural operator mixing, [B, h, w, D] -> [B, h, w, D].

    The spectrum's channels split into `blocks` groups; each group goes through a two-layer complex MLP
    (ReLU, then softshrink), written as real matmuls on [real | imag] features, all groups in one `bmm`.
    impl: "fft" (torch.fft), "dft" (matmuls with cached DFT matrices, whole-grid up to DENSE_DFT_MAX_TOKENS;
    exports to ONNX) or "auto" (dft up to `DFT_MAX_TOKENS` tokens, fft above: the faster one on each side,
    measured on a 2-core CPU at D = 192).
    """

    DFT_MAX_TOKENS = 225

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
        self._real = _InferenceCache()

    def _use_dft(self, h: int, w: int) -> bool:
        return self.impl == "dft" or (self.impl == "auto" and h * w <= self.DFT_MAX_TOKENS)

    def real_weights(self) -> tuple[torch.Tensor, ...]:
        """The complex block weights as real ones: W [blocks, 2 bs, 2 bs] = [[Wr, Wi], [-Wi, Wr]] and biases
        [blocks, 1, 2 bs], so that [xr | xi] @ W = [xr Wr - xi Wi | xr Wi + xi Wr]. Cached at inference."""

        def build() -> tuple[torch.Tensor, ...]:
            out = []
            for wt, bias in ((self.w1, self.b1), (self.w2, self.b2)):
                wr, wi = wt.float()
                out.append(torch.cat([torch.cat([wr, wi], -1), torch.cat([-wi, wr], -1)], 1))
                out.append(torch.cat([bias[0], bias[1]], -1).float()[:, None])
            return tuple(out)

        key = tuple((p.data_ptr(), p._version) for p in (self.w1, self.b1, self.w2, self.b2))
        return self._real.get(key, build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, d = x.shape
        use_dft = self._use_dft(h, w)
        spec = _spectrum(x.float(), use_dft)  # [B, 2, h, wf, D]
        nb, bs = self.blocks, self.bs
        rows = h * (w // 2 + 1)
        z = spec.reshape(b, 2, rows, nb, bs).permute(3, 0, 2, 1, 4).reshape(nb, b * rows, 2 * bs)
        w1, b1, w2, b2 = self.real_weights()
        z = F.relu(torch.baddbmm(b1, z, w1))
        z = F.softshrink(torch.baddbmm(b2, z, w2), self.lam)  # [blocks, B rows, 2 bs]
        spec = z.view(nb, b, rows, 2, bs).permute(1, 3, 2, 0, 4).reshape(spec.shape)
        return _from_spectrum(spec, w, use_dft).to(x.dtype)


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
        self._log_rate, self._floor = _InferenceCache(), _InferenceCache()

    def log_rate(self) -> torch.Tensor:
        """-c softplus(-Lambda) [D]: log a_t per unit of the recurrence gate; cached at inference."""
        build = lambda: -self.c * F.softplus(-self.a_param.float())
        return self._log_rate.get((self.a_param.data_ptr(), self.a_param._version), build)

    def log_a_floor(self) -> float:
        """The smallest log a_t any input can give (the gate is at most 1): min of `log_rate`; cached at inference."""
        build = lambda: float(self.log_rate().detach().min())
        return self._floor.get((self.a_param.data_ptr(), self.a_param._version), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_a, gate_x = torch.sigmoid(self.gates(x)).chunk(2, dim=-1)
        log_a = gate_a.float() * self.log_rate()
        floor = self.log_a_floor() if self.method == "cumsum" else None  # (blocked and matrix need none)
        # a^2 = exp(2 log a): as exp2 in the eager cumsum form (this CPU's exp2 kernel is about 4x faster than its
        # exp, equal within ~1e-6 relative), as exp in the exported forms (ONNX has no exp2)
        a2 = torch.exp2(log_a * (2 * LOG2E)) if self.method == "cumsum" else torch.exp(2 * log_a)
        mult = torch.sqrt((1 - a2).clamp_min(1e-12))
        return chunked_linear_scan(log_a, mult * (gate_x * x).float(), self.chunk, method=self.method,
                                   log_a_floor=floor).to(x.dtype)


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
        self._taps = _InferenceCache()

    def causal_conv(self, r: torch.Tensor) -> torch.Tensor:
        """The depthwise causal conv1d on [B, N, W] in that layout: sum_k weight[k] * r[t - K + 1 + k] + bias."""
        k, n = self.conv.kernel_size[0], r.shape[1]
        weight = self.conv.weight[:, 0]  # [W, K]
        out = torch.addcmul(self.conv.bias, r, weight[:, k - 1])
        for lag in range(1, min(k, n)):  # tap k - 1 - lag reads the token `lag` places back
            out[:, lag:].addcmul_(r[:, : n - lag], weight[:, k - 1 - lag])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.in_proj(x))

    def conv_taps(self) -> torch.Tensor:
        """The conv's weights as [K, W] (tap k weighs the token K - 1 - k places back); cached at inference."""
        build = lambda: self.conv.weight[:, 0].t().contiguous()
        return self._taps.get((self.conv.weight.data_ptr(), self.conv.weight._version), build)

    def mix(self, projected: torch.Tensor) -> torch.Tensor:
        """Everything after `in_proj`: its output [B, h, w, 2 W] (row-major grid) -> [B, h, w, D]."""
        b, h, w, _ = projected.shape
        if native.usable(projected, self.conv.weight, self.conv.bias):
            return self._mix_native(projected)
        if self.column_major:
            projected = projected.transpose(1, 2)
        y, r = projected.reshape(b, h * w, -1).chunk(2, dim=-1)
        r = torch.cat([r, r.flip(1)], dim=0)  # forward and reversed scans as one batch
        r = self.lru(self.causal_conv(r))
        r = 0.5 * (r[:b] + r[b:].flip(1))
        return self._grid(self.out_proj(gelu_tanh(y) * r), b, h, w)

    def _mix_native(self, projected: torch.Tensor) -> torch.Tensor:
        """`mix` through the fused kernels: conv, gates, scan and output gate in three calls."""
        width = projected.shape[-1] // 2
        y, r = projected[..., :width], projected[..., width:]
        x = native.recurrent_conv(r, self.column_major, self.conv_taps(), self.conv.bias)  # [2B, N, W]
        return self.out_proj(native.lru_bidirectional(self.lru.gates(x), x, self.lru.log_rate(), y, self.column_major))

    def _grid(self, tokens: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
        """Tokens in scan order [B, N, D] -> the row-major grid [B, h, w, D]."""
        if self.column_major:
            return tokens.view(b, w, h, -1).transpose(1, 2)
        return tokens.view(b, h, w, -1)


# ---------------------------------------------------------------------------------------------- Spatial


def manhattan_distance(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """|drow| + |dcol| between all pairs of a raster h x w grid: [h*w, h*w]."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return ((rows[:, None] - rows[None]).abs() + (cols[:, None] - cols[None]).abs()).float()


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
        return self.attend(self.qkv(x), exact)

    def attend(self, qkv: torch.Tensor, exact: bool | None = None) -> torch.Tensor:
        """Everything after the `qkv` projection: its output [B, h, w, 3 D] -> [B, h, w, D]."""
        b, h, w, d3 = qkv.shape
        d = d3 // 3
        hd = d // self.heads
        q, k, v = qkv.view(b, h, w, 3, self.heads, hd).unbind(3)  # each [B, h, w, H, hd]
        if exact if exact is not None else h * w <= self.exact_max_tokens:
            bias = self.bias(h, w, qkv.dtype, qkv.device)  # [H, N, N]
            flat = lambda t: t.reshape(b, h * w, self.heads, hd).transpose(1, 2)
            y = F.scaled_dot_product_attention(flat(q), flat(k), flat(v), attn_mask=bias[None])
            return y.transpose(1, 2).reshape(b, h, w, d)
        lg = self.log_gamma().to(qkv.dtype)
        # decomposed: rows first (decay over columns), then columns (decay over rows). Each attention runs on
        # 4-D [B * lines, H, length, hd] tensors: 5-D inputs send SDPA to its slower math fallback.
        dist_w = (torch.arange(w, device=qkv.device)[:, None] - torch.arange(w, device=qkv.device)).abs()
        dist_h = (torch.arange(h, device=qkv.device)[:, None] - torch.arange(h, device=qkv.device)).abs()
        rows = lambda t: t.permute(0, 1, 3, 2, 4).reshape(b * h, self.heads, w, hd)
        y = F.scaled_dot_product_attention(
            rows(q), rows(k), rows(v), attn_mask=(lg[:, None, None] * dist_w.to(qkv.dtype))[None]
        ).view(b, h, self.heads, w, hd)
        cols = lambda t: t.permute(0, 2, 3, 1, 4).reshape(b * w, self.heads, h, hd)
        y = y.permute(0, 1, 3, 2, 4)  # [B, h, w, H, hd]
        y = F.scaled_dot_product_attention(
            cols(q), cols(k), cols(y), attn_mask=(lg[:, None, None] * dist_h.to(qkv.dtype))[None]
        ).view(b, w, self.heads, h, hd)
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
        self._projection = _InferenceCache()

    def projection(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The three projections of the mixer's input (gate, recurrent in_proj, attention qkv) as one matrix
        [D + 2 W + 3 D, D] with its bias, and the split sizes; cached at inference."""
        layers = (self.gate, self.recurrent.in_proj, self.spatial.qkv)

        def build() -> tuple[torch.Tensor, torch.Tensor, list[int]]:
            weight = torch.cat([layer.weight for layer in layers])
            return weight, torch.cat([layer.bias for layer in layers]), [layer.out_features for layer in layers]

        return self._projection.get(tuple((p.data_ptr(), p._version) for m in layers for p in m.parameters()), build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias, sizes = self.projection()
        gate, recurrent_in, qkv = F.linear(x, weight, bias).split(sizes, dim=-1)
        r, f, s = self.recurrent.mix(recurrent_in), self.fourier(x), self.spatial.attend(qkv)
        # g * fourier + (1 - g) * recurrent + alpha * spatial
        if r.is_contiguous() and f.is_contiguous() and s.is_contiguous() and native.usable(gate, r, f, s, self.alpha):
            return self.out(native.gated_merge(gate, f, r, s, self.alpha))
        return self.out(torch.addcmul(torch.addcmul(r, torch.sigmoid(gate), f - r), s, self.alpha))
