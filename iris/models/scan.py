"""Linear recurrence h_t = a_t * h_{t-1} + b_t as a chunked parallel scan (no per-token loop).

L = cumsum(log a) within a chunk. Three forms:
- "cumsum" (the default, fastest in eager mode): h_t = exp(L_t) (h_0 + sum_{s<=t} exp(-L_s) b_s) over chunks
  joined one after another in a Python loop, each chunk shortened from the data so that -L stays below
  `max_log_range`.
- "blocked": h_t = exp(L_t) sum_{s<=t} exp(-L_s) b_s inside blocks of T = 5 tokens, all blocks
  at once; the blocks' end states form a sequence N/T long with the same recurrence, scanned the same way
  (recursion depth log_T N), then carried back into each block. log a is clamped at `min_log_a` (a decay
  below e^-16 already erases the past at fp32 precision), so -L <= 80 inside a block and exp(-L) stays
  finite in fp32. O(N D) work, no data-dependent shapes and no per-chunk Python loop, so torch.compile
  traces it whole; about 1.5x the eager time of "cumsum".
- "matrix": a masked lower-triangular decay matrix exp(L_t - L_s) applied to b (O(T^2 D) per chunk),
  chunks joined in a loop; the form the ONNX export uses.
Computed in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG2E = 1 / math.log(2)


def _matrix_chunk(la: torch.Tensor, bb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    t = la.shape[1]
    ones = torch.ones(t, t, dtype=torch.bool, device=la.device)
    # segment sums L_t - L_s = sum_{s<k<=t} log a_k, summed directly (no cancellation of large prefixes)
    seg = torch.where(ones.tril(-1)[None, :, :, None], la[:, :, None, :], 0.0).cumsum(dim=1)  # [B, T, S, D]
    decay = torch.where(ones.tril()[None, :, :, None], seg, float("-inf")).exp()
    return torch.einsum("btsd,bsd->btd", decay, bb) + la.cumsum(dim=1).exp() * h[:, None, :]


def _cumsum_chunks(log_a: torch.Tensor, b: torch.Tensor, chunk: int, h0: torch.Tensor | None) -> torch.Tensor:
    """The "cumsum" form, all chunks at once: each chunk scanned from zero, h_t = exp(L_t) sum exp(-L_s) b_s,
    then the state entering each chunk carried across them in a loop over [B, D] states. [B, N, D]."""
    bsz, n, d = b.shape
    pad = (-n) % chunk
    if pad:  # a = 1, b = 0 after the end: the padding never reaches back into real tokens
        log_a, b = F.pad(log_a, (0, 0, 0, pad)), F.pad(b, (0, 0, 0, pad))
    m = (n + pad) // chunk
    cum = (log_a * LOG2E).view(bsz, m, chunk, d).cumsum(dim=2)  # [B, M, T, D], in log2 units
    decay = torch.exp2(cum)  # >= e^-max_log_range: a normal fp32 number, so its reciprocal is finite
    # exp(-L) as 1 / exp(L) (a cheaper kernel), except under autograd: that gradient, -1 / exp(L)^2, overflows
    inverse = torch.exp2(-cum) if cum.requires_grad else decay.reciprocal()
    local = decay * (b.view(bsz, m, chunk, d) * inverse).cumsum(dim=2)
    if m > 1 or h0 is not None:
        h = torch.zeros(bsz, d, device=b.device, dtype=b.dtype) if h0 is None else h0.float()
        carry = [h]
        for j in range(m - 1):  # the state entering chunk j + 1
            h = torch.addcmul(local[:, j, -1], decay[:, j, -1], h)
            carry.append(h)
        local = torch.addcmul(local, decay, torch.stack(carry, dim=1)[:, :, None])
    return local.reshape(bsz, m * chunk, d)[:, :n]


def _blocked_scan(log_a: torch.Tensor, b: torch.Tensor, block: int, min_log_a: float) -> torch.Tensor:
    """Zero initial state; log_a already clamped. [B, N, D] -> [B, N, D]."""
    bsz, n, d = b.shape
    pad = (-n) % block
    if pad:  # a = 1, b = 0 after the end: the padding never reaches back into real tokens
        log_a, b = F.pad(log_a, (0, 0, 0, pad)), F.pad(b, (0, 0, 0, pad))
    m = (n + pad) // block
    cum = log_a.view(bsz, m, block, d).cumsum(dim=2)  # [B, M, T, D]
    local = cum.exp() * (b.view(bsz, m, block, d) * (-cum).exp()).cumsum(dim=2)  # each block from zero
    if m > 1:
        # state at each block's end: H_m = exp(L_m) H_{m-1} + local_m, the same recurrence, N/T long
        ends = _blocked_scan(cum[:, :, -1].clamp_min(min_log_a), local[:, :, -1], block, min_log_a)
        carry = F.pad(ends[:, :-1], (0, 0, 1, 0))  # [B, M, D]: the state entering each block
        local = local + cum.exp() * carry[:, :, None]
    return local.reshape(bsz, m * block, d)[:, :n]


def chunked_linear_scan(
    log_a: torch.Tensor,
    b: torch.Tensor,
    chunk: int = 64,
    h0: torch.Tensor | None = None,
    method: str = "cumsum",
    max_log_range: float = 80.0,
    min_log_a: float = -16.0,
    log_a_floor: float | None = None,
) -> torch.Tensor:
    """Scan over the sequence axis. log_a, b: [B, N, D] (log a <= 0); h0: [B, D] or None -> h [B, N, D].

    chunk: the chunk length of the "cumsum" and "matrix" forms ("blocked" derives its block from
    max_log_range / -min_log_a).
    log_a_floor: a lower bound of log_a that the caller knows (the RG-LRU's from its weights); the "cumsum"
    form then sizes its chunks from it instead of measuring log_a.
    """
    dtype = b.dtype
    log_a, b = log_a.float(), b.float()
    bsz, n, d = b.shape
    if method == "blocked":
        log_a = log_a.clamp_min(min_log_a)
        if h0 is not None:  # h0 enters as a first token with b = h0 (its decay is irrelevant)
            log_a = torch.cat([torch.zeros_like(log_a[:, :1]), log_a], dim=1)
            b = torch.cat([h0.float()[:, None], b], dim=1)
        block = max(1, int(max_log_range / -min_log_a))
        out = _blocked_scan(log_a, b, block, min_log_a)
        return (out if h0 is None else out[:, 1:]).to(dtype)
    if method == "cumsum":
        if log_a_floor is None or log_a_floor < min_log_a:
            log_a = log_a.clamp_min(min_log_a)  # a < e^-16 is zero at fp32 precision; bounds the chunk below
            log_a_floor = float(log_a.detach().min()) if log_a.numel() else 0.0
        worst = -log_a_floor
        chunk = max(1, min(chunk, n, int(max_log_range / max(worst, 1e-6))))  # (a chunk past n is padding)
        return _cumsum_chunks(log_a, b, chunk, h0).to(dtype)
    if method != "matrix":
        raise ValueError(f"unknown scan method {method!r}")
    h = torch.zeros(bsz, d, device=b.device) if h0 is None else h0.float()
    outs = []
    for start in range(0, n, chunk):
        y = _matrix_chunk(log_a[:, start : start + chunk], b[:, start : start + chunk], h)
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
