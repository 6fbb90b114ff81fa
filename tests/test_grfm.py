"""GRFM token mixer (iris.models.grfm): Fourier, recurrent and Manhattan-attention pathways."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, tiny_config

from iris.models.grfm import (
    AFNO2D,
    GRFM,
    RGLRU,
    ManhattanAttention,
    RecurrentBlock,
    irfft2_dft,
    manhattan_distance,
    rfft2_dft,
    separable_irfft2,
    separable_rfft2,
)

GRIDS = [(1, 1), (2, 3), (4, 4), (5, 7), (6, 8), (7, 6), (9, 9), (8, 5)]

# ----------------------------------------------------------------------------------------------- Fourier


@pytest.mark.parametrize("hw", GRIDS)
def test_dft_matches_torch_fft(hw):
    h, w = hw
    x = torch.randn(2, h, w, 3, generator=torch.Generator().manual_seed(h * 10 + w))
    yr, yi = rfft2_dft(x)
    ref = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
    torch.testing.assert_close(yr, ref.real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yi, ref.imag, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(irfft2_dft(yr, yi, w), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", [(3, 5), (8, 8), (17, 16), (20, 21)])
def test_separable_dft_matches_torch_fft(hw):
    # the form a forced "dft" (the ONNX export) takes on grids too large for the whole-grid matrices
    h, w = hw
    x = torch.randn(2, h, w, 3, generator=torch.Generator().manual_seed(h * 10 + w))
    yr, yi = separable_rfft2(x)
    ref = torch.fft.rfft2(x, dim=(1, 2), norm="ortho")
    torch.testing.assert_close(yr, ref.real, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yi, ref.imag, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(separable_irfft2(yr, yi, w), x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", GRIDS)
def test_irfft_dft_matches_torch_on_non_hermitian_spectra(hw):
    # after the MLP the spectrum is arbitrary; irfft2 must treat it exactly as torch does
    h, w = hw
    g = torch.Generator().manual_seed(1 + h * 10 + w)
    yr, yi = torch.randn(2, h, w // 2 + 1, 3, generator=g), torch.randn(2, h, w // 2 + 1, 3, generator=g)
    ref = torch.fft.irfft2(torch.complex(yr, yi), s=(h, w), dim=(1, 2), norm="ortho")
    torch.testing.assert_close(irfft2_dft(yr, yi, w), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hw", GRIDS + [(17, 16), (20, 21)])
def test_afno_fft_and_dft_paths_agree(hw):
    torch.manual_seed(0)
    fft = AFNO2D(16, blocks=4, softshrink=0.01, impl="fft")
    with torch.no_grad():  # larger weights than the init so that softshrink passes most values
        for p in fft.parameters():
            p.mul_(20.0)
    dft = AFNO2D(16, blocks=4, softshrink=0.01, impl="dft")
    auto = AFNO2D(16, blocks=4, softshrink=0.01, impl="auto")
    dft.load_state_dict(fft.state_dict())
    auto.load_state_dict(fft.state_dict())
    x = torch.randn(2, *hw, 16, generator=torch.Generator().manual_seed(3))
    y_fft, y_dft, y_auto = fft(x), dft(x), auto(x)
    assert y_fft.shape == x.shape
    assert y_fft.abs().max() > 1e-2  # a non-trivial output
    torch.testing.assert_close(y_dft, y_fft, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(y_auto, y_fft, atol=1e-5, rtol=1e-4)


def test_afno_rejects_indivisible_blocks():
    with pytest.raises(ValueError, match="divisible"):
        AFNO2D(10, blocks=4)


def test_afno_keeps_half_precision_dtype():
    afno = AFNO2D(8, blocks=2, impl="dft")
    x = torch.randn(1, 4, 4, 8).bfloat16()
    assert afno(x).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------- Spatial


def brute_force_manhattan(attn: ManhattanAttention, x: torch.Tensor) -> torch.Tensor:
    """Explicit loops over every query/key pair, softmax over all tokens of the grid."""
    b, h, w, d = x.shape
    heads = attn.heads
    hd = d // heads
    qkv = attn.qkv(x).view(b, h, w, 3, heads, hd)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    lg = attn.log_gamma()
    out = torch.zeros(b, h, w, heads, hd, dtype=x.dtype)
    for bi in range(b):
        for head in range(heads):
            for r in range(h):
                for c in range(w):
                    logits = torch.empty(h * w, dtype=x.dtype)
                    values = torch.empty(h * w, hd, dtype=x.dtype)
                    for j in range(h * w):
                        r2, c2 = divmod(j, w)
                        dot = torch.dot(q[bi, r, c, head], k[bi, r2, c2, head]) / math.sqrt(hd)
                        logits[j] = dot + lg[head] * (abs(r - r2) + abs(c - c2))
                        values[j] = v[bi, r2, c2, head]
                    out[bi, r, c, head] = torch.softmax(logits, 0) @ values
    return out.reshape(b, h, w, d)


def brute_force_decomposed(attn: ManhattanAttention, x: torch.Tensor) -> torch.Tensor:
    """Rows first (decay over |dcol|), then columns (decay over |drow|) on the row outputs."""
    b, h, w, d = x.shape
    heads, hd = attn.heads, d // attn.heads
    q, k, v = attn.qkv(x).view(b, h, w, 3, heads, hd).unbind(3)
    lg = attn.log_gamma()
    rows = torch.zeros_like(v)
    for r in range(h):
        for c in range(w):
            for head in range(heads):
                logits = torch.stack([torch.dot(q[0, r, c, head], k[0, r, c2, head]) / math.sqrt(hd)
                                      + lg[head] * abs(c - c2) for c2 in range(w)])
                rows[0, r, c, head] = torch.softmax(logits, 0) @ v[0, r, :, head]
    out = torch.zeros_like(v)
    for r in range(h):
        for c in range(w):
            for head in range(heads):
                logits = torch.stack([torch.dot(q[0, r, c, head], k[0, r2, c, head]) / math.sqrt(hd)
                                      + lg[head] * abs(r - r2) for r2 in range(h)])
                out[0, r, c, head] = torch.softmax(logits, 0) @ rows[0, :, c, head]
    return out.reshape(b, h, w, d)


def test_gammas_are_spread_over_scales():
    attn = ManhattanAttention(32, heads=4)
    gamma = attn.log_gamma().exp()
    assert torch.all(gamma > 0) and torch.all(gamma < 1)
    assert torch.all(gamma[1:] > gamma[:-1])
    assert gamma[0].item() == pytest.approx(0.75, abs=1e-5)
    assert gamma[-1].item() > 0.97


def test_manhattan_distance():
    dist = manhattan_distance(2, 3)
    assert dist.shape == (6, 6)
    assert dist[0, 5].item() == 1 + 2  # (0,0) -> (1,2)
    assert dist[1, 3].item() == 1 + 1  # (0,1) -> (1,0)
    assert torch.equal(dist, dist.T) and torch.all(dist.diagonal() == 0)


@pytest.mark.parametrize("hw", [(3, 4), (1, 5), (4, 1)])
def test_exact_manhattan_attention_equals_brute_force(hw):
    torch.manual_seed(0)
    attn = ManhattanAttention(8, heads=2).double()
    with torch.no_grad():
        attn.qkv.weight.mul_(3.0)  # sharper attention: the distance bias must matter
    x = torch.randn(2, *hw, 8, dtype=torch.float64)
    with torch.no_grad():
        got = attn(x)
        ref = brute_force_manhattan(attn, x)
    assert got.shape == x.shape
    torch.testing.assert_close(got, ref, atol=1e-10, rtol=1e-8)


def test_decomposed_path_above_exact_limit():
    torch.manual_seed(1)
    attn = ManhattanAttention(8, heads=2, exact_max_tokens=16).double()
    x = torch.randn(1, 5, 6, 8, dtype=torch.float64)  # 30 tokens > 16
    with torch.no_grad():
        auto = attn(x)
        decomposed = attn(x, exact=False)
        exact = attn(x, exact=True)
        ref = brute_force_decomposed(attn, x)
    assert auto.shape == x.shape
    assert torch.equal(auto, decomposed)
    torch.testing.assert_close(decomposed, ref, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(exact, brute_force_manhattan(attn, x), atol=1e-10, rtol=1e-8)
    assert not torch.allclose(decomposed, exact, atol=1e-4)  # a different operator, not the same one


def test_decomposed_path_keeps_images_of_a_batch_apart():
    torch.manual_seed(2)
    attn = ManhattanAttention(8, heads=2, exact_max_tokens=4).double()
    with torch.no_grad():
        attn.qkv.weight.mul_(3.0)
    x = torch.randn(3, 4, 3, 8, dtype=torch.float64)  # h != w, batch 3: rows and columns must not mix images
    with torch.no_grad():
        got = attn(x)
        for i in range(3):
            torch.testing.assert_close(got[i : i + 1], brute_force_decomposed(attn, x[i : i + 1]),
                                       atol=1e-10, rtol=1e-8)


def test_decomposed_path_runs_on_a_large_grid():
    attn = ManhattanAttention(16, heads=2, exact_max_tokens=1024)
    x = torch.randn(1, 40, 48, 16)  # 1920 tokens: the exact path would build a 1920^2 mask per head
    with torch.no_grad():
        y = attn(x)
    assert y.shape == x.shape and torch.isfinite(y).all()


# ------------------------------------------------------------------------------------------- Recurrent


def test_rglru_init_decay_range():
    lru = RGLRU(64, c=8.0)
    a_max = torch.exp(-8.0 * F.softplus(-lru.a_param))  # a at full recurrence gate
    assert a_max.min() >= 0.9 - 1e-5 and a_max.max() <= 0.999 + 1e-5


def test_rglru_matches_sequential_reference():
    torch.manual_seed(0)
    lru = RGLRU(6, c=8.0, chunk=5).double()
    x = torch.randn(2, 23, 6, dtype=torch.float64)
    gate_a, gate_x = torch.sigmoid(lru.gates(x)).chunk(2, dim=-1)
    a = torch.sigmoid(lru.a_param) ** (8.0 * gate_a)  # a_t = sigma(Lambda)^(c r_t)
    h = torch.zeros(2, 6, dtype=torch.float64)
    ref = []
    for t in range(23):
        h = a[:, t] * h + torch.sqrt(1 - a[:, t] ** 2) * (gate_x[:, t] * x[:, t])
        ref.append(h)
    with torch.no_grad():
        got = lru(x)
    torch.testing.assert_close(got, torch.stack(ref, 1).detach(), atol=1e-5, rtol=1e-5)


def test_rglru_decay_floor_bounds_every_input():
    """The scan sizes its chunks from `log_a_floor` (the weights' bound on log a) instead of measuring log a:
    the bound must hold for any input, saturated gates included."""
    torch.manual_seed(0)
    lru = perturb(RGLRU(8, c=8.0, chunk=64), std=0.5)
    x = torch.cat([torch.randn(2, 30, 8), 1e4 * torch.ones(1, 30, 8)])  # the last row saturates the gates
    with torch.no_grad():
        gate_a = torch.sigmoid(lru.gates(x)).chunk(2, dim=-1)[0]
        log_a = gate_a * lru.log_rate()
        assert float(log_a.min()) >= lru.log_a_floor()
        assert lru.log_a_floor() == pytest.approx(float(log_a[2].min()), rel=1e-6)  # and it is reached


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9])
def test_causal_conv_equals_conv1d_on_short_and_long_sequences(n):
    """The depthwise causal conv as shifted multiply-adds equals nn.Conv1d, also on sequences shorter than its
    kernel (the 1-token rows of a thin image)."""
    torch.manual_seed(n)
    block = RecurrentBlock(8, 6, conv_width=4)
    r = torch.randn(3, n, 6)
    with torch.no_grad():
        ref = block.conv(r.transpose(1, 2))[..., :n].transpose(1, 2)
        torch.testing.assert_close(block.causal_conv(r), ref, atol=1e-6, rtol=1e-6)


def test_rglru_is_causal():
    lru = RGLRU(4, chunk=3)
    x = torch.randn(1, 10, 4, requires_grad=True)
    lru(x)[0, 4].sum().backward()
    assert x.grad[0, 5:].abs().max() == 0
    assert x.grad[0, :5].abs().sum(-1).min() > 0


def _block_pair(dim=8, width=12):
    torch.manual_seed(0)
    rm = RecurrentBlock(dim, width, conv_width=3, chunk=4, column_major=False)
    cm = RecurrentBlock(dim, width, conv_width=3, chunk=4, column_major=True)
    cm.load_state_dict(rm.state_dict())
    return rm, cm


def test_column_major_is_row_major_on_the_transposed_grid():
    rm, cm = _block_pair()
    x = torch.randn(2, 4, 5, 8)  # non-square: a wrong transpose breaks shapes or values
    with torch.no_grad():
        y_rm, y_cm = rm(x), cm(x)
        y_t = rm(x.transpose(1, 2)).transpose(1, 2)
    assert y_rm.shape == y_cm.shape == x.shape
    assert not torch.allclose(y_rm, y_cm, atol=1e-4)
    torch.testing.assert_close(y_cm, y_t, atol=1e-6, rtol=1e-5)


def test_scan_order_puts_vertical_neighbours_close():
    # under a row-major scan (0,0) reaches (1,0) only through a whole row; under column-major it is adjacent
    rm, cm = _block_pair()
    with torch.no_grad():  # strong, uniform decay: influence falls off fast with scan distance
        for block in (rm, cm):
            block.lru.a_param.fill_(-3.0)
    x = torch.randn(1, 6, 6, 8, requires_grad=True)
    influence = {}
    for name, block in (("rm", rm), ("cm", cm)):
        x.grad = None
        block(x)[0, 1, 0].abs().sum().backward()
        g = x.grad[0].abs().sum(-1)
        influence[name] = (g[0, 0] / g[0, 1]).item()  # (0,0): column neighbour vs (0,1): row neighbour
    assert influence["cm"] > influence["rm"]


def test_recurrent_block_is_bidirectional():
    rm, cm = _block_pair()
    for block in (rm, cm):
        x = torch.randn(1, 3, 4, 8, requires_grad=True)
        block(x)[0, 0, 0].sum().backward()
        assert x.grad[0, -1, -1].abs().sum() > 0  # first token sees the last one (reverse scan)
        x.grad = None
        block(x)[0, -1, -1].sum().backward()
        assert x.grad[0, 0, 0].abs().sum() > 0  # and the last sees the first (forward scan)


# ------------------------------------------------------------------------------------------------ Merge


@pytest.mark.parametrize("column_major", [False, True])
def test_gradients_reach_every_grfm_parameter(column_major):
    torch.manual_seed(0)
    cfg = tiny_config()
    mixer = GRFM(cfg, column_major=column_major)
    perturb(mixer, std=0.05, seed=1)
    x = torch.randn(2, 4, 5, cfg.dim, requires_grad=True)
    y = mixer(x)
    assert y.shape == x.shape
    (y * torch.randn_like(y)).sum().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name
    assert x.grad.abs().max() > 0


def test_grfm_merge_formula():
    torch.manual_seed(0)
    mixer = GRFM(tiny_config())
    x = torch.randn(1, 3, 3, 32)
    with torch.no_grad():
        g = torch.sigmoid(mixer.gate(x))
        mixed = g * mixer.fourier(x) + (1 - g) * mixer.recurrent(x) + mixer.alpha * mixer.spatial(x)
        expected = mixer.out(mixed)
        torch.testing.assert_close(mixer(x), expected)
        mixer.alpha.zero_()
        mixer.gate.weight.zero_()
        mixer.gate.bias.fill_(50.0)  # gate ~ 1: Fourier path only
        torch.testing.assert_close(mixer(x), mixer.out(mixer.fourier(x)), atol=1e-5, rtol=1e-5)


def test_manhattan_bias_is_cached_at_inference_only():
    attn = ManhattanAttention(32, heads=2)
    with torch.no_grad():
        first = attn.bias(4, 5, torch.float32, torch.device("cpu"))
        assert attn.bias(4, 5, torch.float32, torch.device("cpu")) is first
        assert attn.bias(5, 4, torch.float32, torch.device("cpu")).shape == (2, 20, 20)
        attn.log_gamma_raw.add_(1.0)  # a changed decay rebuilds the bias
        changed = attn.bias(5, 4, torch.float32, torch.device("cpu"))
    expected = attn.log_gamma().detach()[:, None, None] * manhattan_distance(5, 4)
    torch.testing.assert_close(changed, expected)
    trained = attn.bias(4, 5, torch.float32, torch.device("cpu"))  # with autograd: fresh, differentiable
    assert trained.requires_grad and trained is not first
