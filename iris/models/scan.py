"""Linear recurrence h_t = a_t * h_{t-1} + b_t as a chunked parallel scan (no per-token loop).

L = cumsum(log a) within a chunk; chunks are joined by carrying the last state. Two in-chunk forms:
- "matrix": a masked lower-triangular decay matrix exp(L_t - L_s) applied to b (O(T^2 D) per chunk);
- "cumsum": h_t = exp(L_t) (h_0 + sum_{s<=t} exp(-L_s) b_s)  (O(T D)); the chunk is shortened so that
  -L stays below `max_log_range`, which keeps exp(-L) finite in fp32. Faster; the default.
Computed in fp32.
"""

from __future__ import annotations

import torch


def _matrix_chunk(la: torch.Tensor, bb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    t = la.shape[1]
    cum = la.cumsum(dim=1)  # L_t
    diff = cum[:, :, None, :] - cum[:, None, :, :]  # [B, T, S, D] = L_t - L_s
    causal = torch.ones(t, t, dtype=torch.bool, device=la.device).tril()
    decay = torch.where(causal[None, :, :, None], diff, float("-inf")).exp()
    return torch.einsum("btsd,bsd->btd", decay, bb) + cum.exp() * h[:, None, :]


def _cumsum_chunk(la: torch.Tensor, bb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    cum = la.cumsum(dim=1)
    return cum.exp() * (h[:, None, :] + (bb * (-cum).exp()).cumsum(dim=1))


def chunked_linear_scan(
    log_a: torch.Tensor,
    b: torch.Tensor,
    chunk: int = 64,
    h0: torch.Tensor | None = None,
    method: str = "cumsum",
    max_log_range: float = 60.0,
) -> torch.Tensor:
    """Scan over the sequence axis. log_a, b: [B, N, D] (log a <= 0); h0: [B, D] or None -> h [B, N, D]."""
    dtype = b.dtype
    log_a, b = log_a.float(), b.float()
    bsz, n, d = b.shape
    h = torch.zeros(bsz, d, device=b.device) if h0 is None else h0.float()
    if method == "cumsum":
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
