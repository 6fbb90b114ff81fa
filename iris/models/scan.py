"""Linear recurrence h_t = a_t * h_{t-1} + b_t as a chunked parallel scan (no per-token loop).

Within a chunk the decays form a masked lower-triangular matrix exp(L_t - L_s), L = cumsum(log a);
chunks are joined by carrying the last state. Computed in fp32.
"""

from __future__ import annotations

import torch


def chunked_linear_scan(
    log_a: torch.Tensor, b: torch.Tensor, chunk: int = 64, h0: torch.Tensor | None = None
) -> torch.Tensor:
    """Scan over the sequence axis. log_a, b: [B, N, D] (log a <= 0); h0: [B, D] or None -> h [B, N, D]."""
    dtype = b.dtype
    log_a, b = log_a.float(), b.float()
    bsz, n, d = b.shape
    h = torch.zeros(bsz, d, device=b.device) if h0 is None else h0.float()
    outs = []
    for start in range(0, n, chunk):
        la = log_a[:, start : start + chunk]  # [B, T, D]
        bb = b[:, start : start + chunk]
        t = la.shape[1]
        cum = la.cumsum(dim=1)  # L_t
        diff = cum[:, :, None, :] - cum[:, None, :, :]  # [B, T, S, D] = L_t - L_s
        causal = torch.ones(t, t, dtype=torch.bool, device=b.device).tril()
        decay = torch.where(causal[None, :, :, None], diff, float("-inf")).exp()
        y = torch.einsum("btsd,bsd->btd", decay, bb) + cum.exp() * h[:, None, :]
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
