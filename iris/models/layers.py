"""Small building blocks shared by the generator: norms, modulation, embeddings, attention, MLP."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import native


class RMSNorm(nn.Module):
    """RMS normalisation over the last dimension, with an optional learned gain."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * self.weight if self.weight is not None else y


def _over_tokens(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample vector v [B, D] viewed to broadcast over the middle axes of x [B, ..., D]."""
    return v.view((x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x [B, ..., D] * (1 + scale) + shift, with shift/scale [B, D] broadcast over the middle axes."""
    return torch.addcmul(_over_tokens(shift, x), x, _over_tokens(1 + scale, x))


def add_gated(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """adaLN-Zero residual: x + gate * branch, x and branch [B, ..., D], gate [B, D]."""
    return torch.addcmul(x, branch, _over_tokens(gate, branch))


def sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t [B] (t in [0, 1] is scaled by 1000) -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t [B] -> [B, D] through a sinusoid and a two-layer MLP."""

    def __init__(self, dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))


# gelu_tanh(x) = x sigmoid(2 u), u = sqrt(2 / pi) (x + 0.044715 x^3): the same function as tanh-GELU
_GELU_A = 2 * math.sqrt(2 / math.pi)
_GELU_B = _GELU_A * 0.044715


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU, any shape. At inference it is computed as x * sigmoid(x (a + b x^2)), equal
    within 1e-6: this CPU's vectorised tanh is about 3.5x slower than its sigmoid (one fused kernel where the
    native kernels run). Training and compiled code use `F.gelu`, whose backward is fused."""
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return F.gelu(x, approximate="tanh")
    if x.is_contiguous() and native.usable(x):
        return native.gelu_tanh(x)
    return torch.addcmul(x.new_tensor(_GELU_A), x, x, value=_GELU_B).mul_(x).sigmoid_().mul_(x)


class MLP(nn.Module):
    """Position-wise GELU MLP, [..., D] -> [..., D]."""

    def __init__(self, dim: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu_tanh(self.fc1(x)))


class CrossAttention(nn.Module):
    """Queries from image tokens [B, N, D], keys/values from text [B, L, Dt], QK-normed per head."""

    def __init__(self, dim: int, text_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.q_norm, self.k_norm = RMSNorm(dim // heads), RMSNorm(dim // heads)
        self.out = nn.Linear(dim, dim)

    def keys_values(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised keys and values [B, H, L, hd] of the text tokens [B, L, Dt]."""
        b, n = text.shape[:2]
        k, v = self.kv(text).view(b, n, 2, self.heads, -1).unbind(2)
        return self.k_norm(k).transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, text: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: dict | None = None) -> torch.Tensor:
        """attn_mask: which text tokens each image token may see, [B, 1, 1 or N, L] bool (None: all).
        `cache` (a dict living as long as the text) keeps keys/values across core iterations and steps;
        it is only used without autograd, so training still back-propagates into the text path."""
        b, n, d = x.shape
        hd = d // self.heads
        q = self.q_norm(self.q(x).view(b, n, self.heads, hd)).transpose(1, 2)
        # compiled code recomputes them instead: a dict filled on the first call would recompile the graph
        use_cache = cache is not None and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
        kv = cache.get(id(self)) if use_cache else None
        if kv is None:
            kv = self.keys_values(text)
            if use_cache:
                cache[id(self)] = kv
        k, v = kv
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class ScaleShiftTable(nn.Module):
    """adaLN-single (PixArt): per-layer learned offsets added to a shared modulation vector.

    `forward(shared [B, n*D])` -> n tensors [B, D]. Gate entries start at zero (adaLN-Zero).
    `broadcast(shared, ndim)` -> the same n tensors viewed [B, 1, ..., 1, D] for ndim-dimensional activations,
    with 1 already added to the `scale_index` entries, ready for `torch.addcmul(shift, x, 1 + scale)`.
    """

    def __init__(self, dim: int, n: int, gate_index: tuple[int, ...], scale_index: tuple[int, ...] = ()):
        super().__init__()
        self.n = n
        table = torch.randn(n, dim) / math.sqrt(dim)
        for i in gate_index:
            table[i] = 0.0
        self.table = nn.Parameter(table)
        self.scale_index = tuple(scale_index)
        self.register_buffer("scale_ones", torch.zeros(n, 1), persistent=False)
        self.init_derived()

    def init_derived(self) -> None:
        """(Re)build the buffers derived from the config, not stored with the weights (after a meta-device
        build, `iris.hub.load_weights` calls this)."""
        ones = torch.zeros(self.n, 1, device=self.table.device)
        ones[list(self.scale_index)] = 1.0
        self.scale_ones = ones

    def forward(self, shared: torch.Tensor) -> list[torch.Tensor]:
        b = shared.shape[0]
        return list((shared.view(b, self.n, -1) + self.table[None]).unbind(1))

    def broadcast(self, shared: torch.Tensor, ndim: int) -> tuple[torch.Tensor, ...]:
        b = shared.shape[0]
        mods = shared.view(b, self.n, -1) + (self.table + self.scale_ones)
        return mods.view((b, self.n) + (1,) * (ndim - 2) + (mods.shape[-1],)).unbind(1)
