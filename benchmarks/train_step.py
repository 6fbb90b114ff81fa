"""Training throughput of the demo config: samples/s of one text-stage step, the data apart, and the share of
this CPU's fp32 GEMM rate its counted FLOPs reach; the generator's plain forms against the shipped ones.

    python benchmarks/train_step.py                     # configs/demo/text.toml on the bundled model, 2 threads
    python benchmarks/train_step.py --batch 16 --threads 1 --steps 6

One batch is drawn once and reused, so the time is the optimisation step alone (forward, backward, AdamW, EMA);
drawing a batch of fresh emoji scenes is timed separately. Outputs are not compared here: the plain forms equal
the shipped ones in value and gradient (tests/test_fast_paths.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from iris.bench import extra_flop_formulas, gemm_flops_per_s  # noqa: E402
from iris.models.reference import plain_forms  # noqa: E402
from iris.train.config import TrainConfig  # noqa: E402
from iris.train.trainer import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/demo/text.toml"))
    ap.add_argument("--model", default=str(ROOT / "assets/models/iris-nano-emoji"))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per form, interleaved")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig.from_toml(args.config, [f"model={args.model!r}", f"out_dir={out!r}",
                                                  f"batch_size={args.batch}", "sample_every=0", "save_every=0"])
        trainer = Trainer(cfg)
        t0 = time.perf_counter()
        batch = trainer.next_batch()
        data_s = time.perf_counter() - t0
        trainer.next_batch = lambda: batch  # the same batch every step: the step alone is timed
        trainer.train_step()  # warm-up
        with FlopCounterMode(display=False, custom_mapping=extra_flop_formulas()) as counter:  # with autograd
            trainer.train_step()
        flops = counter.get_total_flops()
        gemm = gemm_flops_per_s()
        times: dict[str, list[float]] = {"plain": [], "shipped": []}
        for _ in range(args.steps):
            for name in times:
                t0 = time.perf_counter()
                if name == "plain":
                    with plain_forms():
                        trainer.train_step()
                else:
                    trainer.train_step()
                times[name].append(time.perf_counter() - t0)
    print(f"demo text stage, batch {args.batch}, {args.threads} threads, {flops / 1e9:.1f} GFLOP per step, "
          f"GEMM {gemm / 1e9:.0f} GFLOP/s\n")
    print("| generator forms | s per step | samples/s | of the GEMM rate |")
    print("|---|---|---|---|")
    for name, ts in times.items():
        s = statistics.median(ts)
        print(f"| {name} | {s:.2f} | {args.batch / s:.1f} | {100 * flops / s / gemm:.0f}% |")
    print(f"\ndrawing one batch of {args.batch} fresh scenes: {data_s:.2f} s "
          f"({args.batch / data_s:.0f} samples/s on one core)")


if __name__ == "__main__":
    main()
