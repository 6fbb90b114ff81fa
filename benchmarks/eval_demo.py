"""Evaluate a model (default: the bundled demo) with the strict judge (`iris.judge`, shipped weights).

    python benchmarks/eval_demo.py                                   # the demo model and its distilled student
    python benchmarks/eval_demo.py --model /tmp/nano_rand --prompts 8 --budgets 1x2
    python benchmarks/eval_demo.py --compare-untrained --out results.json
    python benchmarks/eval_demo.py --legacy-classifier               # also the old 207-way classifier's number

Prints markdown tables (see `iris.eval.format_markdown`) and writes every number as JSON. The judge names
the emoji among every emoji the font renders (~1,400 classes). `--legacy-classifier` loads the old
207-way classifier from the user cache (or trains it once, a few minutes on one core).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from iris import IrisPipeline
from iris.eval import (
    DEFAULT_BUDGETS,
    DEFAULT_STEPS,
    DISTILLED_BUDGETS,
    TASKS,
    evaluate,
    format_markdown,
    get_classifier,
    parse_budgets,
)
from iris.hub import demo_model_path
from iris.judge import load_judge


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="model folders or hub ids, comma-separated ('demo' and 'fast': the bundled model and its "
                        "distilled student; default: both, the student when installed)")
    p.add_argument("--prompts", type=int, default=60, help="held-out single-sprite prompts (each in one of five "
                   "phrasings)")
    p.add_argument("--pairs", type=int, default=None, help="held-out two-sprite prompts (default prompts // 3)")
    p.add_argument("--seeds", type=int, default=2, help="images per prompt, each with its own seed")
    p.add_argument("--judge", default=None, help="judge weights (default: the shipped assets/eval/ file)")
    p.add_argument("--legacy-classifier", action="store_true",
                   help="also report the old 207-way classifier's emoji accuracy")
    p.add_argument("--budgets", default=None,
                   help="steps x iterations, comma-separated (default: " + ",".join(f"{s}x{r}" for s, r in
                   DEFAULT_BUDGETS) + "; for a distilled model " + ",".join(f"{s}x{r}" for s, r in
                   DISTILLED_BUDGETS) + ")")
    p.add_argument("--task-budget", default=None, help="budget of the upscale/inpaint/control runs, e.g. 4x8 "
                   "(default: the model's sampler defaults)")
    p.add_argument("--task-scenes", type=int, default=None,
                   help="scenes for the task metrics (default min(prompts, 32))")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"task metrics to run (any of {', '.join(TASKS)}; '' = none)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--compare-untrained", action="store_true",
                   help="also evaluate a randomly initialised model of the same config (seed 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--classifier-steps", type=int, default=DEFAULT_STEPS,
                   help="training steps of the legacy classifier when it is not cached")
    args = p.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    tb = parse_budgets(args.task_budget)[0] if args.task_budget else None
    tasks = [t for t in args.tasks.replace(" ", "").split(",") if t]
    specs = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else ["demo"] + (
        ["fast"] if (demo_model_path(fast=True) / "config.json").is_file() else [])

    clf = get_classifier(steps=args.classifier_steps, log=_log) if args.legacy_classifier else None
    judge = load_judge(args.judge)
    results = {}
    for spec in specs:
        t0 = time.perf_counter()
        folder = {"demo": None, "fast": demo_model_path(fast=True)}.get(spec, spec)
        pipe = IrisPipeline.from_pretrained(folder, device=args.device)
        _log(f"loaded {pipe!r} in {time.perf_counter() - t0:.1f}s")
        budgets = parse_budgets(args.budgets) if args.budgets else (
            DISTILLED_BUDGETS if pipe.config.distilled else DEFAULT_BUDGETS)
        kw = dict(n_prompts=args.prompts, budgets=budgets, seed=args.seed, classifier=clf, judge=judge,
                  n_pairs=args.pairs, seeds=args.seeds, task_budget=tb, n_task=args.task_scenes,
                  tasks=tasks if not pipe.config.distilled else [t for t in tasks if t != "vae"],
                  guidance=args.guidance, log=_log)
        results[spec] = evaluate(pipe, **kw)
        print(format_markdown(results[spec], title=f"{pipe.config.name} ({spec})"))
        if args.compare_untrained:
            untrained = IrisPipeline.from_config(pipe.config, seed=0, source=f"untrained:{pipe.config.name}")
            untrained.to(args.device)
            results[f"{spec}:untrained"] = evaluate(untrained, **kw)
            print(format_markdown(results[f"{spec}:untrained"],
                                  title=f"{pipe.config.name}, untrained (random init, seed 0)"))
    if args.out:
        Path(args.out).write_text(json.dumps(_jsonable(results), indent=2) + "\n")
        _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
