"""Teacher trajectories for distillation, solved once and cached, so a student can train on them for many
epochs at a fraction of the teacher's cost.

    python -m iris.train.trajectories --model assets/models/iris-nano-emoji --out traj.safetensors --n 4000

For training captions of the procedural emoji scenes (train split, so the held-out evaluation scenes are
never seen), the teacher solves its classifier-free-guided flow ODE from seeded noise with Euler steps and
records the state at every solver time. `iris-train distill --set distill_method=trajectory
--set distill_cache=FILE` then teaches a student to map each state straight to the solve's end point.

The file is safetensors: `states` [N, K, C, h, w] (the state at times[k]), `ends` [N, C, h, w] (x0), and in
its metadata the captions, the times and how they were made.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import sampling
from ..models.generator import IrisGenerator, TextCondition
from ..pipeline import IrisPipeline


@dataclass
class Trajectories:
    """Cached teacher solves: states [N, K, C, h, w] at `times`[:K], end points [N, C, h, w], captions."""

    states: torch.Tensor
    ends: torch.Tensor
    captions: list[str]
    times: list[float]
    meta: dict[str, str]

    def __len__(self) -> int:
        return len(self.captions)


def guided_velocity(gen: IrisGenerator, z: torch.Tensor, t: torch.Tensor, cond: TextCondition, null: TextCondition,
                    iterations: int, guidance: float, rng: torch.Generator) -> torch.Tensor:
    """A teacher's classifier-free-guided velocity at z [B, C, h, w], t [B], as the pipeline computes it: both
    branches in one batch, sharing the initial core state s_0 (drawn from `rng`). Guidance 1 runs the prompt
    branch alone."""
    b = z.shape[0]
    if guidance == 1.0:
        return gen(z, t, cond, iterations, state_generator=rng)
    mask = None if cond.mask is None else torch.cat([cond.mask, null.mask])
    text = TextCondition(torch.cat([cond.tokens, null.tokens]), mask)
    c = gen.condition(torch.cat([t, t]), text)
    e = gen.embed(torch.cat([z, z]), c)
    s0 = gen.initial_state(e[:b], rng)
    state = gen.run_core(torch.cat([s0, s0]), e, c, text, iterations)
    return sampling.cfg_combine(*gen.decode(state, e, c).chunk(2), guidance)


def solve_from(gen: IrisGenerator, text_encoder: torch.nn.Module, z: torch.Tensor, captions: list[str],
               times: list[float], iterations: int, guidance: float, rng: torch.Generator,
               guidance_max_t: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The guided Euler solve from z [B, C, h, w] along `times`: (states at times[:-1] [B, K, C, h, w], end).
    Guidance applies at t <= guidance_max_t, as the pipeline's guidance interval does."""
    b = z.shape[0]
    cond, null = text_encoder.encode(captions), text_encoder.encode([""] * b)
    states = []
    for t, t_next in zip(times[:-1], times[1:]):
        states.append(z)
        g = sampling.guidance_at(t, guidance, guidance_max_t)
        v = guided_velocity(gen, z, torch.full((b,), t, device=z.device), cond, null, iterations, g, rng)
        z = sampling.euler_step(z, v, t, t_next)
    return torch.stack(states, dim=1), z


@torch.inference_mode()
def solve(pipe: IrisPipeline, captions: list[str], seed: int, steps: int, iterations: int, guidance: float,
          size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The guided Euler solve of `captions` (one each) from noise seeded by `seed`: (states [B, steps, C, h, w],
    ends [B, C, h, w], times)."""
    side = (size or pipe.config.resolution) // pipe.latent_factor
    rng = torch.Generator().manual_seed(seed)
    z = torch.randn((len(captions), pipe.config.vae.latent_channels, side, side), generator=rng).to(pipe.device)
    times = sampling.flow_timesteps(steps, pipe.config.sampler.shift)
    states, end = solve_from(pipe.generator, pipe.text_encoder, z, captions, times, iterations, guidance, rng,
                             pipe.config.sampler.guidance_max_t)
    return states.float().cpu(), end.float().cpu(), times


def training_captions(n: int, start: int, seed: int = 0) -> list[str]:
    """Captions of train-split emoji scenes start .. start + n (the split of scene seed `seed`)."""
    from .emoji import EmojiScenes, SceneConfig

    scenes = EmojiScenes(SceneConfig(seed=seed), "train")
    return [scenes.plan(start + i).caption for i in range(n)]


def build(model: str | None, n: int, seed: int, batch: int = 64, steps: int | None = None,
          iterations: int | None = None, guidance: float | None = None, log=print) -> Trajectories:
    """Solve `n` trajectories of the teacher at `model` (defaults: its sampler's steps, iterations, guidance)."""
    pipe = IrisPipeline.from_pretrained(model)
    s = pipe.config.sampler
    steps, iterations = steps or s.steps, iterations or s.iterations
    guidance = s.guidance if guidance is None else guidance
    start = seed * 1_000_003 % 9_000_000  # each seed draws other scenes
    captions = training_captions(n, start)
    states, ends, t0 = [], [], time.perf_counter()
    times: list[float] = []
    for i in range(0, n, batch):
        st, end, times = solve(pipe, captions[i : i + batch], seed * 100_003 + i, steps, iterations, guidance)
        states.append(st)
        ends.append(end)
        log(f"{min(i + batch, n)}/{n} trajectories ({time.perf_counter() - t0:.0f}s)")
    meta = {"model": str(model or "demo"), "seed": str(seed), "steps": str(steps), "iterations": str(iterations),
            "guidance": str(guidance), "scene_start": str(start)}
    return Trajectories(torch.cat(states), torch.cat(ends), captions, times[:-1], meta)


def save(traj: Trajectories, path: str | Path) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**traj.meta, "captions": json.dumps(traj.captions), "times": json.dumps(traj.times)}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({"states": traj.states.contiguous(), "ends": traj.ends.contiguous()}, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def load(paths: str | Path | list[str | Path]) -> Trajectories:
    """One cache file, or several (comma-separated or a list) concatenated; they must share their times."""
    from safetensors import safe_open

    if isinstance(paths, (str, Path)):
        paths = [p for p in str(paths).split(",") if p]
    parts = []
    for path in paths:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            parts.append(Trajectories(f.get_tensor("states"), f.get_tensor("ends"), json.loads(meta.pop("captions")),
                                      json.loads(meta.pop("times")), meta))
    if not parts:
        raise ValueError("no trajectory files given")
    if any(p.times != parts[0].times for p in parts):
        raise ValueError("trajectory files solved at different times cannot be mixed")
    return Trajectories(torch.cat([p.states for p in parts]), torch.cat([p.ends for p in parts]),
                        [c for p in parts for c in p.captions], parts[0].times, parts[0].meta)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="teacher model folder (default: the bundled demo)")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0, help="noise and scene seed (use another per file)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--iterations", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    traj = build(args.model, args.n, args.seed, args.batch, args.steps, args.iterations, args.guidance,
                 log=lambda m: print(m, flush=True))
    print(f"wrote {save(traj, args.out)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
