"""Haar DWT / IDWT (iris.models.wavelet): lossless, orthonormal, LL band = 2 x box mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from iris.models.wavelet import HaarDWT, HaarIDWT, dwt, idwt, ll_band, with_ll_band

shapes = st.tuples(
    st.integers(1, 3),  # batch
    st.integers(1, 4),  # channels
    st.integers(1, 32).map(lambda n: 2 * n),  # height (even, 2..64)
    st.integers(1, 32).map(lambda n: 2 * n),  # width
    st.integers(0, 2**31 - 1),  # seed
)


def _random(shape: tuple[int, ...], seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_round_trip_is_lossless(shape):
    b, c, h, w, seed = shape
    x = _random((b, c, h, w), seed)
    y = dwt(x)
    assert y.shape == (b, 4 * c, h // 2, w // 2)
    assert (idwt(y) - x).abs().max().item() < 1e-5


@settings(max_examples=40, deadline=None)
@given(shapes)
def test_transform_is_orthonormal(shape):
    b, c, h, w, seed = shape
    x = _random((b, c, h, w), seed, torch.float64)
    y = dwt(x)
    torch.testing.assert_close(y.pow(2).sum(), x.pow(2).sum(), rtol=1e-10, atol=1e-10)
    # and the inverse is the adjoint: <dwt(x), z> == <x, idwt(z)>
    z = _random(tuple(y.shape), seed + 1, torch.float64)
    torch.testing.assert_close((y * z).sum(), (x * idwt(z)).sum(), rtol=1e-10, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(shapes)
def test_ll_band_is_twice_the_box_mean(shape):
    b, c, h, w, seed = shape
    x = _random((b, c, h, w), seed, torch.float64)
    ll = ll_band(dwt(x))
    torch.testing.assert_close(ll, 2.0 * F.avg_pool2d(x, 2), rtol=1e-12, atol=1e-12)


def test_subband_layout_per_channel():
    # channel 1 constant, channel 0 a vertical ramp: only channel 0's LH band may be non-zero among highs
    x = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    x[0, 0] = torch.arange(4, dtype=torch.float64)[:, None]  # varies along rows only
    x[0, 1] = 3.0
    y = dwt(x)
    ll0, lh0, hl0, hh0, ll1, lh1, hl1, hh1 = y[0]
    assert lh0.abs().min() > 0 and hl0.abs().max() == 0 and hh0.abs().max() == 0
    torch.testing.assert_close(ll1, torch.full_like(ll1, 6.0))  # 2 x mean(3)
    assert lh1.abs().max() == 0 and hl1.abs().max() == 0 and hh1.abs().max() == 0


def test_with_ll_band_replaces_only_ll():
    x = _random((2, 3, 8, 8), 3)
    y = dwt(x)
    new_ll = torch.zeros(2, 3, 4, 4)
    z = with_ll_band(y, new_ll)
    assert torch.equal(ll_band(z), new_ll)
    mask = torch.ones(12, dtype=torch.bool)
    mask[0::4] = False
    assert torch.equal(z[:, mask], y[:, mask])
    assert not torch.equal(ll_band(y), new_ll)  # y itself is untouched
    # the LL band of a 2x image is the (scaled) low-resolution image: the identity super-resolution relies on
    assert torch.allclose(F.avg_pool2d(idwt(z), 2), torch.zeros(2, 3, 4, 4), atol=1e-6)


def test_modules_match_functions():
    x = _random((1, 3, 6, 10), 5)
    assert torch.equal(HaarDWT()(x), dwt(x))
    assert torch.equal(HaarIDWT()(dwt(x)), idwt(dwt(x)))
    assert not list(HaarDWT().parameters())


@pytest.mark.parametrize("hw", [(3, 4), (4, 5), (7, 7), (1, 2)])
def test_odd_size_raises(hw):
    with pytest.raises(ValueError, match="even"):
        dwt(torch.zeros(1, 3, *hw))
