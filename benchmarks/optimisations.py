"""Before/after timings of each generator optimisation, measured in one process on random weights.

Each row times one NFE of an IRIS generator with an optimisation off and on, interleaving the two so that
machine noise hits both alike, and reports the median of each and their ratio. Outputs are compared too:
every optimisation must leave the velocity unchanged to within fp32 round-off.

    python benchmarks/optimisations.py                      # small at 256 and 512 px, 2 threads
    python benchmarks/optimisations.py --variant nano --px 128 256 --threads 1 --compile
    python benchmarks/optimisations.py --demo                # the bundled model, whole generations, plain forms
    python benchmarks/optimisations.py --demo --rows gelu,inject --repeats 15

Benchmark on an idle machine: two thread pools sharing the cores with another busy process slow down
10-30x, not 2x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import torch

from iris.bench import iris_forward
from iris.config import variant_config
from iris.models.grfm import AFNO2D, GRFM, RGLRU, ManhattanAttention
from iris.models.reference import PLAIN_FORMS, baseline, plain_forms

# what each entry of iris.models.reference.PLAIN_FORMS replaces, as "plain form -> optimised form"
PLAIN_FORM_NAMES = {
    "afno": "separable DFT + 8 einsums -> one DFT matmul each way + block bmm",
    "conv": "nn.Conv1d (channels first) -> 4 addcmul in [B, N, W]",
    "scan": "chunk loop, exp -> all chunks at once, exp2",
    "exp": "RG-LRU normaliser exp -> exp2",
    "rate": "RG-LRU decay rate -c softplus(-Lambda) per call -> cached",
    "gelu": "tanh-GELU kernel -> x sigmoid(x (a + b x^2))",
    "inject": "W_u [s, e] per iteration -> W_e e once per call, W_s s per iteration",
    "projection": "3 input linears -> one fused linear; merge in 3 ops",
    "attention": "decomposed Manhattan attention on 5-D tensors -> 4-D batches of rows and columns",
    "adaln": "adaLN modulate and gate in 3 ops each -> 1 addcmul each, table pre-broadcast",
    "native": "torch ops -> fused C kernels (recurrent conv, RG-LRU + output gate, norm + modulate, merge, GELU)",
}


def _interleaved(fn_a: Callable[[], torch.Tensor], fn_b: Callable[[], torch.Tensor], repeats: int):
    """Median seconds of fn_a and fn_b, run alternately after one warm-up each (which goes first alternates too),
    their outputs, and the median of the per-pair ratios time_a / time_b (the speed-up: robust to the machine's
    speed drifting between pairs)."""
    with torch.inference_mode():
        out_a, out_b = fn_a(), fn_b()
        ta, tb = [], []
        for i in range(repeats):
            pair = ((fn_a, ta), (fn_b, tb))
            for fn, times in pair if i % 2 == 0 else pair[::-1]:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(ta, tb))
    return statistics.median(ta), statistics.median(tb), out_a, out_b, ratio


@contextmanager
def _setting(modules, attr: str, value):
    old = [getattr(m, attr) for m in modules]
    for m in modules:
        setattr(m, attr, value)
    try:
        yield
    finally:
        for m, v in zip(modules, old):
            setattr(m, attr, v)


def _seeded(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        torch.manual_seed(0)  # the core's initial state is drawn from the global generator here
        return fn()

    return run


def _randomise_zero_inits(module: torch.nn.Module) -> None:
    """adaLN-Zero leaves a fresh generator's output at 0; random values make the output comparison real."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            if p.numel() and bool((p == 0).all()):
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


def rows_for(variant: str, px: int, repeats: int, compile_: bool) -> list[dict]:
    cfg = variant_config(variant)
    tokens_side = px // (cfg.vae.downsample * cfg.generator.patch_size)
    fwd = iris_forward(variant, tokens_side)
    gen = fwd.module
    _randomise_zero_inits(gen)
    run = _seeded(fwd.fn)
    mods = lambda cls: [m for m in gen.modules() if isinstance(m, cls)]
    rows = []

    def measure(name: str, before: str, after: str, ctx_before, ctx_after=None, around=nullcontext) -> None:
        def with_ctx(ctx):
            def fn():
                with around(), ctx():
                    return run()
            return fn

        fa = with_ctx(ctx_before)
        fb = with_ctx(ctx_after if ctx_after is not None else nullcontext)
        ta, tb, oa, ob, ratio = _interleaved(fa, fb, repeats)
        rows.append({"variant": variant, "px": px, "optimisation": name, "before": before, "after": after,
                     "before_ms": ta * 1e3, "after_ms": tb * 1e3, "speedup": ratio,
                     "max_abs_diff": float((oa - ob).abs().max())})
        print(_row_md(rows[-1]), flush=True)

    # 1. the Manhattan decay bias [H, N, N] built once, not per layer and iteration
    def uncached():
        @contextmanager
        def ctx():
            attn = mods(ManhattanAttention)
            saved = [a._bias.get for a in attn]
            for a in attn:
                a._bias.get = lambda key, build: build()
            try:
                yield
            finally:
                for a, g in zip(attn, saved):
                    a._bias.get = g
        return ctx()

    measure("cached Manhattan bias", "rebuilt per call", "cached", uncached)

    # 2. cross-attention keys/values of the text, once per generation (here: once for all calls)
    @contextmanager
    def no_kv_cache():
        from iris.models import layers

        orig = layers.CrossAttention.forward

        def forward(self, x, text, text_mask, cache=None):
            return orig(self, x, text, text_mask, None)

        layers.CrossAttention.forward = forward
        try:
            yield
        finally:
            layers.CrossAttention.forward = orig

    measure("cached text keys/values", "per layer and iteration", "once", no_kv_cache)

    # 3. Fourier mixing: DFT-as-matmul against torch.fft on this grid
    measure("AFNO transform", "torch.fft", "auto (" + ("DFT" if tokens_side**2 <= 256 else "FFT") + ")",
            lambda: _setting(mods(AFNO2D), "impl", "fft"))

    # 4. the scan: data-dependent chunks in a loop against static blocks
    lrus = [m.recurrent.lru for m in mods(GRFM)]
    measure("scan form", "cumsum", "blocked", lambda: _setting(lrus, "method", "cumsum"),
            lambda: _setting(lrus, "method", "blocked"), around=lambda: plain_forms("native"))  # (torch's scans)

    # the optimised paths of iris.models.reference, each against its plain form, then all at once
    for name, what in PLAIN_FORM_NAMES.items():
        measure(name, "plain", what, lambda name=name: plain_forms(name), around=lambda name=name: baseline(name))
    measure("all of the above", "plain", "optimised", plain_forms)

    # 5. threads
    n = torch.get_num_threads()
    if n > 1:
        @contextmanager
        def one_thread():
            torch.set_num_threads(1)
            try:
                yield
            finally:
                torch.set_num_threads(n)

        measure("threads", "1", str(n), one_thread)

    if compile_:
        t0 = time.perf_counter()
        eager = gen.iterate
        with _setting(lrus, "method", "blocked"):
            gen.iterate = torch.compile(eager, dynamic=False)
            with torch.inference_mode():
                run()
            seconds = time.perf_counter() - t0
            compiled = gen.iterate
            gen.iterate = eager

            @contextmanager
            def eager_ctx():
                yield

            @contextmanager
            def compiled_ctx():
                gen.iterate = compiled
                try:
                    yield
                finally:
                    gen.iterate = eager

            measure(f"torch.compile of the core iteration ({seconds:.0f} s to compile)", "eager", "compiled",
                    eager_ctx, compiled_ctx)
    return rows


DEMO_ROWS = (*PLAIN_FORMS, "all", "chunk", "layout")


def demo_rows(budgets: list[tuple[int, int, float]], repeats: int, only: tuple[str, ...] = DEMO_ROWS) -> list[dict]:
    """Whole generations of the bundled demo model: every optimisation alone in its plain form (before) against
    the shipped code (after), then all of them at once, the scan's chunk length and the conv layout; `only`
    picks rows by name (`DEMO_ROWS`)."""
    from iris import IrisPipeline

    pipe = IrisPipeline.from_pretrained()
    rows = []
    for steps, iterations, guidance in budgets:
        def run(steps=steps, iterations=iterations, guidance=guidance):
            return pipe.generate("a red apple on a blue background", steps=steps, iterations=iterations,
                                 guidance=guidance, seed=1).latents

        for name in [n for n in (*PLAIN_FORMS, "all") if n in only]:
            def plain(name=name):
                with baseline(name), plain_forms(*(() if name == "all" else (name,))):
                    return run()

            def shipped(name=name):
                with baseline(name):
                    return run()

            ta, tb, oa, ob, ratio = _interleaved(plain, shipped, repeats)
            rows.append({"variant": "demo", "px": f"{steps} × {iterations}, g {guidance:g}", "optimisation": name,
                         "before": "plain", "after": PLAIN_FORM_NAMES.get(name, "all optimised"),
                         "before_ms": ta * 1e3, "after_ms": tb * 1e3, "speedup": ratio,
                         "max_abs_diff": float((oa - ob).abs().max())})
            print(_row_md(rows[-1]), flush=True)

        # the scan's chunk length: 16 tokens (four chunks joined in a loop on the 8 x 8 grid) against the model's
        lrus = [m for m in pipe.generator.modules() if isinstance(m, RGLRU)]

        def short_chunks(lrus=lrus, run=run):
            with plain_forms("native"), _setting(lrus, "chunk", 16):  # (the chunks of torch's scan)
                return run()

        def model_chunks(run=run):
            with plain_forms("native"):
                return run()

        if "chunk" not in only:
            continue
        ta, tb, oa, ob, ratio = _interleaved(short_chunks, model_chunks, repeats)
        rows.append({"variant": "demo", "px": f"{steps} × {iterations}, g {guidance:g}", "optimisation": "scan chunk",
                     "before": "16 tokens", "after": f"{lrus[0].chunk} tokens", "before_ms": ta * 1e3,
                     "after_ms": tb * 1e3, "speedup": ratio, "max_abs_diff": float((oa - ob).abs().max())})
        print(_row_md(rows[-1]), flush=True)
    if "layout" in only:
        rows += conv_layout_rows(pipe, budgets, repeats)
    return rows


def conv_layout_rows(pipe, budgets: list[tuple[int, int, float]], repeats: int) -> list[dict]:
    """The VAE, preview decoder and adapters with contiguous conv weights (before) against the shipped
    channels-last ones (after): whole generations, without and with a live preview after every core iteration
    (the studio's view); the two VAE decodes of the final latents are compared."""
    import copy

    plain = copy.copy(pipe)
    plain.vae, plain.previewer, plain.adapters = (copy.deepcopy(m).to(memory_format=torch.contiguous_format)
                                                  for m in (pipe.vae, pipe.previewer, pipe.adapters))
    rows = []
    for steps, iterations, guidance in budgets:
        for previews in (False, True):
            def run(p, steps=steps, iterations=iterations, guidance=guidance, previews=previews):
                kwargs = {"on_preview": lambda event: None} if previews else {}
                return p.generate("a red apple on a blue background", steps=steps, iterations=iterations,
                                  guidance=guidance, seed=1, preview_fraction=None, **kwargs).latents

            ta, tb, za, zb, ratio = _interleaved(lambda: run(plain), lambda: run(pipe), repeats)
            with torch.inference_mode():
                oa, ob = plain.vae.decode(za), pipe.vae.decode(zb)
            rows.append({"variant": "demo", "px": f"{steps} × {iterations}, g {guidance:g}"
                         + (", every preview" if previews else ""), "optimisation": "conv layout",
                         "before": "contiguous conv weights", "after": "channels-last (VAE, previews, adapters)",
                         "before_ms": ta * 1e3, "after_ms": tb * 1e3, "speedup": ratio,
                         "max_abs_diff": float((oa - ob).abs().max())})
            print(_row_md(rows[-1]), flush=True)
    return rows


def _row_md(r: dict) -> str:
    return (f"| {r['variant']} | {r['px']} | {r['optimisation']} | {r['before']} → {r['after']} | "
            f"{r['before_ms']:.1f} | {r['after_ms']:.1f} | {r['speedup']:.2f}× | {r['max_abs_diff']:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="small")
    ap.add_argument("--px", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the core iteration")
    ap.add_argument("--demo", action="store_true",
                    help="the bundled model, whole generations at 4 x 8 guided and 2 x 4 unguided, each optimisation "
                         "against its plain form (iris.models.reference)")
    ap.add_argument("--rows", default="", help=f"with --demo: comma-separated rows, of {', '.join(DEMO_ROWS)}")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.demo:
        print(f"torch {torch.__version__}, {args.threads} threads, whole generations (latents compared)\n")
        print("| model | budget | optimisation | before → after | before ms | after ms | speedup | max abs diff |")
        print("|---|---|---|---|---|---|---|---|")
        only = tuple(args.rows.split(",")) if args.rows else DEMO_ROWS
        unknown = sorted(set(only) - set(DEMO_ROWS))
        if unknown:
            ap.error(f"unknown --rows {', '.join(unknown)}; choose from {', '.join(DEMO_ROWS)}")
        demo_rows([(4, 8, 3.0), (2, 4, 1.0)], args.repeats, only)
        return
    print(f"torch {torch.__version__}, {args.threads} threads, one NFE at the variant's default iterations\n")
    print("| variant | px | optimisation | before → after | before ms | after ms | speedup | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    for px in args.px:
        rows_for(args.variant, px, args.repeats, args.compile)


if __name__ == "__main__":
    main()
