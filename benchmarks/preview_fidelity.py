"""How faithful and how cheap the live preview is: PSNR of each preview decoder against the full VAE decoder at
the preview's size, on the latents a preview really shows, and its cost per core iteration.

    python benchmarks/preview_fidelity.py                        # the bundled model's preview vs a linear map
    python benchmarks/preview_fidelity.py --linear OLD_preview.safetensors --images 64

Two sets of latents: clean VAE latents of held-out emoji scenes (the end of a run), and the predicted x0 after
every core iteration of guided 4 x 8 generations of held-out prompts (what the studio shows while the model
thinks). The reference is the full decoder's image of the same latent, area-downscaled to the preview's size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from iris import IrisPipeline  # noqa: E402
from iris.hub import load_weights  # noqa: E402
from iris.models.vae import PreviewDecoder  # noqa: E402

PROMPTS = ["a red apple on a blue background", "two cats, one on the left", "a yellow star above a green tree",
           "a rocket on a purple background", "a smiling sun in the corner", "a dog next to a ball"]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Per-image PSNR in dB of [-1, 1] images, averaged."""
    mse = ((a.clamp(-1, 1) - b.clamp(-1, 1)) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(4.0 / mse)).mean())


def x0_latents(pipe: IrisPipeline, prompts: list[str], seeds: int) -> torch.Tensor:
    """The predicted x0 the studio previews after every core iteration of guided 4 x 8 runs, [N, C, h, w]."""
    from iris import sampling

    captured: list[torch.Tensor] = []
    original = sampling.predicted_x0

    def spy(z: torch.Tensor, v: torch.Tensor, t: float) -> torch.Tensor:
        x0 = original(z, v, t)
        captured.append(x0.detach().clone())
        return x0

    sampling.predicted_x0 = spy
    try:
        for prompt in prompts:
            for seed in range(seeds):
                pipe.generate(prompt, steps=4, iterations=8, guidance=3.0, seed=seed, on_preview=lambda e: None,
                              preview_fraction=None)
    finally:
        sampling.predicted_x0 = original
    return torch.cat(captured)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled demo)")
    ap.add_argument("--linear", default=None, help="a linear preview.safetensors to compare with (default: fit one)")
    ap.add_argument("--images", type=int, default=64, help="held-out scenes for the clean-latent set")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt for the x0 set")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = IrisPipeline.from_pretrained(args.model)

    from iris.train.emoji import EmojiScenes

    scenes = EmojiScenes(split="heldout")
    images = torch.stack([scenes[i]["image"] for i in range(args.images)])
    with torch.inference_mode():
        clean = pipe.vae.encode(images)
    linear = PreviewDecoder(pipe.config.vae.latent_channels, pipe.config.vae.downsample)
    if args.linear:
        load_weights(linear, Path(args.linear))
    else:  # least squares on other held-out scenes
        fit_images = torch.stack([scenes[args.images + i]["image"] for i in range(args.images)])
        with torch.inference_mode():
            fit_latents = pipe.vae.encode(fit_images)
            linear.fit(fit_latents, pipe.vae.decode(fit_latents))
    decoders = {"shipped (" + pipe.config.vae.preview + ")": pipe.previewer, "linear": linear.eval()}
    x0 = x0_latents(pipe, PROMPTS, args.seeds)
    print(f"{len(clean)} clean latents of held-out scenes; {len(x0)} predicted-x0 latents from guided 4 x 8 runs\n")
    print("| preview | its size | PSNR vs full decoder, clean latents | PSNR, mid-run x0 latents | ms per preview |")
    print("|---|---|---|---|---|")
    with torch.inference_mode():
        # every preview is compared at the smallest one's size (a larger one is area-downscaled to it)
        side = min(int(decoder(clean[:1]).shape[-1]) for decoder in decoders.values())
        at_side = lambda x: F.interpolate(x, size=(side, side), mode="area") if x.shape[-1] != side else x
        for name, decoder in decoders.items():
            row = [name]
            for latents in (clean, x0):
                row.append(f"{psnr(at_side(decoder(latents)), at_side(pipe.vae.decode(latents))):.2f} dB")
            one = x0[:1]
            for _ in range(5):
                decoder(one)
            times = []
            for _ in range(30):
                t0 = time.perf_counter()
                decoder(one)
                times.append(time.perf_counter() - t0)
            size = decoder(one).shape[-1]
            print(f"| {row[0]} | {size} px | {row[1]} | {row[2]} | {1e3 * statistics.median(times):.2f} |")
        t0 = time.perf_counter()
        for _ in range(3):
            pipe.generate(PROMPTS[0], steps=4, iterations=8, guidance=3.0, seed=0)
        per_iteration = (time.perf_counter() - t0) / 3 / 32
    print(f"\nPSNR at {side} px. One core iteration of the guided 4 x 8 run: {1e3 * per_iteration:.1f} ms")


if __name__ == "__main__":
    main()
