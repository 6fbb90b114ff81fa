"""`iris-train STAGE --config FILE`: train one stage (or adapter), resume, export.

    iris-train vae  --config configs/demo/vae.toml
    iris-train text --config configs/demo/text.toml --set steps=20000 --set batch_size=32
    iris-train text --config configs/demo/text.toml --set time_limit=60 --set data.workers=8   # an hour's run
    torchrun --nproc_per_node 8 -m iris.train.cli text --config configs/small/text.toml   # many GPUs
"""

from __future__ import annotations

import argparse
import signal
import sys

from .config import STAGES, TrainConfig


def stop_on_signals(trainer) -> dict:
    """SIGINT (Ctrl-C) and SIGTERM (`kill`) finish the current step, save a checkpoint and stop; a second
    signal stops at once. Installed explicitly, because a job started with `&` from a script ignores SIGINT.
    Returns the previous handlers, for `signal.signal` to put back."""

    def handler(signum: int, frame) -> None:
        if trainer.stop_requested:
            raise KeyboardInterrupt
        trainer.stop_requested = True
        print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this step", file=sys.stderr)

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iris-train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=STAGES, help="which stage or adapter to train")
    parser.add_argument("--config", default="", help="TOML file with the run's settings")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set optim.lr=1e-4 (repeatable)")
    parser.add_argument("--model", help="start model: variant name or model folder")
    parser.add_argument("--out", help="output folder (checkpoints, logs, samples, export)")
    parser.add_argument("--steps", type=int, help="total steps")
    parser.add_argument("--export", metavar="FOLDER", help="where to write the trained model (default OUT/export)")
    args = parser.parse_args(argv)
    overrides = [f"stage={args.stage!r}".replace("'", '"')] + args.set
    if args.model:
        overrides.append(f'model="{args.model}"')
    if args.out:
        overrides.append(f'out_dir="{args.out}"')
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    try:
        cfg = TrainConfig.from_toml(args.config, overrides)
    except (OSError, ValueError) as err:
        print(f"iris-train: {err}", file=sys.stderr)
        return 2
    from ..errors import IrisError
    from .trainer import Trainer

    try:
        trainer = Trainer(cfg)
    except (IrisError, OSError, ValueError) as err:
        print(f"iris-train: {err}", file=sys.stderr)
        return 2
    previous_handlers = stop_on_signals(trainer)
    try:
        trainer.train()
        if trainer.stop_requested:
            trainer.save_checkpoint()
            print(f"stopped at step {trainer.step}, checkpoint saved: run the same command to resume",
                  file=sys.stderr)
            return 130
        if trainer.step < cfg.steps:  # stopped by the time limit: keep a checkpoint to go on from
            trainer.save_checkpoint()
            print(f"time limit reached at step {trainer.step}", file=sys.stderr)
        trainer.barrier()
        path = trainer.export(args.export)
        if trainer.rank == 0:
            print(f"exported {cfg.stage} model to {path}")
    except KeyboardInterrupt:
        print("\nstopped without saving: the command resumes from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        trainer.close()
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
