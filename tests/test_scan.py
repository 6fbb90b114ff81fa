"""Chunked parallel linear scan (iris.models.scan) against the token-by-token reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iris.models.scan import chunked_linear_scan, sequential_linear_scan

# decay regimes for log a, each a uniform range: very fast (a ~ 0), fast, moderate, slow (a -> 1)
REGIMES = {
    "very_fast": (-80.0, -20.0),
    "fast": (-20.0, -3.0),
    "moderate": (-1.0, -0.01),
    "slow": (-1e-3, 0.0),
}

cases = st.fixed_dictionaries({
    "b": st.integers(1, 3),
    "n": st.integers(1, 200),
    "d": st.integers(1, 5),
    "chunk": st.integers(1, 64),
    "with_h0": st.booleans(),
    "regime": st.sampled_from(sorted(REGIMES)),
    "seed": st.integers(0, 2**31 - 1),
})


def _inputs(case: dict, dtype=torch.float32):
    g = torch.Generator().manual_seed(case["seed"])
    lo, hi = REGIMES[case["regime"]]
    shape = (case["b"], case["n"], case["d"])
    log_a = (lo + (hi - lo) * torch.rand(shape, generator=g, dtype=torch.float64)).to(dtype)
    b = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    h0 = torch.randn(case["b"], case["d"], generator=g, dtype=torch.float64).to(dtype)
    if not case["with_h0"]:
        h0 = None
    return log_a, b, h0


METHODS = ["cumsum", "blocked", "matrix"]


@settings(max_examples=40, deadline=None)
@given(cases, st.sampled_from(METHODS))
def test_chunked_equals_sequential(case, method):
    log_a, b, h0 = _inputs(case)
    fast = chunked_linear_scan(log_a, b, case["chunk"], h0, method=method)
    ref32 = sequential_linear_scan(log_a, b, h0)
    assert fast.shape == ref32.shape == b.shape
    assert fast.dtype == b.dtype
    ref64 = sequential_linear_scan(log_a.double(), b.double(), None if h0 is None else h0.double())
    # atol 1e-5 at unit scale: with slow decay h is a random walk (|h| up to ~15 over 200 tokens) and any fp32
    # summation, the sequential one included, errs in proportion to the partial sums, not to each h_t
    atol = 1e-5 * max(1.0, ref64.abs().max().item())
    torch.testing.assert_close(fast, ref32, atol=atol, rtol=1e-5)
    torch.testing.assert_close(fast.double(), ref64, atol=atol, rtol=1e-5)  # and against the float64 truth


def test_default_method_is_the_cumsum_form():
    g = torch.Generator().manual_seed(0)
    log_a, b = -3 * torch.rand(1, 50, 3, generator=g), torch.randn(1, 50, 3, generator=g)
    assert torch.equal(chunked_linear_scan(log_a, b, 16), chunked_linear_scan(log_a, b, 16, method="cumsum"))
    with pytest.raises(ValueError, match="method"):
        chunked_linear_scan(log_a, b, 16, method="bogus")


def _wide_range_case():
    g = torch.Generator().manual_seed(0)
    log_a = -30.0 * torch.rand(4, 256, 8, generator=g, dtype=torch.float64)  # a from e^-30 to 1, mixed
    b = torch.randn(4, 256, 8, generator=g, dtype=torch.float64)
    ref64 = sequential_linear_scan(log_a, b)
    seq32 = sequential_linear_scan(log_a.float(), b.float()).double()
    assert (seq32 - ref64).abs().max() < 2e-6  # the recurrence itself is well conditioned in fp32
    return log_a.float(), b.float(), ref64


@pytest.mark.parametrize("method", ["cumsum", "blocked"])
def test_cumsum_forms_precision_with_wide_decay_range(method):
    log_a, b, ref64 = _wide_range_case()
    fast = chunked_linear_scan(log_a, b, chunk=64, method=method).double()
    torch.testing.assert_close(fast, ref64, atol=1e-5, rtol=1e-5)
    # exp(-L) must stay finite: a decay range far beyond fp32's exponent still works
    steep = torch.full((1, 300, 2), -50.0)
    out = chunked_linear_scan(steep, torch.ones(1, 300, 2), chunk=64, method=method)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.ones_like(out), atol=1e-6, rtol=0)  # h_t = b_t + e^-50 h_{t-1}


def test_matrix_scan_precision_with_wide_decay_range():
    log_a, b, ref64 = _wide_range_case()
    fast = chunked_linear_scan(log_a, b, chunk=64, method="matrix").double()
    torch.testing.assert_close(fast, ref64, atol=1e-5, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(cases, st.sampled_from(METHODS))
def test_gradients_match(case, method):
    log_a, b, h0 = _inputs(case, torch.float64)
    leaves = [log_a, b] + ([h0] if h0 is not None else [])
    for t in leaves:
        t.requires_grad_(True)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    weight = torch.randn(b.shape, generator=g, dtype=torch.float64)

    def grads(fn):
        out = fn(log_a, b, h0)
        return torch.autograd.grad((out * weight).sum(), leaves)

    g_fast = grads(lambda la, bb, hh: chunked_linear_scan(la, bb, case["chunk"], hh, method=method))
    g_ref = grads(sequential_linear_scan)
    for name, gf, gr in zip(["log_a", "b", "h0"], g_fast, g_ref):
        assert gf is not None and torch.isfinite(gf).all(), name
        # the chunked scan computes in fp32 whatever the input dtype
        torch.testing.assert_close(gf, gr, atol=2e-4, rtol=2e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_known_closed_form():
    # constant a, b = 1: h_t = sum_{k<=t} a^k  (geometric series), h0 contributes a^t h0
    a = 0.9
    n = 50
    log_a = torch.full((1, n, 1), float(torch.log(torch.tensor(a))))
    b = torch.ones(1, n, 1)
    h0 = torch.full((1, 1), 2.0)
    out = chunked_linear_scan(log_a, b, chunk=7, h0=h0)[0, :, 0].double()
    t = torch.arange(1, n + 1, dtype=torch.float64)
    expected = (1 - a**t) / (1 - a) + a**t * 2.0
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [1, 3, 16, 64, 500])
@pytest.mark.parametrize("method", ["cumsum", "matrix"])
def test_chunk_size_does_not_change_result(chunk, method):
    g = torch.Generator().manual_seed(0)
    log_a = -torch.rand(2, 97, 8, generator=g)
    b = torch.randn(2, 97, 8, generator=g)
    torch.testing.assert_close(chunked_linear_scan(log_a, b, chunk, method=method),
                               chunked_linear_scan(log_a, b, 97, method=method), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 5, 6, 25, 26, 126, 4099])
def test_blocked_scan_at_block_boundaries(n):
    # lengths around powers of the block (5): padding and every recursion depth
    g = torch.Generator().manual_seed(n)
    log_a = -0.3 * torch.rand(2, n, 3, generator=g, dtype=torch.float64)
    b = torch.randn(2, n, 3, generator=g, dtype=torch.float64)
    out = chunked_linear_scan(log_a.float(), b.float(), method="blocked")
    assert out.shape == (2, n, 3)
    if n:
        torch.testing.assert_close(out.double(), sequential_linear_scan(log_a, b), atol=2e-5, rtol=1e-5)


def test_blocked_scan_has_no_data_dependent_shapes():
    # torch.compile traces it without graph breaks (the "cumsum" form picks its chunk from the data)
    explain = torch._dynamo.explain(lambda la, bb: chunked_linear_scan(la, bb, method="blocked"))
    report = explain(-torch.rand(1, 40, 4), torch.randn(1, 40, 4))
    assert report.graph_break_count == 0, report.break_reasons


def test_half_precision_inputs_keep_their_dtype():
    g = torch.Generator().manual_seed(0)
    log_a = -torch.rand(1, 40, 4, generator=g)
    b = torch.randn(1, 40, 4, generator=g)
    out = chunked_linear_scan(log_a.bfloat16(), b.bfloat16(), 16)
    assert out.dtype == torch.bfloat16
    ref = sequential_linear_scan(log_a.bfloat16().float(), b.bfloat16().float())
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_a_known_floor_gives_the_measured_result(regime):
    """With `log_a_floor` (a bound the caller knows) the cumsum form skips measuring log a; a true bound gives
    the same h, and a bound below `min_log_a` still clamps."""
    case = {"b": 2, "n": 150, "d": 4, "with_h0": True, "regime": regime, "seed": 3}
    log_a, b, h0 = _inputs(case)
    ref64 = sequential_linear_scan(log_a.double().clamp_min(-16.0), b.double(), h0.double())
    measured = chunked_linear_scan(log_a, b, 64, h0)
    for floor in (float(log_a.min()), REGIMES[regime][0]):
        known = chunked_linear_scan(log_a, b, 64, h0, log_a_floor=floor)
        torch.testing.assert_close(known, measured, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(known.double(), ref64, atol=1e-5 * max(1.0, ref64.abs().max().item()), rtol=1e-5)
