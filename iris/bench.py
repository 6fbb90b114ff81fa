"""`iris bench`: IRIS against peer backbones on the CPU (fp32), written as JSON, markdown and a PNG plot.

    iris bench                          # full run: nano/tiny/small/base, 128..1024 px (~15 min on 2 cores)
    iris bench --quick                  # smoke configuration (nano, 128/256 px, 1 repeat), < 60 s
    iris bench --variants nano,small --threads 1 --out bench-out

Sections (see DESIGN.md, "Benchmark conventions"):
- per_nfe: one forward (batch 1, the variant's default r) of each IRIS variant at its native resolution,
  next to diffusers' DiT, SANA and an SD-style UNet scaled to the same parameter count and to the same FLOPs
  per NFE, on the same latent grid, random weights, same process; reported as peer / IRIS time ratios.
- scaling: latency at 128/256/512/1024 px (latent 8^2..64^2 tokens), fitted exponent of time vs tokens.
- end_to_end: text encode + sampling + decode of one image at budgets (1,4), (4,4), (4,8), (8,16), and the
  studio's preview overhead (throttled previews vs none vs every iteration).
- memory: peak RSS of a full generation in a fresh subprocess (fp32 and fp16-stored weights), minus the RSS
  after imports.
- utilisation: counted FLOPs / measured time of a forward, over the CPU's fp32 2048^2 GEMM FLOP/s.
- demo: the bundled demo model (and its distilled student) end to end at the studio's budgets, with the
  FLOPs of a whole generation counted and their rate over the GEMM rate: the latency a user waits for.

FLOPs are counted with `torch.utils.flop_counter.FlopCounterMode`, with formulas registered for the CPU
attention kernel (dropped silently otherwise) and, approximately, for FFTs. Elementwise work (norms, scans,
activations) is not counted by FlopCounterMode for any model. diffusers and matplotlib are the `bench` extra.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import VARIANTS, variant_config

RESOLUTIONS = (128, 256, 512, 1024)
BUDGETS = ((1, 4), (4, 4), (4, 8), (8, 16))
PEERS = ("dit", "sana", "unet")
PEER_NAMES = {"dit": "DiT", "sana": "SANA", "unet": "SD-UNet"}
# Peak-memory figures quoted by the model card, in MB. Assumed to be tiny / small / base (fp32 weights).
CARD_PEAK_MB = {"tiny": 545, "small": 597, "base": 760}
PROMPT = "a red apple on a blue background"
# (model, steps, iterations, guidance): the studio's budgets on the bundled models
COMPILED = " (compiled)"  # a demo model name with this suffix runs `pipe.compile()` first
DEMO_BUDGETS = (("demo", 4, 8, 3.0), ("demo", 4, 8, 1.0), ("demo", 2, 4, 1.0), ("demo", 1, 4, 1.0),
                ("demo", 8, 16, 3.0), ("fast", 2, 4, 1.0), (f"demo{COMPILED}", 4, 8, 3.0),
                (f"demo{COMPILED}", 2, 4, 1.0))


# ------------------------------------------------------------------------------------------ FLOP counting
def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of aten._scaled_dot_product_flash_attention_for_cpu: QK^T and PV, 2 FLOPs per MAC."""
    b, h, lq, d = query_shape
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _fft_flop(n_total: int, n_transform: int, complex_input: bool) -> int:
    """~5 N log2 N per complex transform of length N (half that for real input or output)."""
    if n_transform <= 1:
        return 0
    per = 5 * n_transform * math.log2(n_transform) * (1.0 if complex_input else 0.5)
    return int(per * n_total / n_transform)


def _fft_r2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(self_shape[d] for d in dim)
    return _fft_flop(math.prod(self_shape), n, False)


def _fft_c2r_flop(self_shape, dim, normalization, last_dim_size, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(out_shape[d] for d in dim)
    return _fft_flop(math.prod(out_shape), n, False)


def _fft_c2c_flop(self_shape, dim, *args, out_shape=None, **kwargs) -> int:
    n = math.prod(self_shape[d] for d in dim)
    return _fft_flop(math.prod(self_shape), n, True)


def extra_flop_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas FlopCounterMode lacks: the CPU attention kernel (exact) and FFTs (approximate)."""
    aten = torch.ops.aten
    mapping: dict[Any, Callable[..., int]] = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _sdpa_cpu_flop
    mapping[aten._fft_r2c] = _fft_r2c_flop
    mapping[aten._fft_c2r] = _fft_c2r_flop
    mapping[aten._fft_c2c] = _fft_c2c_flop
    return mapping


def count_flops(model_fn: Callable[[], Any]) -> int:
    """Total FLOPs of one call of `model_fn()` (attention and FFTs included)."""
    # no_grad, not inference_mode: FlopCounterMode's module tracker fails on parameters passed as arguments
    # (SANA's norm_out) inside inference_mode
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:
        model_fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------- timing
def time_fn(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, max_seconds: float | None = None) -> float:
    """Median wall time in seconds of `fn()` over `repeats` runs after `warmup` runs.

    max_seconds: stop repeating early (at least one timed run) once the timed runs have taken this long.
    """
    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        times: list[float] = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if max_seconds is not None and sum(times) >= max_seconds:
                break
    return statistics.median(times)


def gemm_flops_per_s(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 FLOP/s of an n x n matmul on this CPU (current thread setting)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = time_fn(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n**3 / seconds


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------------ models
@dataclass
class Forward:
    """One benchmarkable forward: `fn()` runs a batch-1 NFE of `module` on prepared inputs."""

    name: str
    module: torch.nn.Module
    fn: Callable[[], Any]
    params: int
    config: dict[str, Any]


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def text_shape(variant: str) -> tuple[int, int]:
    """(tokens, width) of the text states a variant's generator reads."""
    cfg = variant_config(variant)
    return cfg.text.max_length, cfg.generator.text_dim


def iris_forward(variant: str, tokens_side: int, iterations: int | None = None, seed: int = 0) -> Forward:
    """An IRIS generator (random weights) and one NFE at a tokens_side^2 latent grid with r iterations."""
    from .models.generator import IrisGenerator, TextCondition

    cfg = variant_config(variant)
    g = cfg.generator
    r = iterations or cfg.sampler.iterations
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = IrisGenerator(g).eval()
        side = tokens_side * g.patch_size
        z = torch.randn(1, g.latent_channels, side, side)
        length, width = text_shape(variant)
        text = TextCondition(torch.randn(1, length, width), torch.ones(1, length, dtype=torch.bool))
    t = torch.full((1,), 0.5)
    fn = lambda: gen(z, t, text, r)
    return Forward(f"IRIS-{variant}", gen, fn, num_params(gen), {"iterations": r, "dim": g.dim})


def diffusers_available() -> str | None:
    """None when diffusers imports, else the reason it does not."""
    try:
        import diffusers  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        return f"diffusers not installed ({type(err).__name__})"
    return None


def _build_peer(kind: str, size: int, latent_channels: int, grid: int, text_dim: int):
    """A diffusers peer of width `size` (channels of the first UNet stage) for a grid x grid latent."""
    import diffusers

    c = latent_channels
    if kind == "dit":  # DiT-S/B-like depth 12, patch 1 on the latent grid (same token count as IRIS)
        hd = 64 if size % 64 == 0 else 32
        return diffusers.DiTTransformer2DModel(
            num_attention_heads=size // hd, attention_head_dim=hd, in_channels=c, out_channels=c, num_layers=12,
            sample_size=grid, patch_size=1, norm_num_groups=min(32, c),
        )
    if kind == "sana":  # SANA's linear-attention transformer, depth 12, head dim 32, patch 1
        return diffusers.SanaTransformer2DModel(
            in_channels=c, out_channels=c, num_attention_heads=size // 32, attention_head_dim=32, num_layers=12,
            num_cross_attention_heads=size // 32, cross_attention_head_dim=32, cross_attention_dim=size,
            caption_channels=text_dim, sample_size=grid, patch_size=1,
        )
    if kind == "unet":  # SD 1.x layout: (c, 2c, 4c, 4c), 2 ResBlocks per stage, cross-attention in 3 stages
        return diffusers.UNet2DConditionModel(
            sample_size=grid, in_channels=c, out_channels=c, block_out_channels=(size, 2 * size, 4 * size, 4 * size),
            layers_per_block=2, cross_attention_dim=text_dim, attention_head_dim=8,
            norm_num_groups=32 if size % 32 == 0 else 8,
        )
    raise ValueError(f"unknown peer {kind!r}")


PEER_STEP = {"dit": 32, "sana": 32, "unet": 8}
PEER_MAX = {"dit": 4096, "sana": 4096, "unet": 1024}
MAX_PEER_PARAMS = 400e6  # larger FLOP-matched peers are skipped: 1.6 GB of fp32 weights, minutes per NFE


def _peer_inputs(kind: str, latent_channels: int, grid: int, text_len: int, text_dim: int, device=None):
    z = torch.randn(1, latent_channels, grid, grid, device=device)
    t = torch.full((1,), 500.0, device=device)
    text = torch.randn(1, text_len, text_dim, device=device)
    if kind == "dit":
        labels = torch.zeros(1, dtype=torch.long, device=device)
        return lambda m: m(z, timestep=t.long(), class_labels=labels, return_dict=False)
    if kind == "sana":
        return lambda m: m(z, encoder_hidden_states=text, timestep=t, return_dict=False)
    return lambda m: m(z, t, encoder_hidden_states=text, return_dict=False)


def _peer_measure(kind: str, size: int, what: str, latent_channels: int, grid: int, text_len: int,
                  text_dim: int) -> float:
    """Parameters or FLOPs per NFE of a peer of `size`, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = _build_peer(kind, size, latent_channels, grid, text_dim).eval()
    if what == "params":
        return num_params(model)
    try:
        call = _peer_inputs(kind, latent_channels, grid, text_len, text_dim, device="meta")
        return count_flops(lambda: call(model))
    except Exception:  # an op without a meta kernel: count on real (small) tensors instead
        with torch.random.fork_rng(devices=[]):
            model = _build_peer(kind, size, latent_channels, grid, text_dim).eval()
        call = _peer_inputs(kind, latent_channels, grid, text_len, text_dim)
        return count_flops(lambda: call(model))


def _search_size(kind: str, target: float, what: str, latent_channels: int, grid: int, text_len: int,
                 text_dim: int, max_params: float = MAX_PEER_PARAMS) -> int | None:
    """Width (multiple of the peer's step) whose params/FLOPs are closest to target, on a log scale.

    None when matching FLOPs would need a peer of more than `max_params` parameters (within 20%).
    """
    step = PEER_STEP[kind]
    measure = lambda k: _peer_measure(kind, k * step, what, latent_channels, grid, text_len, text_dim)
    lo, hi = 1, PEER_MAX[kind] // step
    params = lambda k: _peer_measure(kind, k * step, "params", latent_channels, grid, text_len, text_dim)
    if what == "flops" and params(hi) > max_params:  # the widest peer under the parameter cap bounds the search
        a, b = lo, hi  # params(a) <= max_params < params(b)
        while b - a > 1:
            mid = (a + b) // 2
            a, b = (mid, b) if params(mid) <= max_params else (a, mid)
        hi = a
    cache: dict[int, float] = {}

    def m(k: int) -> float:
        if k not in cache:
            cache[k] = measure(k)
        return cache[k]

    if m(lo) >= target:
        return lo * step
    if m(hi) <= target:
        return hi * step if what == "params" or m(hi) >= 0.8 * target else None
    while hi - lo > 1:  # invariant m(lo) < target <= m(hi)
        mid = (lo + hi) // 2
        if m(mid) < target:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda k: abs(math.log(m(k) / target)))
    return best * step


def peer_models(target_params: float | None = None, target_flops: float | None = None, latent_channels: int = 16,
                grid: int = 16, text_len: int = 77, text_dim: int = 768, peers=PEERS,
                seed: int = 0) -> dict[str, Forward | str]:
    """Each diffusers peer scaled (width, at a fixed depth) to match a parameter count or FLOPs per NFE.

    Returns name -> Forward, or name -> a string saying why it is missing ("diffusers not installed").
    """
    if (target_params is None) == (target_flops is None):
        raise ValueError("give exactly one of target_params and target_flops")
    missing = diffusers_available()
    if missing:
        return {PEER_NAMES[k]: missing for k in peers}
    what, target = ("params", target_params) if target_params is not None else ("flops", target_flops)
    out: dict[str, Forward | str] = {}
    for kind in peers:
        try:
            size = _search_size(kind, float(target), what, latent_channels, grid, text_len, text_dim)
            if size is None:
                out[PEER_NAMES[kind]] = f"skipped: matching {target / 1e9:.0f} GFLOP needs over " \
                                        f"{MAX_PEER_PARAMS / 1e6:.0f}M parameters"
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _build_peer(kind, size, latent_channels, grid, text_dim).eval()
            call = _peer_inputs(kind, latent_channels, grid, text_len, text_dim)
            out[PEER_NAMES[kind]] = Forward(PEER_NAMES[kind], model, (lambda m=model, c=call: c(m)),
                                            num_params(model), {"width": size, "matched": what})
        except Exception as err:  # a diffusers version without this model or argument
            out[PEER_NAMES[kind]] = f"failed: {type(err).__name__}: {err}"[:200]
    return out


# ---------------------------------------------------------------------------------------------- analysis
def fit_exponent(tokens, times) -> float:
    """Least-squares slope of log(time) against log(tokens): time ~ tokens^exponent."""
    xs = [math.log(float(t)) for t in tokens]
    ys = [math.log(float(s)) for s in times]
    if len(xs) < 2:
        return float("nan")
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return float("nan")
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def _tokens_side(px: int, downsample: int = 16) -> int:
    return max(1, px // downsample)


# ------------------------------------------------------------------------------------------------ memory
_MEMORY_CHILD = r"""
import json, resource, sys, os
import torch
torch.set_num_threads(int(sys.argv[4]))
import open_clip  # noqa: F401  (the text encoders' tokenizer package: an import, not generation memory)
from iris.pipeline import IrisPipeline
def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def peak_now():
    # VmHWM: this process's own high-water mark. ru_maxrss also carries the RSS of the (large) parent
    # process at fork/exec time on Linux, so it overstates a child's peak; it is the fallback elsewhere.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
after = rss_now() if os.path.exists("/proc/self/statm") else peak_now()
peak_imports = peak_now()
variant, folder, budget = sys.argv[1], sys.argv[2], sys.argv[3]
steps, iterations = map(int, budget.split(","))
pipe = IrisPipeline.from_pretrained(folder) if folder != "-" else IrisPipeline.from_variant(variant)
loaded = rss_now()
pipe.generate("a red apple on a blue background", steps=steps, iterations=iterations, seed=0)
peak = peak_now()
print(json.dumps({"after_imports": after, "peak_imports": peak_imports, "after_load": loaded, "peak": peak}))
"""


def peak_rss(variant: str, stored: str, budget: tuple[int, int], threads: int, workdir: Path) -> dict[str, Any]:
    """Peak RSS (bytes) of one full generation in a fresh subprocess; stored: 'fp32' | 'fp16' weights on disk."""
    from .pipeline import IrisPipeline

    folder = workdir / f"{variant}-{stored}"
    if not folder.exists():
        pipe = IrisPipeline.from_variant(variant)
        pipe.save_pretrained(folder, dtype=torch.float16 if stored == "fp16" else None)
        del pipe
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, variant, str(folder), f"{budget[0]},{budget[1]}",
                           str(threads)], capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"}
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    mb = 1 / 1e6
    return {"after_imports_mb": round(data["after_imports"] * mb, 1),
            "after_load_mb": round(data["after_load"] * mb, 1), "peak_mb": round(data["peak"] * mb, 1),
            "delta_mb": round((data["peak"] - data["after_imports"]) * mb, 1)}


# --------------------------------------------------------------------------------------------- end to end
INTENDED_BUDGETS = ((1, 4), (2, 4), (4, 4))  # few steps, no guidance: the distilled model's budgets
UNET_STEPS = 25


def intended_vs_unet(variant: str, timeit: Callable[[Callable[[], Any]], float], repeats: int = 2,
                     budgets=INTENDED_BUDGETS, unet_steps: int = UNET_STEPS) -> list[dict[str, Any]]:
    """One whole image: IRIS at few steps without guidance (guidance 1: one conditional NFE per step) against
    a 25-step guided SD-style UNet.

    The UNet is matched to the IRIS generator's parameters on the same latent grid and runs each step as one
    batch-2 NFE (conditional and unconditional together); its text encoding and decoding are taken equal to
    IRIS's (the same encoder and VAE would serve it).
    """
    from .pipeline import IrisPipeline

    cfg = variant_config(variant)
    grid = cfg.resolution // cfg.vae.downsample
    pipe = IrisPipeline.from_variant(variant)
    pipe.generate(PROMPT, steps=1, iterations=1, guidance=1.0, seed=0)  # warm-up
    rows = []
    for steps, iterations in budgets:
        totals = []
        for _ in range(max(1, repeats)):
            pipe._text_cache.clear()
            totals.append(pipe.generate(PROMPT, steps=steps, iterations=iterations, guidance=1.0, seed=0,
                                        preview_fraction=None).timings)
        rows.append({"model": f"IRIS-{variant}", "steps": steps, "iterations": iterations, "guidance": 1.0,
                     "nfe": steps, "total_s": statistics.median(t["total_s"] for t in totals),
                     "sampling_s": statistics.median(t["sampling_s"] for t in totals)})
    overhead = statistics.median(r["total_s"] - r["sampling_s"] for r in rows)  # text + decode
    params = num_params(pipe.generator)
    length, width = text_shape(variant)
    del pipe
    peer = peer_models(target_params=params, latent_channels=cfg.generator.latent_channels, grid=grid,
                       text_len=length, text_dim=width, peers=("unet",))["SD-UNet"]
    if isinstance(peer, str):
        return rows + [{"model": "SD-UNet", "note": peer}]
    z, t = torch.randn(2, cfg.generator.latent_channels, grid, grid), torch.full((2,), 500.0)
    text = torch.randn(2, length, width)
    nfe_s = timeit(lambda: peer.module(z, t, encoder_hidden_states=text, return_dict=False))
    rows.append({"model": f"SD-UNet ({_m(peer.params)})", "steps": unet_steps, "iterations": None, "guidance": 7.5,
                 "nfe": 2 * unet_steps, "total_s": unet_steps * nfe_s + overhead, "sampling_s": unet_steps * nfe_s})
    unet_total = rows[-1]["total_s"]
    for r in rows[:-1]:
        r["speedup_vs_unet"] = unet_total / r["total_s"]
    return rows


def end_to_end(variant: str, budgets, repeats: int, guidance: float | None = None,
               estimate: Callable[[int, int], float] | None = None, max_run_s: float | None = None,
               preview_rounds: int = 1) -> tuple[list, dict]:
    """Text encode + sampling + decode of one image per budget, and the preview overhead at one budget.

    estimate(steps, iterations) -> predicted seconds of a run; budgets predicted over max_run_s are skipped
    (a row with "skipped") so that the whole benchmark keeps to its time box on slow CPUs.
    preview_rounds: interleaved rounds (none / throttled / every iteration) whose medians give the overhead.
    """
    from .pipeline import IrisPipeline

    pipe = IrisPipeline.from_variant(variant)
    rows = []

    def run(steps: int, iterations: int, **kw) -> dict[str, float]:
        pipe._text_cache.clear()  # count the text encoder every time, as a fresh prompt would
        t0 = time.perf_counter()
        cond = pipe.encode_text([PROMPT, ""])
        text_s = time.perf_counter() - t0
        del cond
        pipe._text_cache.clear()
        result = pipe.generate(PROMPT, steps=steps, iterations=iterations, guidance=guidance, seed=0, **kw)
        tm = result.timings
        total = tm["total_s"]
        return {"text_s": text_s, "sampling_s": tm["sampling_s"], "decode_s": max(0.0, total - tm["sampling_s"]
                - text_s), "total_s": total, "preview_s": tm.get("preview_s", 0.0), "nfe": tm.get("nfe", 0)}

    def median_run(steps: int, iterations: int, **kw) -> dict[str, float]:
        runs = [run(steps, iterations, **kw) for _ in range(max(1, repeats))]
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    too_long = lambda st, it: estimate is not None and max_run_s is not None and estimate(st, it) > max_run_s
    run(1, 1)  # warm-up
    for steps, iterations in budgets:
        if too_long(steps, iterations):
            rows.append({"variant": variant, "steps": steps, "iterations": iterations,
                         "skipped": f"estimated {estimate(steps, iterations):.0f} s > {max_run_s:.0f} s"})
            continue
        row = median_run(steps, iterations)
        rows.append({"variant": variant, "steps": steps, "iterations": iterations,
                     **{k: round(v, 4) for k, v in row.items()}})
    fitting = [b for b in budgets if not too_long(*b)] or [min(budgets, key=lambda b: b[0] * b[1])]
    steps, iterations = fitting[min(1, len(fitting) - 1)]  # (4, 4) in the full run
    if estimate is not None and max_run_s is not None and 3 * estimate(steps, iterations) > 2 * max_run_s:
        return rows, {"variant": variant, "steps": steps, "iterations": iterations,
                      "skipped": f"3 runs estimated at {3 * estimate(steps, iterations):.0f} s"}
    modes = {"none": {}, "throttled": {"on_preview": lambda e: None},
             "every": {"on_preview": lambda e: None, "preview_fraction": None}}
    totals: dict[str, list[float]] = {k: [] for k in modes}
    for _ in range(max(1, preview_rounds)):  # interleaved, so that a load change hits all three alike
        for k, kw in modes.items():
            totals[k].append(run(steps, iterations, **kw)["total_s"])
    base, throttled, every = (statistics.median(totals[k]) for k in modes)
    preview = {"variant": variant, "steps": steps, "iterations": iterations, "rounds": max(1, preview_rounds),
               "no_preview_s": round(base, 4),
               "throttled_s": round(throttled, 4), "every_iteration_s": round(every, 4),
               "throttled_overhead": round(throttled / base - 1, 4), "every_overhead": round(every / base - 1, 4)}
    return rows, preview


def demo_latency(budgets=DEMO_BUDGETS, repeats: int = 5, gemm: float | None = None) -> list[dict[str, Any]]:
    """The bundled demo model ("demo") and its distilled student ("fast") end to end, one image per budget:
    median seconds over `repeats` runs after 3 warm-up runs (a fresh process runs its first generations up to
    1.5x slower while its allocator and caches settle), the counted FLOPs of the whole generation (text,
    every NFE, VAE decode) and, given the GEMM rate, their share of it. Models that are not there are noted."""
    from .hub import demo_model_path
    from .pipeline import IrisPipeline

    pipes: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for model, steps, iterations, guidance in budgets:
        base, compiled = model.removesuffix(COMPILED), model.endswith(COMPILED)
        if model not in pipes:
            path = demo_model_path(fast=base == "fast")
            pipes[model] = IrisPipeline.from_pretrained(path) if (path / "config.json").is_file() else None
            if compiled and pipes[model] is not None:
                pipes[model].compile()
        pipe = pipes[model]
        row: dict[str, Any] = {"model": model, "steps": steps, "iterations": iterations, "guidance": guidance}
        if pipe is None:
            rows.append({**row, "note": "not installed"})
            continue
        run = lambda p=pipe, st=steps, it=iterations, g=guidance: p.generate(PROMPT, steps=st, iterations=it,
                                                                           guidance=g, seed=0)
        if compiled:  # the first run compiles (once per batch size: guided steps run 2, unguided 1)
            start = time.perf_counter()
            run()
            row["compile_s"] = time.perf_counter() - start
        seconds = time_fn(run, repeats=repeats, warmup=3)
        # compiled kernels run outside the FLOP counter: count the same generation on the eager model
        eager = pipes.get(base)
        flops = count_flops(lambda p=eager or pipe, st=steps, it=iterations, g=guidance: p.generate(
            PROMPT, steps=st, iterations=it, guidance=g, seed=0)) if compiled else count_flops(run)
        row.update(nfe=pipe.cost(steps, iterations, guidance).nfe, flops=flops, latency_s=seconds,
                   flops_per_s=flops / seconds)
        if gemm:
            row["fraction_of_gemm"] = flops / seconds / gemm
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ the run
@dataclass
class Settings:
    variants: tuple[str, ...]
    resolutions: tuple[int, ...]
    peer_resolutions: tuple[int, ...]
    budgets: tuple[tuple[int, int], ...]
    repeats: int
    warmup: int
    max_seconds: float
    match_flops: bool
    memory_variants: tuple[str, ...]
    memory_stored: tuple[str, ...]
    e2e_repeats: int
    e2e_max_s: float | None = None  # skip end-to-end budgets predicted to take longer than this


def settings_for(quick: bool, variants) -> Settings:
    variants = tuple(variants) if variants else (("nano",) if quick else tuple(VARIANTS))
    if quick:
        return Settings(variants, (128, 256), (128, 256), ((1, 4),), 1, 1, 2.0, True, variants[:1], ("fp32",), 1)
    return Settings(variants, RESOLUTIONS, RESOLUTIONS, BUDGETS, 3, 1, 6.0, True, variants, ("fp32", "fp16"), 1,
                    e2e_max_s=60.0)


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def run_benchmark(quick: bool = False, variants=None, out_dir: str | Path | None = None, threads: int | None = None,
                  verbose: bool = False) -> dict[str, Any]:
    """Run the benchmark; writes results.json, results.md and scaling.png into out_dir when given."""
    for v in variants or ():
        variant_config(v)  # raises InvalidInputError for unknown names
    if threads:
        torch.set_num_threads(threads)
    s = settings_for(quick, variants)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "meta": {"quick": quick, "variants": list(s.variants), "threads": torch.get_num_threads(),
                 "cpu_count": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
                 "machine": platform.machine(), "processor": platform.processor(), "load_average_start": load_average(),
                 "date": time.strftime("%Y-%m-%d %H:%M:%S"), "repeats": s.repeats, "warmup": s.warmup,
                 "diffusers": diffusers_available() or _diffusers_version()},
    }
    log = lambda m: _log(f"[{time.perf_counter() - start:6.1f}s] {m}", verbose)

    gemm = gemm_flops_per_s()
    results["gemm_flops_per_s"] = gemm
    log(f"GEMM {gemm / 1e9:.1f} GFLOP/s")
    timeit = lambda fn: time_fn(fn, s.repeats, s.warmup, s.max_seconds)

    demo_budgets = [b for b in DEMO_BUDGETS if b[1:] in ((2, 4, 1.0), (4, 8, 3.0)) and not b[0].endswith(COMPILED)
                    ] if quick else DEMO_BUDGETS
    results["demo"] = demo_latency(demo_budgets, repeats=1 if quick else 5, gemm=gemm)
    log(f"demo: {[(r['model'], r['steps'], r['iterations'], r.get('latency_s')) for r in results['demo']]}")

    # per-NFE at native resolution, against matched peers; utilisation rows alongside
    per_nfe, util, variants_info = [], [], {}
    reference_peers: dict[str, Forward | str] = {}
    reference = "small" if "small" in s.variants else s.variants[-1]
    for v in s.variants:
        cfg = variant_config(v)
        native = cfg.resolution
        side = _tokens_side(native, cfg.vae.downsample)
        length, width = text_shape(v)
        iris = iris_forward(v, side)
        flops = count_flops(iris.fn)
        t_iris = timeit(iris.fn)
        variants_info[v] = {"params": iris.params, "iterations": iris.config["iterations"], "native_px": native,
                            "tokens": side * side, "flops_per_nfe": flops, "latency_s": t_iris}
        util.append(_util_row(iris.name, native, flops, t_iris, gemm))
        log(f"{iris.name} {native}px: {t_iris * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP")
        matches = [("params", {"target_params": iris.params})]
        if s.match_flops:
            matches.append(("flops", {"target_flops": flops}))
        for match, target in matches:
            peers = peer_models(**target, latent_channels=cfg.generator.latent_channels, grid=side, text_len=length,
                                text_dim=width)
            if match == "params" and v == reference:
                reference_peers = peers
            for name, peer in peers.items():
                if isinstance(peer, str):
                    per_nfe.append({"variant": v, "match": match, "model": name, "px": native, "note": peer})
                    continue
                p_flops = count_flops(peer.fn)
                t_peer = timeit(peer.fn)
                per_nfe.append({"variant": v, "match": match, "model": name, "px": native, "params": peer.params,
                                "width": peer.config["width"], "flops_per_nfe": p_flops, "latency_s": t_peer,
                                "iris_latency_s": t_iris, "ratio": t_peer / t_iris})
                if match == "params":
                    util.append(_util_row(f"{name} (~{v})", native, p_flops, t_peer, gemm))
                log(f"  {name} ({match}, width {peer.config['width']}): {t_peer * 1e3:.1f} ms")
            del peers
        del iris
    results["variants"] = variants_info
    results["per_nfe"] = per_nfe
    results["utilisation"] = util

    # scaling with resolution: every IRIS variant, and the peers matched to the reference variant's params
    scaling: dict[str, Any] = {}
    for v in s.variants:
        iris = iris_forward(v, 8)
        scaling[iris.name] = _scale(iris, s.resolutions, timeit, lambda side, v=v: iris_forward(v, side).fn)
        log(f"scaling {iris.name}: {scaling[iris.name]['latency_s']}")
        del iris
    ref_cfg = variant_config(reference)
    length, width = text_shape(reference)
    for name, peer in reference_peers.items():
        if isinstance(peer, str):
            scaling[f"{name} (~{reference})"] = {"note": peer}
            continue
        kind = {v: k for k, v in PEER_NAMES.items()}[name]

        def make(side, kind=kind, peer=peer):
            call = _peer_inputs(kind, ref_cfg.generator.latent_channels, side, length, width)
            return lambda: call(peer.module)

        scaling[f"{name} (~{reference})"] = _scale(peer, s.peer_resolutions, timeit, make)
        log(f"scaling {name}: {scaling[f'{name} (~{reference})']['latency_s']}")
    reference_peers = {}
    results["scaling"] = scaling

    # equal FLOPs at the largest resolution too, where attention's N^2 term dominates the peers' FLOPs
    top = max(s.resolutions)
    if top > ref_cfg.resolution:
        side = _tokens_side(top, ref_cfg.vae.downsample)
        iris = iris_forward(reference, side)
        flops = count_flops(iris.fn)
        t_iris = dict(zip(scaling[iris.name]["px"], scaling[iris.name]["latency_s"]))[top]
        del iris
        peers = peer_models(target_flops=flops, latent_channels=ref_cfg.generator.latent_channels, grid=side,
                            text_len=length, text_dim=width, peers=("dit", "sana"))
        for name, peer in peers.items():
            row = {"variant": reference, "match": "flops", "model": name, "px": top, "iris_flops": flops,
                   "iris_latency_s": t_iris}
            if isinstance(peer, str):
                per_nfe.append({**row, "note": peer})
                continue
            p_flops = count_flops(peer.fn)
            t_peer = timeit(peer.fn)
            per_nfe.append({**row, "params": peer.params, "width": peer.config["width"], "flops_per_nfe": p_flops,
                            "latency_s": t_peer, "ratio": t_peer / t_iris})
            log(f"  {name} (flops at {top}px, width {peer.config['width']}): {t_peer * 1e3:.1f} ms")
        del peers

    # end to end and preview overhead
    e2e, previews = [], []
    for v in s.variants:
        info = variants_info[v]
        per_iteration = info["latency_s"] / info["iterations"]  # batch 1; CFG doubles the batch
        estimate = lambda st, it, p=per_iteration: 2 * st * it * p
        rounds = 1 if s.e2e_max_s is None or 9 * estimate(4, 4) > 2 * s.e2e_max_s else 3
        rows, preview = end_to_end(v, s.budgets, s.e2e_repeats, estimate=estimate, max_run_s=s.e2e_max_s,
                                   preview_rounds=rounds)
        e2e += rows
        previews.append(preview)
        log(f"end to end {v}: {[r.get('total_s', r.get('skipped')) for r in rows]}")
    results["end_to_end"] = e2e
    results["preview_overhead"] = previews
    results["intended_budget"] = intended_vs_unet(reference, timeit, repeats=1 if quick else 2)
    log(f"intended budget vs UNet: {[round(r.get('total_s', 0), 3) for r in results['intended_budget']]}")

    # peak memory, each generation in a fresh subprocess
    memory = []
    with tempfile.TemporaryDirectory(prefix="iris-bench-") as tmp:
        for v in s.memory_variants:
            for stored in s.memory_stored:
                # one sampler step at the default r: peak memory does not grow with steps (inference mode)
                budget = (1, variant_config(v).sampler.iterations)
                rss = peak_rss(v, stored, budget, torch.get_num_threads(), Path(tmp))
                row = {"variant": v, "weights": stored, "steps": budget[0], "iterations": budget[1], **rss,
                       "card_mb": CARD_PEAK_MB.get(v)}
                memory.append(row)
                log(f"memory {v} {stored}: {row}")
    results["memory"] = memory
    results["meta"]["load_average_end"] = load_average()
    results["meta"]["wall_s"] = round(time.perf_counter() - start, 1)

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
        (out / "results.md").write_text(to_markdown(results))
        plot(results, out / "scaling.png")
    return results


def _diffusers_version() -> str:
    import diffusers

    return f"diffusers {diffusers.__version__}"


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def _util_row(name: str, px: int, flops: int, seconds: float, gemm: float) -> dict[str, Any]:
    achieved = flops / seconds
    return {"model": name, "px": px, "flops": flops, "latency_s": seconds, "flops_per_s": achieved,
            "fraction_of_gemm": achieved / gemm}


def _scale(fwd: Forward, resolutions, timeit, make: Callable[[int], Callable[[], Any]]) -> dict[str, Any]:
    tokens, times = [], []
    for px in resolutions:
        side = _tokens_side(px)
        fn = make(side)
        times.append(timeit(fn))
        tokens.append(side * side)
    return {"params": fwd.params, "px": list(resolutions), "tokens": tokens, "latency_s": times,
            "exponent": fit_exponent(tokens, times) if len(tokens) > 1 else None}


# ------------------------------------------------------------------------------------------------ reports
def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.1f}"


def _m(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}M"


def _g(n: float | None) -> str:
    return "–" if n is None else f"{n / 1e9:.2f}"


def to_markdown(results: dict[str, Any]) -> str:
    """The benchmark's tables as markdown."""
    meta = results["meta"]
    lines = [
        "## IRIS benchmark (CPU, fp32, batch 1)",
        "",
        f"{meta['date']} · torch {meta['torch']} · {meta['threads']} threads on {meta['cpu_count']} CPUs · "
        f"{meta['diffusers']} · load average {meta.get('load_average_start')} → {meta.get('load_average_end')}"
        + (" · **quick smoke configuration**" if meta["quick"] else ""),
        "",
        f"fp32 2048² GEMM: **{results['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s**. Times are medians of "
        f"{meta['repeats']} runs after {meta['warmup']} warm-up; ratios are peer time / IRIS time in this process.",
        "",
        "### Per-NFE latency at native resolution (IRIS at its default r)",
        "",
        "| variant | px | IRIS params | IRIS GFLOP | IRIS ms | peer | matched | peer params | peer GFLOP | peer ms "
        "| peer / IRIS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    info = results["variants"]
    for row in results["per_nfe"]:
        v = info[row["variant"]]
        head = (f"| {row['variant']} (r={v['iterations']}) | {row['px']} | {_m(v['params'])} | "
                f"{_g(row.get('iris_flops', v['flops_per_nfe']))} | {_ms(row.get('iris_latency_s', v['latency_s']))} "
                f"| {row['model']} | {row['match']} |")
        if "note" in row:
            lines.append(f"{head} {row['note']} | – | – | – |")
        else:
            lines.append(f"{head} {_m(row['params'])} | {_g(row['flops_per_nfe'])} | {_ms(row['latency_s'])} | "
                         f"{row['ratio']:.2f}× |")
    lines += ["", "### Scaling with resolution (ms per NFE; exponent of time vs tokens)", ""]
    pxs = sorted({px for s in results["scaling"].values() for px in s.get("px", [])})
    lines.append("| model | params | " + " | ".join(f"{px} px ({_tokens_side(px) ** 2} tok)" for px in pxs)
                 + " | exponent |")
    lines.append("|---|---|" + "---|" * len(pxs) + "---|")
    for name, s in results["scaling"].items():
        if "note" in s:
            lines.append(f"| {name} | {s['note']} |" + " – |" * (len(pxs) + 1))
            continue
        by_px = dict(zip(s["px"], s["latency_s"]))
        exp = s.get("exponent")
        lines.append(f"| {name} | {_m(s['params'])} | " + " | ".join(_ms(by_px.get(px)) for px in pxs)
                     + f" | {'–' if exp is None else f'{exp:.2f}'} |")
    lines += ["", "### End to end, one image (CFG on, default guidance)", "",
              "| variant | steps × r | NFE | text ms | sampling ms | decode ms | total ms |",
              "|---|---|---|---|---|---|---|"]
    for r in results["end_to_end"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | {r['steps']} × {r['iterations']} | – | skipped: {r['skipped']} "
                         "| – | – | – |")
            continue
        lines.append(f"| {r['variant']} | {r['steps']} × {r['iterations']} | {int(r['nfe'])} | {_ms(r['text_s'])} | "
                     f"{_ms(r['sampling_s'])} | {_ms(r['decode_s'])} | {_ms(r['total_s'])} |")
    lines += ["", "Studio preview overhead (previews after every core iteration, throttled to 10% vs unthrottled):", "",
              "| variant | steps × r | no previews ms | throttled ms (overhead) | every iteration ms (overhead) |",
              "|---|---|---|---|---|"]
    for p in results["preview_overhead"]:
        if "skipped" in p:
            lines.append(f"| {p['variant']} | {p['steps']} × {p['iterations']} | skipped: {p['skipped']} | – | – |")
            continue
        lines.append(f"| {p['variant']} | {p['steps']} × {p['iterations']} | {_ms(p['no_preview_s'])} | "
                     f"{_ms(p['throttled_s'])} ({100 * p['throttled_overhead']:+.0f}%) | "
                     f"{_ms(p['every_iteration_s'])} ({100 * p['every_overhead']:+.0f}%) |")
    intended = results.get("intended_budget") or []
    if intended:
        lines += ["", f"Whole {intended[0]['model']} image at its intended budget (guidance 1: no CFG) against a "
                  f"{UNET_STEPS}-step guided UNet of the same size (same text encoder and VAE):", "",
                  "| model | steps × r | guidance | NFE | total ms | faster than the UNet |",
                  "|---|---|---|---|---|---|"]
        for r in intended:
            if "note" in r:
                lines.append(f"| {r['model']} | {r['note']} | – | – | – | – |")
                continue
            budget = f"{r['steps']} × {r['iterations']}" if r["iterations"] else f"{r['steps']}"
            faster = f"{r['speedup_vs_unet']:.1f}×" if "speedup_vs_unet" in r else "–"
            lines.append(f"| {r['model']} | {budget} | {r['guidance']:g} | {r['nfe']} | {_ms(r['total_s'])} | "
                         f"{faster} |")
    lines += ["", "### Peak memory of a full generation (fresh process, 1 step at the default r, CFG on)", "",
              "| variant | stored weights | RSS after imports MB | RSS after load MB | peak RSS MB | peak − imports MB "
              "| card MB |", "|---|---|---|---|---|---|---|"]
    for r in results["memory"]:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['weights']} | {r['error']} | – | – | – | {r.get('card_mb') or '–'} |")
            continue
        lines.append(f"| {r['variant']} | {r['weights']} | {r['after_imports_mb']:.0f} | {r['after_load_mb']:.0f} | "
                     f"{r['peak_mb']:.0f} | "
                     f"{r['delta_mb']:.0f} | {r.get('card_mb') or '–'} |")
    if results.get("demo"):
        lines += ["", "### The bundled models end to end (what a user waits for: text, sampling, decode)", "",
                  "| model | steps × r | guidance | NFE | GFLOP | ms | GFLOP/s | of GEMM |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in results["demo"]:
            budget = f"{r['model']} | {r['steps']} × {r['iterations']} | {r['guidance']:g}"
            if "note" in r:
                lines.append(f"| {budget} | {r['note']} | – | – | – | – |")
                continue
            share = f"{100 * r['fraction_of_gemm']:.0f}%" if "fraction_of_gemm" in r else "–"
            lines.append(f"| {budget} | {r['nfe']} | {_g(r['flops'])} | {_ms(r['latency_s'])} | "
                         f"{r['flops_per_s'] / 1e9:.1f} | {share} |")
        compiles = [f"{r['steps']} × {r['iterations']} {r['compile_s']:.0f} s" for r in results["demo"]
                    if "compile_s" in r]
        if compiles:
            lines += ["", f"Compiled rows: `pipe.compile()`, timed after the first run, which compiled "
                          f"({', '.join(compiles)}); their FLOPs are the eager model's."]
    lines += ["", "### Utilisation (counted FLOPs / time, over the GEMM rate)", "",
              "| model | px | GFLOP | ms | GFLOP/s | of GEMM |", "|---|---|---|---|---|---|"]
    for u in results["utilisation"]:
        lines.append(f"| {u['model']} | {u['px']} | {_g(u['flops'])} | {_ms(u['latency_s'])} | "
                     f"{u['flops_per_s'] / 1e9:.1f} | {100 * u['fraction_of_gemm']:.0f}% |")
    lines += ["", "FLOPs: `FlopCounterMode` with the CPU attention kernel and FFTs registered; elementwise work "
              "(norms, scans, activations) is not counted for any model.", ""]
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str | Path) -> Path:
    """Latency per NFE against tokens, log-log, one line per model (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for name, s in results["scaling"].items():
        if "note" in s:
            continue
        exp = s.get("exponent")
        label = name + (f" (∝ N^{exp:.2f})" if exp is not None else "")
        ax.plot(s["tokens"], [t * 1e3 for t in s["latency_s"]], marker="o",
                linestyle="-" if name.startswith("IRIS") else "--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("latent tokens per image (128 → 1024 px)")
    ax.set_ylabel("ms per NFE (batch 1, fp32)")
    meta = results["meta"]
    ax.set_title(f"IRIS vs peers on CPU ({meta['threads']} thread(s))" + (" — quick" if meta["quick"] else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["count_flops", "time_fn", "gemm_flops_per_s", "iris_forward", "peer_models", "fit_exponent",
           "run_benchmark", "to_markdown", "plot", "extra_flop_formulas"]
