"""Linear recurrence h_t = a_t * h_{t-1} + b_t as a chunked parallel scan (no per-token loop).

L = cumsum(log a) within a chunk; chunks are joined by carrying the last state. Two in-chunk forms:
- "matrix": a masked lower-triangular decay matrix exp(L_t - L_s) applied to b (O(T^2 D) per chunk);
- "cumsum": h_t = exp(L_t) (h_0 + sum_{s<=t} exp(-L_s) b_s)  (O(T D)); the chunk is shortened so that
  -L stays below `max_log_range`, which keeps exp(-L) finite in fp32, and log a is clamped at `min_log_a`
  (a decay below e^-16 already erases the past at fp32 precision). Faster; the default.
Computed in fp32.
"""

from __future__ import annotations

import torch


def _matrix_chunk(la: torch.Tensor, bb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    t = la.shape[1]
    ones = torch.ones(t, t, dtype=torch.bool, device=la.device)
    # segment sums L_t - L_s = sum_{s<k<=t} log a_k, summed directly (no cancellation of large prefixes)
    seg = torch.where(ones.tril(-1)[None, :, :, None], la[:, :, None, :], 0.0).cumsum(dim=1)  # [B, T, S, D]
    decay = torch.where(ones.tril()[None, :, :, None], seg, float("-inf")).exp()
    return torch.einsum("btsd,bsd->btd", decay, bb) + la.cumsum(dim=1).exp() * h[:, None, :]


def _cumsum_chunk(la: torch.Tensor, bb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    cum = la.cumsum(dim=1)
    return cum.exp() * (h[:, None, :] + (bb * (-cum).exp()).cumsum(dim=1))


def chunked_linear_scan(
    log_a: torch.Tensor,
    b: torch.Tensor,
    chunk: int = 64,
    h0: torch.Tensor | None = None,
    method: str = "cumsum",
    max_log_range: float = 80.0,
    min_log_a: float = -16.0,
) -> torch.Tensor:
    """Scan over the sequence axis. log_a, b: [B, N, D] (log a <= 0); h0: [B, D] or None -> h [B, N, D]."""
    dtype = b.dtype
    log_a, b = log_a.float(), b.float()
    bsz, n, d = b.shape
    h = torch.zeros(bsz, d, device=b.device) if h0 is None else h0.float()
    if method == "cumsum":
        log_a = log_a.clamp_min(min_log_a)  # a < e^-16 is zero at fp32 precision; bounds the chunk below
        worst = float(-log_a.detach().min()) if log_a.numel() else 0.0
        chunk = max(1, min(chunk, int(max_log_range / max(worst, 1e-6))))
        step = _cumsum_chunk
    elif method == "matrix":
        step = _matrix_chunk
    else:
        raise ValueError(f"unknown scan method {method!r}")
    outs = []
    for start in range(0, n, chunk):
        y = step(log_a[:, start : start + chunk], b[:, start : start + chunk], h)
        outs.append(y)
        h = y[:, -1]
    return torch.cat(outs, dim=1).to(dtype)


def sequential_linear_scan(log_a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference: the same recurrence, one token at a time. [B, N, D] -> [B, N, D]."""
    h = torch.zeros_like(b[:, 0]) if h0 is None else h0
    outs = []
    for i in range(b.shape[1]):
        h = log_a[:, i].exp() * h + b[:, i]
        outs.append(h)
    return torch.stack(outs, dim=1)
