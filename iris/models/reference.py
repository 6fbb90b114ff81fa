"""Plain forms of the generator's optimised paths: the same maths written the obvious way, slower.

Tests check that the optimised modules equal these within fp32 round-off, and
`benchmarks/optimisations.py` times each optimisation against its plain form in one process. Each entry of
`PLAIN_FORMS` swaps one method of one class; `plain_forms(*names)` applies some of them for a `with` block, and
`baseline(name)` is the context the comparison runs in.

    with plain_forms("afno", "scan"):
        v_plain = generator(z, t, text, iterations=8)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
import torch.nn.functional as F

from . import generator, grfm, layers, native, scan


def afno_forward(self: grfm.AFNO2D, x: torch.Tensor) -> torch.Tensor:
    """AFNO with a separable DFT (one axis at a time) and the complex block MLP as eight einsums."""
    b, h, w, d = x.shape
    dtype, x = x.dtype, x.float()
    if self._use_dft(h, w):
        yr, yi = grfm.separable_rfft2(x)
    else:
        xf = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
        yr, yi = xf.real, xf.imag
    shape = yr.shape
    xr, xi = yr.reshape(*shape[:3], self.blocks, self.bs), yi.reshape(*shape[:3], self.blocks, self.bs)
    w1, b1, w2, b2 = self.w1.float(), self.b1.float(), self.w2.float(), self.b2.float()
    mul = lambda a, m: torch.einsum("...bi,bio->...bo", a, m)
    o1r = F.relu(mul(xr, w1[0]) - mul(xi, w1[1]) + b1[0])
    o1i = F.relu(mul(xi, w1[0]) + mul(xr, w1[1]) + b1[1])
    o2r = F.softshrink(mul(o1r, w2[0]) - mul(o1i, w2[1]) + b2[0], self.lam).reshape(shape)
    o2i = F.softshrink(mul(o1i, w2[0]) + mul(o1r, w2[1]) + b2[1], self.lam).reshape(shape)
    if self._use_dft(h, w):
        y = grfm.separable_irfft2(o2r, o2i, w)
    else:
        y = torch.fft.irfft2(torch.complex(o2r, o2i), s=(h, w), dim=(1, 2), norm="ortho")
    return y.to(dtype)


def causal_conv(self: grfm.RecurrentBlock, r: torch.Tensor) -> torch.Tensor:
    """The depthwise causal conv through nn.Conv1d (channels-first, padded both sides, cropped)."""
    n = r.shape[1]
    return self.conv(r.transpose(1, 2))[..., :n].transpose(1, 2)


def cumsum_scan(la: torch.Tensor, b: torch.Tensor, chunk: int, h0: torch.Tensor | None) -> torch.Tensor:
    """The "cumsum" scan one chunk at a time in a loop, with exp: [B, N, D] -> [B, N, D]."""
    h = torch.zeros(b.shape[0], b.shape[2], device=b.device) if h0 is None else h0.float()
    outs = []
    for start in range(0, b.shape[1], chunk):
        cum = la[:, start : start + chunk].cumsum(dim=1)
        y = cum.exp() * (h[:, None, :] + (b[:, start : start + chunk] * (-cum).exp()).cumsum(dim=1))
        outs.append(y)
        h = y[:, -1]
    return torch.cat(outs, dim=1)


def rglru_forward(self: grfm.RGLRU, x: torch.Tensor) -> torch.Tensor:
    """RG-LRU with exp (not exp2) for the input normaliser."""
    gate_a, gate_x = torch.sigmoid(self.gates(x)).chunk(2, dim=-1)
    log_a = -self.c * gate_a.float() * F.softplus(-self.a_param.float())
    mult = torch.sqrt((1 - torch.exp(2 * log_a)).clamp_min(1e-12))
    return scan.chunked_linear_scan(log_a, mult * (gate_x * x).float(), self.chunk, method=self.method).to(x.dtype)


def uncached_log_rate(self: grfm.RGLRU) -> torch.Tensor:
    """The RG-LRU's -c softplus(-Lambda), recomputed at every call."""
    return -self.c * F.softplus(-self.a_param.float())


def gelu(x: torch.Tensor) -> torch.Tensor:
    """torch's tanh-approximated GELU kernel."""
    return F.gelu(x, approximate="tanh")


def iterate(self: generator.IrisGenerator, s: torch.Tensor, e: torch.Tensor, c: torch.Tensor,
            text: generator.TextCondition, i: int, injected: torch.Tensor | None = None) -> torch.Tensor:
    """One core iteration with the injection W_u [s, e] + b as one linear on the concatenation, every iteration."""
    idx = torch.full((s.shape[0],), min(i - 1, self.config.max_iterations - 1), device=s.device)
    mod = self.core_mod(F.silu(c + self.iter_embed(idx)))
    return self.core_stack(self.inject(torch.cat([s, e], dim=-1)), mod, text)


def decomposed_attend(self: grfm.ManhattanAttention, qkv: torch.Tensor, exact: bool | None = None) -> torch.Tensor:
    """Manhattan attention with its decomposed form on 5-D [B, lines, H, length, hd] tensors (SDPA's math
    fallback); the exact form as shipped."""
    b, h, w, d3 = qkv.shape
    if exact if exact is not None else h * w <= self.exact_max_tokens:
        return _shipped_attend(self, qkv, exact)
    d = d3 // 3
    q, k, v = qkv.view(b, h, w, 3, self.heads, d // self.heads).unbind(3)
    lg = self.log_gamma().to(qkv.dtype)
    dist = lambda n: (torch.arange(n, device=qkv.device)[:, None] - torch.arange(n, device=qkv.device)).abs()
    rows = lambda t: t.permute(0, 1, 3, 2, 4)  # [B, h, H, w, hd]
    y = F.scaled_dot_product_attention(rows(q), rows(k), rows(v), attn_mask=lg[:, None, None] * dist(w).to(qkv.dtype))
    cols = lambda t: t.permute(0, 2, 3, 1, 4)  # [B, w, H, h, hd]
    y = y.permute(0, 1, 3, 2, 4)
    y = F.scaled_dot_product_attention(cols(q), cols(k), cols(y), attn_mask=lg[:, None, None] * dist(h).to(qkv.dtype))
    return y.permute(0, 3, 1, 2, 4).reshape(b, h, w, -1)


_shipped_attend = grfm.ManhattanAttention.attend


def grfm_forward(self: grfm.GRFM, x: torch.Tensor) -> torch.Tensor:
    """GRFM with its three input projections as separate layers and the merge as written in the paper."""
    g = torch.sigmoid(self.gate(x))
    mixed = g * self.fourier(x) + (1 - g) * self.recurrent(x) + self.alpha * self.spatial(x)
    return self.out(mixed)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    view = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    return x * (1 + scale.view(view)) + shift.view(view)


def add_gated(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return x + branch * gate.view((branch.shape[0],) + (1,) * (branch.dim() - 2) + (branch.shape[-1],))


def core_layer_forward(self: generator.CoreLayer, x: torch.Tensor, mod: torch.Tensor,
                       text: generator.TextCondition) -> torch.Tensor:
    """A core layer with adaLN written out: modulate and gate each vector in its own ops."""
    sh1, sc1, g1, sh2, sc2, g2, sh3, sc3, g3 = self.table(mod)
    b, h, w, d = x.shape
    x = add_gated(x, self.mixer(modulate(self.norm1(x), sh1, sc1)), g1)
    y = self.cross(modulate(self.norm2(x), sh2, sc2).view(b, h * w, d), text.tokens, text.attention_mask(h, w),
                   text.cache)
    x = add_gated(x, y.view(b, h, w, d), g2)
    return add_gated(x, self.ffn(modulate(self.norm3(x), sh3, sc3)), g3)


# name -> the (owner, attribute, plain form) swaps it makes
PLAIN_FORMS: dict[str, list[tuple[object, str, Callable]]] = {
    "afno": [(grfm.AFNO2D, "forward", afno_forward)],
    "conv": [(grfm.RecurrentBlock, "causal_conv", causal_conv)],
    "scan": [(scan, "_cumsum_chunks", cumsum_scan)],
    "exp": [(grfm.RGLRU, "forward", rglru_forward)],
    "rate": [(grfm.RGLRU, "log_rate", uncached_log_rate)],
    # layers.py and grfm.py both call gelu_tanh by name
    "gelu": [(layers, "gelu_tanh", gelu), (grfm, "gelu_tanh", gelu)],
    "inject": [(generator.IrisGenerator, "iterate", iterate)],
    "projection": [(grfm.GRFM, "forward", grfm_forward)],
    "attention": [(grfm.ManhattanAttention, "attend", decomposed_attend)],
    # generator.py imported modulate and add_gated by name, so both names are swapped
    "adaln": [(generator.CoreLayer, "forward", core_layer_forward), (generator, "modulate", modulate),
              (generator, "add_gated", add_gated)],
    # the fused C kernels: the recurrent block's conv-gates-scan-gate chain, norm + modulate, the merge, GELU
    "native": [(native, "usable", lambda *tensors: False)],
}


def baseline(name: str) -> AbstractContextManager:
    """Where the plain form `name` is compared with the shipped code. The C kernels ("native") replace several
    torch paths at inference on the CPU, so those paths (which run wherever the kernels do not: no compiler,
    training, compiled or exported graphs) are compared with the kernels off; "native" and "all" as shipped."""
    return plain_forms("native") if name not in ("native", "all") else nullcontext()


@contextmanager
def plain_forms(*names: str) -> Iterator[None]:
    """Run the named optimised paths (all when none are named) in their plain forms inside the block."""
    saved = []
    try:
        for name in names or tuple(PLAIN_FORMS):
            for owner, attr, plain in PLAIN_FORMS[name]:
                saved.append((owner, attr, getattr(owner, attr)))
                setattr(owner, attr, plain)
        yield
    finally:
        for owner, attr, value in reversed(saved):
            setattr(owner, attr, value)


__all__ = ["PLAIN_FORMS", "baseline", "plain_forms"]
