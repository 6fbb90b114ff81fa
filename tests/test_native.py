"""The fused C kernels (iris/models/native.c) equal the torch code they replace, and every way of not having
them (no compiler, a failing build, a damaged cached library, a wrong result, IRIS_NATIVE=0) falls back to
torch with a one-line reason instead of an error."""

from __future__ import annotations

import stat
import threading

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, tiny_config

from iris.files import cache_root
from iris.models import native
from iris.models.generator import CoreLayer, IrisGenerator, TextCondition
from iris.models.grfm import RecurrentBlock
from iris.models.layers import gelu_tanh
from iris.models.reference import plain_forms
from iris.models.scan import sequential_linear_scan

needs_kernels = pytest.mark.skipif(native.kernels() is None, reason=f"no kernels here: {native.status()}")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """native's state as before its first call, with its own cache folder; restored afterwards."""
    monkeypatch.setenv("IRIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_loaded", False)
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_status", "not loaded yet")
    return tmp_path


def _block(width: int, conv_width: int, column_major: bool) -> RecurrentBlock:
    torch.manual_seed(0)
    return perturb(RecurrentBlock(width, width, conv_width, column_major=column_major), std=0.3).eval()


@needs_kernels
def test_the_library_is_built_into_the_cache_folder():
    assert native.status().startswith("native kernels on")
    assert list((cache_root() / "native").glob("iris-kernels-*.so"))


def exact_mix(block: RecurrentBlock, projected: torch.Tensor) -> torch.Tensor:
    """The recurrent block's maths in float64, written out: conv, gates, one token at a time, output gate.
    (The module's own code scans in float32 whatever its dtype.)"""
    p = projected.double().transpose(1, 2) if block.column_major else projected.double()
    b, h, w, _ = p.shape
    y, r = p.reshape(b, h * w, -1).chunk(2, dim=-1)
    both = torch.cat([r, r.flip(1)])
    k, n = block.conv.kernel_size[0], both.shape[1]
    conv = F.conv1d(both.transpose(1, 2), block.conv.weight.double(), block.conv.bias.double(), padding=k - 1,
                    groups=both.shape[2])[..., :n].transpose(1, 2)
    gates = F.linear(conv, block.lru.gates.weight.double(), block.lru.gates.bias.double())
    gate_a, gate_x = torch.sigmoid(gates).chunk(2, dim=-1)
    log_a = -block.lru.c * gate_a * F.softplus(-block.lru.a_param.double())
    h_t = sequential_linear_scan(log_a, torch.sqrt((-torch.expm1(2 * log_a)).clamp_min(1e-12)) * gate_x * conv)
    out = F.linear(gelu_tanh(y) * 0.5 * (h_t[:b] + h_t[b:].flip(1)), block.out_proj.weight.double(),
                   block.out_proj.bias.double()).view(b, h, w, -1)
    return out.transpose(1, 2) if block.column_major else out


def _relative_error(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().max())


@needs_kernels
@pytest.mark.parametrize("hw", [(1, 1), (1, 3), (3, 1), (2, 2), (3, 5), (8, 8), (5, 12)])
@pytest.mark.parametrize("column_major", [False, True])
@pytest.mark.parametrize("conv_width", [4, 2])
def test_recurrent_block_kernels_compute_the_exact_maths(hw, column_major, conv_width):
    """Grids shorter than the conv, both scan orders, a width that is no multiple of the vector length, and the
    block's input as a slice of a wider projection (as the GRFM hands it over). Against the float64 maths the
    kernels stay within 1e-6, closer than the torch code's float32 chunked scan (up to about 1e-4 here: its
    exp(L) cumsum(exp(-L) b) loses digits when the decay inside a chunk is large)."""
    width, batch = 20, 3
    block = _block(width, conv_width, column_major)
    g = torch.Generator().manual_seed(1)
    projection = 2 * torch.randn(batch, *hw, 5 * width, generator=g)
    projected = projection[..., width : 3 * width]
    with torch.no_grad():
        fast = block.mix(projected)
        with plain_forms("native"):
            plain = block.mix(projected)
        exact = exact_mix(block, projected)
    assert exact.abs().max() > 1e-2
    assert _relative_error(fast, exact) < 1e-6
    assert _relative_error(plain, exact) < 3e-4


@needs_kernels
def test_norm_modulate_and_merge_equal_their_torch_code():
    layer = perturb(CoreLayer(tiny_config(dim=40, heads=2, afno_blocks=4), column_major=False), std=0.3).eval()
    g = torch.Generator().manual_seed(2)
    x, mods = 3 * torch.randn(2, 5, 7, 40, generator=g), torch.randn(2, 2, 1, 1, 40, generator=g)
    gate = torch.randn(2, 5, 7, 120, generator=g)[..., 40:80]  # a slice of a wider projection
    f, r, s = torch.randn(3, 2, 5, 7, 40, generator=g).unbind(0)
    alpha = torch.randn(40, generator=g)
    with torch.no_grad():
        fast = layer.norm_modulate(layer.norm1, x, mods[:, 0], mods[:, 1])
        with plain_forms("native"):
            plain = layer.norm_modulate(layer.norm1, x, mods[:, 0], mods[:, 1])
        merged = native.gated_merge(gate, f, r, s, alpha)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, r + torch.sigmoid(gate) * (f - r) + alpha * s, atol=1e-6, rtol=1e-6)


@needs_kernels
@pytest.mark.parametrize("n", [1, 13, 4096, 10_007])
def test_the_gelu_kernel_equals_torchs_tanh_gelu(n):
    """Sizes below, at and above one chunk of the kernel's parallel loop, and no multiple of the vector length;
    large inputs of both signs (the sigmoid's clamps)."""
    x = 30 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    with torch.no_grad():
        got = gelu_tanh(x)
    torch.testing.assert_close(got.double(), F.gelu(x.double(), approximate="tanh"), atol=1e-5, rtol=1e-6)


@needs_kernels
def test_the_mixer_uses_the_merge_kernel_and_equals_torch():
    layer = perturb(CoreLayer(tiny_config(dim=40, heads=2, afno_blocks=4), column_major=True), std=0.1).eval()
    x = torch.randn(2, 5, 7, 40, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast = layer.mixer(x)
        with plain_forms("native"):
            plain = layer.mixer(x)
    assert plain.abs().max() > 1e-2
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)


@needs_kernels
def test_the_kernels_run_only_where_torch_would_give_the_same():
    """Autograd, other dtypes and devices, and views with strided channels keep the torch code."""
    x = torch.randn(2, 3, 4, 8)
    with torch.no_grad():
        assert native.usable(x)
        assert not native.usable(x.to(torch.bfloat16))
        assert not native.usable(x.transpose(-1, -2))
    assert not native.usable(x)  # (autograd on)
    gen = perturb(IrisGenerator(tiny_config()), std=0.2)
    z, t = torch.randn(2, 4, 6, 6), torch.rand(2)
    text = TextCondition(torch.randn(2, 3, 16))
    gen(z, t, text, 2).square().mean().backward()  # training: torch ops, gradients as before
    assert gen.core[0].mixer.recurrent.conv.weight.grad.abs().max() > 0


def test_iris_native_0_turns_them_off(fresh, monkeypatch):
    monkeypatch.setenv("IRIS_NATIVE", "0")
    assert native.kernels() is None
    assert "IRIS_NATIVE=0" in native.status()
    assert not native.usable(torch.zeros(1, 1, 1, 4))


def test_no_compiler_falls_back_with_its_reason(fresh, monkeypatch):
    monkeypatch.setenv("CC", str(fresh / "no-such-compiler"))
    assert native.kernels() is None
    assert "no C compiler" in native.status()


def test_a_failing_build_falls_back_with_the_compilers_message(fresh, monkeypatch):
    cc = fresh / "broken-cc"
    cc.write_text("#!/bin/sh\necho 'fatal error: math.h: No such file or directory' >&2\nexit 1\n")
    cc.chmod(cc.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(cc))
    assert native.kernels() is None
    assert "math.h: No such file" in native.status() and "\n" not in native.status()
    assert not list((fresh / "cache" / "native").glob("*.so"))  # no half-written library left behind


@needs_kernels
def test_a_damaged_cached_library_is_built_again(fresh):
    path = native.library_path(native.compiler())
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a shared library")  # as a crashed or full-disk write might have left it
    assert native.kernels() is not None, native.status()
    assert path.stat().st_size > 1000


@needs_kernels
def test_kernels_that_disagree_with_torch_are_not_used(fresh, monkeypatch):
    monkeypatch.setattr(native, "TOLERANCE", -1.0)  # every comparison fails
    assert native.kernels() is None
    assert "disagrees with torch" in native.status()


@needs_kernels
def test_threads_asking_at_once_share_one_build(fresh):
    got: list = []
    threads = [threading.Thread(target=lambda: got.append(native.kernels())) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 4 and got[0] is not None and all(lib is got[0] for lib in got)
    assert len(list((fresh / "cache" / "native").glob("*.so"))) == 1
