"""iris bench: FLOP counting (attention included), the scaling fit, and the quick benchmark end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iris import bench


class OnlyAttention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_flop_counter_counts_cpu_attention():
    b, h, lq, lk, d = 2, 3, 40, 24, 16
    q, k, v = torch.randn(b, h, lq, d), torch.randn(b, h, lk, d), torch.randn(b, h, lk, d)
    flops = bench.count_flops(lambda: OnlyAttention()(q, k, v))
    assert flops == 4 * b * h * lq * lk * d > 0


def test_flop_counter_still_counts_matmuls():
    layer = nn.Linear(32, 64)
    x = torch.randn(5, 32)
    assert bench.count_flops(lambda: layer(x)) == 2 * 5 * 32 * 64


def test_fit_exponent_recovers_known_exponents():
    tokens = [64, 256, 1024, 4096]
    for exponent in (0.5, 1.0, 1.37, 2.0):
        times = [0.003 * n**exponent for n in tokens]
        assert bench.fit_exponent(tokens, times) == pytest.approx(exponent, abs=1e-9)
    noisy = [0.01 * n * f for n, f in zip(tokens, (1.05, 0.97, 1.02, 0.99))]
    assert bench.fit_exponent(tokens, noisy) == pytest.approx(1.0, abs=0.05)
    assert math.isnan(bench.fit_exponent([64], [1.0]))


def test_time_fn_returns_a_median():
    calls = []
    assert bench.time_fn(lambda: calls.append(1), repeats=3, warmup=2) >= 0
    assert len(calls) == 5


@pytest.mark.slow
def test_quick_benchmark_writes_results(tmp_path):
    results = bench.run_benchmark(quick=True, out_dir=tmp_path, threads=1)
    for name in ("results.json", "results.md", "scaling.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0
    data = json.loads((tmp_path / "results.json").read_text())
    for key in ("meta", "gemm_flops_per_s", "variants", "per_nfe", "scaling", "end_to_end", "preview_overhead",
                "memory", "utilisation"):
        assert key in data, key
    assert data["meta"]["quick"] and list(data["variants"]) == ["nano"]
    assert data["variants"]["nano"]["flops_per_nfe"] > 0 and data["gemm_flops_per_s"] > 0
    assert data["scaling"]["IRIS-nano"]["tokens"] == [64, 256]
    assert data["end_to_end"][0]["total_s"] > 0
    assert "error" not in data["memory"][0] and data["memory"][0]["peak_mb"] > data["memory"][0]["after_imports_mb"]
    models = {row["model"] for row in data["per_nfe"]}
    assert models == {"DiT", "SANA", "SD-UNet"}
    if bench.diffusers_available() is None:
        assert all("ratio" in row for row in data["per_nfe"])
    else:
        assert all(row["note"].startswith("diffusers not installed") for row in data["per_nfe"])
    intended = data["intended_budget"]
    assert [(r["steps"], r["iterations"]) for r in intended[:3]] == list(bench.INTENDED_BUDGETS)
    assert all(r["guidance"] == 1 and r["total_s"] > 0 for r in intended[:3])
    if bench.diffusers_available() is None:
        unet = intended[-1]
        assert unet["nfe"] == 2 * bench.UNET_STEPS and unet["total_s"] > unet["sampling_s"] > 0
        assert all(r["speedup_vs_unet"] == pytest.approx(unet["total_s"] / r["total_s"]) for r in intended[:3])
    demo = {(r["model"], r["steps"], r["iterations"], r["guidance"]): r for r in data["demo"]}
    assert set(demo) == {("demo", 4, 8, 3.0), ("demo", 2, 4, 1.0), ("fast", 2, 4, 1.0)}
    guided, quick = demo[("demo", 4, 8, 3.0)], demo[("demo", 2, 4, 1.0)]
    assert guided["nfe"] == 7 and quick["nfe"] == 2  # first step unguided (guidance_max_t)
    assert guided["flops"] > 3 * quick["flops"] > 0 and guided["latency_s"] > 0
    rate = guided["flops"] / guided["latency_s"]
    assert 0 < guided["fraction_of_gemm"] == pytest.approx(rate / data["gemm_flops_per_s"])
    md = (tmp_path / "results.md").read_text()
    assert "The bundled models end to end" in md
    assert "Per-NFE latency" in md and "Scaling with resolution" in md and "Utilisation" in md
    assert "intended budget" in md
    assert md == bench.to_markdown(results)


def test_flop_matched_peers_over_the_parameter_cap_are_skipped():
    if bench.diffusers_available() is not None:
        pytest.skip("diffusers is not installed (pip install -e '.[bench]')")
    # IRIS-base's 1.4 TFLOP per NFE at 512 px would need a DiT of billions of parameters
    assert bench._search_size("dit", 1.4e12, "flops", 16, 32, 77, 768) is None
    width = bench._search_size("dit", 1.1e11, "flops", 16, 16, 77, 768)  # IRIS-small's FLOPs at 256 px
    assert width is not None and bench._peer_measure("dit", width, "params", 16, 16, 77, 768) < bench.MAX_PEER_PARAMS
    peers = bench.peer_models(target_flops=1.4e12, grid=32, peers=("dit",))
    assert peers["DiT"].startswith("skipped: matching 1400 GFLOP needs over 400M parameters")


def test_peer_rows_say_when_diffusers_is_missing(monkeypatch):
    monkeypatch.setattr(bench, "diffusers_available", lambda: "diffusers not installed (ImportError)")
    peers = bench.peer_models(target_params=1e6)
    assert peers == {name: "diffusers not installed (ImportError)" for name in ("DiT", "SANA", "SD-UNet")}


def test_bench_subcommand_parses():
    from iris.cli import build_parser, cmd_bench

    args = build_parser().parse_args(["bench", "--quick", "--variants", "nano,small", "--out", "x", "--threads", "1"])
    assert args.func is cmd_bench and args.quick and args.variants == "nano,small" and args.threads == 1
