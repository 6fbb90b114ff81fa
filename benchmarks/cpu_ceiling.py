"""Where the bundled demo model's CPU time goes, and two ways of running it that were measured and not adopted.

1. The GEMM rate at the demo's own linear shapes (rows = 2 guidance halves x 64 tokens), each timed alone,
   against a 2048^2 GEMM: whether small matrices are what holds the model back.
2. One guided NFE at r = 8, profiled: the share of its time spent inside GEMMs (addmm, mm, bmm, baddbmm)
   and the number of other ops.
3. Alternatives to the batched guided NFE at 2 intra-op threads, interleaved in one process:
   - the two guidance halves on two Python threads at 1 intra-op thread each;
   - the core FFNs as dynamically quantised int8 linears (not within 1e-5 of fp32, so never a default).

    python benchmarks/cpu_ceiling.py --threads 2

Run it on an idle machine: a second busy process makes thread pools spin and changes every ratio.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.profiler import ProfilerActivity, profile

from iris import IrisPipeline
from iris.models.generator import IrisGenerator, TextCondition

GEMM_OPS = ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm")


def gemm_rate(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """GFLOP/s of addmm [m, k] x [k, n] + bias, repeated for about `seconds`."""
    a, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    for _ in range(5):
        torch.addmm(b, a, w.t())
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.addmm(b, a, w.t())
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def linear_shapes(gen: IrisGenerator, rows: int) -> list[tuple[int, int, int]]:
    """Distinct (rows, in, out) of the linears inside the core layers."""
    shapes = {(rows, m.in_features, m.out_features) for m in gen.core.modules() if isinstance(m, torch.nn.Linear)}
    return sorted(shapes)


def guided_nfe(gen: IrisGenerator, z: torch.Tensor, text: TextCondition, iterations: int) -> torch.Tensor:
    """One velocity call: z [B, C, h, w] -> v [B, C, h, w] at t = 0.5, the core from s_0 = 0."""
    with torch.inference_mode():
        c = gen.condition(torch.full((z.shape[0],), 0.5), text)
        e = gen.embed(z, c)
        s = gen.run_core(torch.zeros_like(e), e, c, text, iterations)
        return gen.decode(s, e, c)


def interleaved(fns: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, run in turn `repeats` times after one warm-up."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def quantised_ffn(gen: IrisGenerator) -> IrisGenerator:
    """A copy whose core FFN linears are dynamically quantised to int8 weights."""
    q = copy.deepcopy(gen)
    for layer in q.core:
        with warnings.catch_warnings():  # torch.ao.quantization is deprecated in favour of torchao
            warnings.simplefilter("ignore")
            layer.ffn = torch.ao.quantization.quantize_dynamic(layer.ffn, {torch.nn.Linear}, dtype=torch.qint8)
    return q


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="assets/models/iris-nano-emoji")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = IrisPipeline.from_pretrained(args.model)
    gen = pipe.generator
    f, ch = pipe.latent_factor, pipe.config.generator.latent_channels
    res = pipe.config.resolution
    z1 = torch.randn(1, ch, res // f, res // f)
    z2 = torch.cat([z1, z1])
    with torch.inference_mode():
        cond, uncond = pipe.encode_text(["a red apple on a blue background"]), pipe.encode_text([""])
    mask = None if cond.mask is None else torch.cat([cond.mask, uncond.mask])
    both = TextCondition(torch.cat([cond.tokens, uncond.tokens]), mask)

    shapes = linear_shapes(gen, z2.shape[0] * z2.shape[2] * z2.shape[3])
    rates = [gemm_rate(m, k, n) for m, k, n in shapes]
    peak = gemm_rate(2048, 2048, 2048, seconds=3.0)
    print(f"## GEMM rate, {args.threads} threads: 2048^2 {peak:.0f} GFLOP/s")
    print("| addmm rows x in -> out | GFLOP/s | of the 2048^2 rate |\n|---|---|---|")
    for (m, k, n), g in zip(shapes, rates):
        print(f"| {m} x {k} -> {n} | {g:.0f} | {100 * g / peak:.0f}% |")

    for _ in range(3):
        guided_nfe(gen, z2, both, args.iterations)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        guided_nfe(gen, z2, both, args.iterations)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    print(f"\n## One guided NFE at r = {args.iterations}, profiled: GEMMs {100 * gemm / total:.0f}% of the op time")
    print("| op | calls | share of the op time |\n|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"| `{e.key}` | {e.count} | {100 * e.self_cpu_time_total / total:.1f}% |")

    pool = ThreadPoolExecutor(2)

    def batched() -> torch.Tensor:
        torch.set_num_threads(args.threads)
        return guided_nfe(gen, z2, both, args.iterations)

    def two_threads() -> torch.Tensor:
        torch.set_num_threads(1)
        halves = [pool.submit(guided_nfe, gen, z1, t, args.iterations) for t in (cond, uncond)]
        return torch.cat([h.result() for h in halves])

    qgen = quantised_ffn(gen)

    def int8_ffn() -> torch.Tensor:
        torch.set_num_threads(args.threads)
        return guided_nfe(qgen, z2, both, args.iterations)

    ref = batched()
    forms = {"two_threads": two_threads, "int8_ffn": int8_ffn}
    errors = {k: float((fn() - ref).norm() / ref.norm()) for k, fn in forms.items()}
    ms = interleaved({"batched": batched, "two_threads": two_threads, "int8_ffn": int8_ffn}, args.repeats)
    torch.set_num_threads(args.threads)
    print(f"\n## One guided NFE at r = {args.iterations}, median of {args.repeats}, interleaved")
    print("| form | ms | speed-up | relative error of v |\n|---|---|---|---|")
    print(f"| batched halves, {args.threads} intra-op threads (the engine) | {ms['batched']:.1f} | 1.00x | 0 |")
    print(f"| the halves on 2 Python threads, 1 intra-op thread each | {ms['two_threads']:.1f} | "
          f"{ms['batched'] / ms['two_threads']:.2f}x | {errors['two_threads']:.1e} |")
    print(f"| core FFN linears as dynamic int8 | {ms['int8_ffn']:.1f} | {ms['batched'] / ms['int8_ffn']:.2f}x | "
          f"{errors['int8_ffn']:.1e} |")


if __name__ == "__main__":
    main()
