"""ONNX export benchmark: numerics, file sizes, latency per NFE and peak memory, onnxruntime next to torch.

    python benchmarks/export_bench.py                      # random-weight nano (perturbed, as in the tests)
    python benchmarks/export_bench.py --model /path/to/model --runs 7 --threads 2

Prints markdown tables:
- numerics: max abs difference per graph (onnxruntime vs torch on the same inputs) and the final image's
  max / mean pixel difference against `IrisPipeline.generate` for the same seed and budget (fp32 and fp16);
- size: file size per graph, fp32 and fp16;
- speed: median latency of the text encoder, one NFE (batch 1: embed + r core iterations + decode) for
  each r, and the VAE decoder, in this process with the same thread count for both runtimes;
- memory: peak RSS of a whole generation (default budget) in a fresh subprocess per runtime, with the RSS
  after imports and the difference. The onnxruntime process runs the exported folder's own onnx_runner.py
  with torch made unimportable.
Timings on a CPU shared with other busy processes are unreliable; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iris import IrisPipeline  # noqa: E402
from iris.cli import load_pipeline  # noqa: E402
from iris.config import VARIANTS  # noqa: E402
from iris.export import check_export, compare_images, export_onnx, file_sizes  # noqa: E402
from iris.models.generator import TextCondition  # noqa: E402
from iris.onnx_runner import OnnxIris  # noqa: E402

PROMPT = "a red apple on a blue background"

RSS_PROBE = r"""
import json, sys, time
def rss():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out
mode, folder, threads, prompt = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "torch":
    import torch
    torch.set_num_threads(threads)
    from iris import IrisPipeline
    after = rss()["VmRSS"]
    pipe = IrisPipeline.from_pretrained(folder)
    run = lambda: pipe.generate(prompt, seed=0, preview_fraction=None)
else:
    import runpy
    sys.modules["torch"] = None  # the runner must not need torch
    import numpy, onnxruntime
    ns = runpy.run_path(folder + "/onnx_runner.py")
    after = rss()["VmRSS"]
    runner = ns["OnnxIris"](folder, threads=threads)
    run = lambda: runner.generate(prompt, seed=0)
loaded = rss()["VmRSS"]
run()
t0 = time.perf_counter()
run()
seconds = time.perf_counter() - t0
print(json.dumps({"after_imports_mb": after, "loaded_mb": loaded, "peak_mb": rss()["VmHWM"], "generate_s": seconds}))
"""


def perturb(module: torch.nn.Module, std: float = 0.02, seed: int = 0) -> None:
    """Small seeded noise on every parameter (random-init IRIS outputs exactly zero: adaLN-Zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def median_ms(fn, runs: int) -> float:
    fn()  # warm-up (session initialisation, caches)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def torch_nfe(pipe: IrisPipeline, text: TextCondition, shape: tuple[int, ...], r: int):
    gen = pipe.generator
    z = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    t = torch.full((shape[0],), 0.5)

    @torch.inference_mode()
    def run():
        c = gen.condition(t, text)
        e = gen.embed(z, c)
        s = gen.initial_state(e, torch.Generator().manual_seed(1))
        for i in range(1, r + 1):
            s = gen.iterate(s, e, c, text, i)
        return gen.decode(s, e, c)

    return run


def ort_nfe(runner: OnnxIris, res: str, tokens: np.ndarray, mask: np.ndarray, shape: tuple[int, ...], r: int):
    embed, iterate, decode = (runner.session(n, res) for n in ("embed", "iterate", "decode"))
    z = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    t = np.full((shape[0],), 0.5, dtype=np.float32)

    def run():
        c, e = embed.run(None, {"z": z, "t": t, "text": tokens, "text_mask": mask})
        s = np.random.default_rng(1).standard_normal(e.shape).astype(np.float32)
        for i in range(1, r + 1):
            s = iterate.run(None, {"s": s, "e": e, "c": c, "text": tokens, "text_mask": mask,
                                   "iteration": np.array(i, dtype=np.int64)})[0]
        return decode.run(None, {"s": s, "e": e, "c": c})[0]

    return run


def rss_probe(mode: str, folder: Path, threads: int) -> dict[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([sys.executable, "-c", RSS_PROBE, mode, str(folder), str(threads), PROMPT],
                          capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode:
        raise RuntimeError(f"{mode} probe failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="nano", help="variant name (random weights, perturbed) or model folder")
    p.add_argument("--runs", type=int, default=5, help="timed runs per measurement (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iterations", default="4,8", help="core iterations r per NFE to time, comma separated")
    p.add_argument("--out", help="keep the exports here (default: a temporary folder)")
    p.add_argument("--json", help="also write the measurements as JSON to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]

    pipe = load_pipeline(args.model, "cpu")
    if args.model.lower().removeprefix("iris-") in VARIANTS and not Path(args.model).exists():
        perturb(pipe.generator)
        perturb(pipe.previewer, 0.1, 1)
    cfg = pipe.config
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="iris-export-bench-"))
    folders = {"fp32": work / "onnx-fp32", "fp16": work / "onnx-fp16"}
    pipe.save_pretrained(work / "torch")
    manifests, export_s = {}, {}
    for name, folder in folders.items():
        t0 = time.perf_counter()
        manifests[name] = export_onnx(pipe, folder, fp16=name == "fp16")
        export_s[name] = time.perf_counter() - t0
    res = next(iter(manifests["fp32"]["resolutions"]))

    # numerics
    diffs = {name: check_export(pipe, folder, res, prompt=PROMPT, threads=args.threads)
             for name, folder in folders.items()}
    reference = pipe.generate(PROMPT, seed=0, preview_fraction=None)
    runners = {name: OnnxIris(folder, threads=args.threads) for name, folder in folders.items()}
    image_diff = {name: compare_images(r.generate(PROMPT, seed=0)[0], reference.image) for name, r in runners.items()}

    # speed
    shape = (1, *manifests["fp32"]["resolutions"][res]["latent_shape"])
    with torch.inference_mode():
        text = pipe.encode_text([PROMPT])
    tokens, mask = text.tokens.numpy(), text.mask.numpy()
    from iris.models.text import tokenize

    ids = tokenize([PROMPT, ""], cfg.text.max_length)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    speed: dict[str, dict[str, float]] = {"torch": {}, "fp32": {}, "fp16": {}}

    def timed_text_torch():
        with torch.inference_mode():
            pipe.text_encoder(ids)

    def timed_vae_torch():
        with torch.inference_mode():
            pipe.vae.decode(latents)

    speed["torch"]["text encoder (2 prompts)"] = median_ms(timed_text_torch, args.runs)
    for name, r in runners.items():
        sess = r.session("text_encoder")
        speed[name]["text encoder (2 prompts)"] = median_ms(lambda s=sess: s.run(None, {"ids": ids.numpy()}),
                                                            args.runs)
    for it in [int(x) for x in args.iterations.split(",")]:
        key = f"one NFE, r = {it}"
        speed["torch"][key] = median_ms(torch_nfe(pipe, text, shape, it), args.runs)
        for name, r in runners.items():
            speed[name][key] = median_ms(ort_nfe(r, res, tokens, mask, shape, it), args.runs)
    speed["torch"]["VAE decoder"] = median_ms(timed_vae_torch, args.runs)
    for name, r in runners.items():
        sess = r.session("vae_decoder", res)
        speed[name]["VAE decoder"] = median_ms(lambda s=sess: s.run(None, {"latents": latents.numpy()}), args.runs)

    # memory (fresh processes)
    memory = {"torch": rss_probe("torch", work / "torch", args.threads)}
    for name, folder in folders.items():
        memory[name] = rss_probe("ort", folder, args.threads)
    load_end = os.getloadavg()[0]

    # report
    sizes = {name: file_sizes(m) for name, m in manifests.items()}
    weights = [f for f in (work / "torch").glob("*.safetensors") if f.name != "preview.safetensors"]
    safetensors = sum(f.stat().st_size for f in weights)
    s = cfg.sampler
    print(f"## IRIS ONNX export: {cfg.name} ({pipe.source}), {res}, onnxruntime "
          f"{__import__('onnxruntime').__version__}, torch {torch.__version__.split('+')[0]}, "
          f"{args.threads} threads, load average {load_start:.1f} -> {load_end:.1f}\n")
    print(f"Export time: fp32 {export_s['fp32']:.1f} s, fp16 {export_s['fp16']:.1f} s. "
          f"Generation budget: {s.steps} steps x {s.iterations} iterations, guidance {s.guidance}, seed 0.\n")
    print("| graph | max abs diff fp32 | max abs diff fp16 | size fp32 (MB) | size fp16 (MB) |")
    print("|---|---|---|---|---|")
    for graph in ("text_encoder", "embed", "iterate", "decode", "vae_decoder"):
        key = graph if graph == "text_encoder" else f"{res}/{graph}"
        print(f"| {graph} | {diffs['fp32'][graph]:.1e} | {diffs['fp16'][graph]:.1e} | "
              f"{sizes['fp32'][key] / 1e6:.2f} | {sizes['fp16'][key] / 1e6:.2f} |")
    total = {n: sum(v.values()) / 1e6 for n, v in sizes.items()}
    print(f"| **all graphs** | | | **{total['fp32']:.2f}** | **{total['fp16']:.2f}** |")
    print(f"| (torch safetensors, for reference) | | | {safetensors / 1e6:.2f} | |")
    print(f"| **final image** vs torch, max / mean pixel levels | {image_diff['fp32'][0]} / "
          f"{image_diff['fp32'][1]:.3f} | {image_diff['fp16'][0]} / {image_diff['fp16'][1]:.3f} | | |\n")
    print(f"| latency (median of {args.runs}, ms) | torch | onnxruntime fp32 | onnxruntime fp16 |")
    print("|---|---|---|---|")
    for key in speed["torch"]:
        print(f"| {key} | {speed['torch'][key]:.1f} | {speed['fp32'][key]:.1f} | {speed['fp16'][key]:.1f} |")
    print(f"| whole generation ({s.steps}x{s.iterations}, CFG), s | {memory['torch']['generate_s']:.2f} | "
          f"{memory['fp32']['generate_s']:.2f} | {memory['fp16']['generate_s']:.2f} |\n")
    print("| memory (MB, one generation in a fresh process) | torch | onnxruntime fp32 | onnxruntime fp16 |")
    print("|---|---|---|---|")
    for label, key in (("RSS after imports", "after_imports_mb"), ("peak RSS", "peak_mb")):
        print(f"| {label} | " + " | ".join(f"{memory[n][key]:.0f}" for n in ("torch", "fp32", "fp16")) + " |")
    print("| peak minus after-imports | " + " | ".join(
        f"{memory[n]['peak_mb'] - memory[n]['after_imports_mb']:.0f}" for n in ("torch", "fp32", "fp16")) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "model": cfg.name, "resolution": res, "diffs": diffs, "image_diff": image_diff, "sizes": sizes,
            "speed_ms": speed, "memory": memory, "export_s": export_s, "load": [load_start, load_end]}, indent=2))
    if not args.out:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
