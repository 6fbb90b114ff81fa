"""The `iris` command: generate and edit images, inspect models.

    iris generate "a red apple on a blue background" -o apple.png
    iris generate "a cat face" --model small --steps 4 --iterations 8      # random-weight variant
    iris info --model small
    iris edit photo.png "a cat face on a green background" --strength 0.6
    iris inpaint photo.png mask.png "a rocket"
    iris grid "a red apple on a blue background"      # the same seed across budgets, labelled
    iris upscale small.png --scale 2
    iris control edges.png "a sun on a purple background" --kind canny
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from .config import VARIANTS
from .options import add_arguments, option_values
from .sampling import SAMPLERS


def load_pipeline(model: str | None, device: str = "cpu", seed: int = 0):
    """A model folder, hub id or None (the bundled demo); a bare variant name gives random weights."""
    from .pipeline import IrisPipeline

    if model and model.lower().removeprefix("iris-") in VARIANTS and not Path(model).exists():
        return IrisPipeline.from_variant(model, seed=seed).to(device)
    return IrisPipeline.from_pretrained(model, device=device)


def _budget_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model folder, hub id, or variant name for random weights (default: demo)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--steps", type=int, help="sampler steps (default from the model)")
    p.add_argument("--iterations", "-r", type=int, help="core iterations per step (default from the model)")
    p.add_argument("--guidance", "-g", type=float, help="classifier-free guidance scale")
    p.add_argument("--negative", default="", help="negative prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--exit-threshold", type=float, help="adaptive exit: stop iterating once the core state settles")
    p.add_argument("--no-regional", dest="regional", action="store_false", default=None,
                   help="ignore where the prompt places its subjects (\"a cat on the left\"): one reading for the "
                        "whole image")
    p.add_argument("--output", "-o", default=None, help="output PNG (default: <task>-<seed>.png)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the core iteration (pays off over many images at one size on CUDA, or on a "
                        "CPU without the native kernels: where they run, it gains nothing)")


def _task_pipeline(args: argparse.Namespace):
    pipe = load_pipeline(args.model, args.device, args.seed)
    return pipe.compile() if args.compile else pipe


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return dict(negative_prompt=args.negative, steps=args.steps, iterations=args.iterations, guidance=args.guidance,
                seed=args.seed, sampler=args.sampler, exit_threshold=args.exit_threshold, regional=args.regional)


def _progress(quiet: bool):
    if quiet:
        return None

    def show(event) -> None:
        print(f"\r{event.label}  {100 * event.progress:5.1f}%  {event.elapsed:6.1f}s", end="", file=sys.stderr)

    return show


def _save(result, args: argparse.Namespace, task: str) -> None:
    from .pngmeta import save_png

    out = Path(args.output or f"{task}-{result.params['seed']}.png")
    paths = []
    for i, image in enumerate(result.images):
        path = out if len(result.images) == 1 else out.with_name(f"{out.stem}-{i}{out.suffix}")
        paths.append(save_png(image, path, result.params))
    if not args.quiet:
        print(file=sys.stderr)
    w, h = result.images[0].size
    total = result.timings.get("total_s", 0.0)
    print(f"wrote {', '.join(map(str, paths))} ({w}x{h}, {total:.2f}s)")


def cmd_generate(args: argparse.Namespace) -> int:
    pipe = _task_pipeline(args)
    result = pipe.generate(args.prompt, num_images=args.num_images, compose=args.compose,
                           on_preview=_progress(args.quiet), **option_values("generate", args), **_common(args))
    _save(result, args, "generate")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    pipe = _task_pipeline(args)
    result = pipe.edit(args.image, args.prompt, on_preview=_progress(args.quiet), **option_values("edit", args),
                       **_common(args))
    _save(result, args, "edit")
    return 0


def cmd_inpaint(args: argparse.Namespace) -> int:
    pipe = _task_pipeline(args)
    result = pipe.inpaint(args.image, args.mask, args.prompt, on_preview=_progress(args.quiet),
                          **option_values("inpaint", args), **_common(args))
    _save(result, args, "inpaint")
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    pipe = _task_pipeline(args)
    result = pipe.upscale(args.image, prompt=args.prompt, on_preview=_progress(args.quiet),
                          **option_values("upscale", args), **_common(args))
    _save(result, args, "upscale")
    return 0


def cmd_control(args: argparse.Namespace) -> int:
    pipe = _task_pipeline(args)
    result = pipe.control(args.image, args.prompt, on_preview=_progress(args.quiet),
                          **option_values("control", args), **_common(args))
    _save(result, args, "control")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    pipe = load_pipeline(args.model, "cpu")
    cfg = pipe.config
    print(f"model       {cfg.name}  ({pipe.source})")
    print(f"resolution  {cfg.resolution}px, latent {cfg.vae.latent_channels}x{cfg.resolution // cfg.vae.downsample}"
          f"x{cfg.resolution // cfg.vae.downsample} (1/{cfg.vae.downsample})")
    print(f"text        {cfg.text.kind} encoder, {cfg.text.max_length} tokens x {cfg.text.dim}")
    counts = pipe.num_parameters()
    for part, n in counts.items():
        print(f"params      {part:<16} {n / 1e6:8.2f}M")
    print(f"params      {'total':<16} {sum(counts.values()) / 1e6:8.2f}M")
    g = cfg.generator
    core = sum(p.numel() for p in pipe.generator.core.parameters())
    print(f"generator   dim {g.dim}, {g.heads} heads, core {g.core_layers} layers ({core / 1e6:.2f}M, shared)")
    for r in (4, 8, 12, 16):
        unique = counts["generator"]
        effective = unique + (r - 1) * core
        print(f"depth r={r:<3} {pipe.effective_depth(r):3d} layers, {effective / 1e6:7.1f}M effective params")
    s = cfg.sampler
    cost = pipe.cost()
    print(f"defaults    steps {s.steps}, iterations {s.iterations}, guidance {s.guidance}, sampler {s.sampler}"
          + ("  (distilled)" if cfg.distilled else "")
          + f": {cost.nfe} NFE, {cost.core_iterations} core passes")
    if cfg.adapters:
        print(f"adapters    {', '.join(cfg.adapters)}")
    from .models import native

    print(f"cpu         {native.status()}")
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from .grid import budget_grid
    from .pngmeta import save_png

    pipe = _task_pipeline(args)

    def shown(cell, index: int, total: int) -> None:
        if not args.quiet:
            print(f"\r{index + 1}/{total} {cell.label}        ", end="", file=sys.stderr)

    grid = budget_grid(pipe, args.prompt, iterations=args.grid_iterations, steps=args.grid_steps, seed=args.seed,
                       negative_prompt=args.negative, guidance=args.guidance, sampler=args.sampler, on_cell=shown)
    out = save_png(grid.image, Path(args.output or f"grid-{args.seed}.png"), grid.params)
    if not args.quiet:
        print(file=sys.stderr)
    total = sum(c.seconds for c in grid.cells)
    print(f"wrote {out} ({len(grid.cells)} budgets, {total:.1f}s)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_onnx, file_sizes

    pipe = load_pipeline(args.model, "cpu", args.seed)
    manifest = export_onnx(pipe, args.out_dir, resolutions=args.resolution, fp16=args.fp16, opset=args.opset)
    for name, size in file_sizes(manifest).items():
        print(f"{name:<28} {size / 1e6:8.2f} MB")
    print(f"wrote {Path(args.out_dir) / 'manifest.json'} ({manifest['model']}, {manifest['dtype']}, "
          f"{', '.join(manifest['resolutions'])}, {manifest['total_bytes'] / 1e6:.1f} MB)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_benchmark, to_markdown

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    results = run_benchmark(quick=args.quick, variants=variants, out_dir=args.out, threads=args.threads,
                            verbose=not args.quiet)
    print(to_markdown(results))
    out = Path(args.out)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'scaling.png'} ({results['meta']['wall_s']}s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="iris", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="text to image")
    p.add_argument("prompt")
    add_arguments(p, "generate")
    p.add_argument("--compose", action=argparse.BooleanOptionalAction, default=None,
                   help="draw each subject the prompt places on its own, then paste it where the prompt says (the "
                        "drafts in one batch; default: the model's)")
    p.add_argument("--num-images", "-n", type=int, default=1)
    _budget_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("edit", help="SDEdit: repaint an image towards a prompt")
    p.add_argument("image")
    p.add_argument("prompt")
    add_arguments(p, "edit")
    _budget_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("inpaint", help="regenerate the white region of a mask")
    p.add_argument("image")
    p.add_argument("mask")
    p.add_argument("prompt")
    add_arguments(p, "inpaint")
    _budget_args(p)
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("upscale", help="wavelet super-resolution, 2x or 4x")
    p.add_argument("image")
    p.add_argument("--prompt", default="")
    add_arguments(p, "upscale")
    _budget_args(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("control", help="generate following a control image (edges, scribble, colours)")
    p.add_argument("image")
    p.add_argument("prompt")
    add_arguments(p, "control")
    _budget_args(p)
    p.set_defaults(func=cmd_control)

    p = sub.add_parser("grid", help="one prompt and seed across a grid of budgets, labelled with times and NFE")
    p.add_argument("prompt")
    p.add_argument("--grid-iterations", default="1,2,4,8,16", help="core iterations across (comma-separated)")
    p.add_argument("--grid-steps", default="1,2,4,8", help="sampler steps down (comma-separated)")
    _budget_args(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("export", help="export to ONNX for mobile and edge runtimes (needs the onnx extra)")
    p.add_argument("out_dir")
    p.add_argument("--model", "-m", help="model folder, hub id or variant name for random weights (default: demo)")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute (inputs and outputs stay float32)")
    p.add_argument("--resolution", action="append", help="WIDTH or WIDTHxHEIGHT; repeatable (default: native)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--seed", type=int, default=0, help="weight seed of a random-weight variant")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="CPU benchmark against DiT, SANA and an SD UNet (needs the bench extra)")
    p.add_argument("--quick", action="store_true", help="smoke configuration: nano, 128/256 px, 1 repeat")
    p.add_argument("--variants", help="comma-separated variants (default: all; nano with --quick)")
    p.add_argument("--out", default="bench-results", help="output folder for results.json/.md and scaling.png")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("info", help="parameter counts and effective depth")
    p.add_argument("--model", "-m", help="model folder, hub id or variant name (default: demo)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .errors import IrisError

    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        if getattr(args, "output", None):  # before the run: a folder or /dev/null as output is refused at once
            from .files import check_target

            check_target(args.output)
        return args.func(args)
    except IrisError as err:
        print(f"\niris: error: {err}" if not getattr(args, "quiet", True) else f"iris: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\niris: interrupted after {time.perf_counter() - start:.1f}s", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `iris info | head -1`: the reader has gone, which is no error of ours to report
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's last flush does not complain either
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by it
    except OSError as err:  # e.g. an output folder that cannot be written: after the progress line, on its own
        print(f"\niris: error: {err}" if not getattr(args, "quiet", True) else f"iris: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
