"""Assemble one model folder from the exports of separate stages.

    python -m iris.train.assemble --base runs/demo/text/export --vae runs/demo/vae_decoder/export \
        --adapters runs/demo/inpaint/export runs/demo/control/export --out assets/models/iris-nano-emoji

The base export supplies the generator and text encoder; `--vae` replaces the VAE (and preview decoder)
by one that shares its latent space; each `--adapters` export contributes the adapters it holds.

A student that shares everything but its generator with a sibling folder (a distilled model):

    python -m iris.train.assemble --base runs/demo/distill_fast/export --shares assets/models/iris-nano-emoji \
        --out assets/models/iris-nano-emoji-fast --name iris-nano-fast --steps 2 --iterations 4

writes config.json (with `shares`) and generator.safetensors; every file identical to the sibling's (VAE,
text encoder, preview decoder, adapters) is read from there. A text encoder or preview decoder that differs
(the student was distilled before its teacher's text encoder was retrained) is written beside the generator;
a VAE that differs is refused, since the shared adapters work in the sibling's latent space.

`--position-embedding` gives the base's generator the grid position embedding (`GeneratorConfig.
position_embedding`) with its map at zero: the folder generates exactly as before until it is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import IrisError, ModelLoadError
from ..pipeline import IrisPipeline


def add_position_embedding(pipe: IrisPipeline) -> None:
    """Rebuild `pipe`'s generator with the grid position embedding, map zero, every other weight kept."""
    from ..models.generator import IrisGenerator

    if pipe.config.generator.position_embedding:
        raise ModelLoadError("the generator already has a position embedding")
    pipe.config.generator.position_embedding = True
    old = pipe.generator
    new = IrisGenerator(pipe.config.generator).to(next(old.parameters()).dtype)
    missing, unexpected = new.load_state_dict(old.state_dict(), strict=False)
    if set(missing) != {"pos_proj.weight"} or unexpected:
        raise ModelLoadError(f"unexpected generator weights: missing {missing}, unexpected {unexpected}")
    pipe.generator = new.eval()


def assemble(base: str, vae: str | None, adapters: list[str], out: str, dtype: torch.dtype | None,
             position_embedding: bool = False) -> Path:
    pipe = IrisPipeline.from_pretrained(base)
    if position_embedding:
        add_position_embedding(pipe)
    if vae:
        other = IrisPipeline.from_pretrained(vae)
        if other.config.vae.channels != pipe.config.vae.channels:
            raise ModelLoadError(f"{vae}: its VAE has another architecture than {base}'s")
        pipe.vae.load_state_dict(other.vae.state_dict())
        pipe.previewer.load_state_dict(other.previewer.state_dict())
        pipe.config.vae = other.config.vae
        pipe.vae.config = other.config.vae
    for folder in adapters:
        donor = IrisPipeline.from_pretrained(folder)
        for name, module in donor.adapters.items():
            pipe.adapters[name] = module
    return pipe.save_pretrained(out, dtype=dtype)


def assemble_student(base: str, sibling: str, out: str, name: str, steps: int | None, iterations: int | None,
                     dtype: torch.dtype | None) -> Path:
    """A folder holding `base`'s generator and config (and its own text encoder or preview decoder where
    they differ from the sibling's), sharing every other part with the `sibling` folder."""
    import shutil

    from ..hub import save_weights

    pipe, other = IrisPipeline.from_pretrained(base), IrisPipeline.from_pretrained(sibling)
    own: list[tuple[torch.nn.Module, str]] = []
    for part, file in (("vae", "vae.safetensors"), ("text_encoder", "text_encoder.safetensors"),
                       ("previewer", "preview.safetensors")):
        mine, theirs = getattr(pipe, part).state_dict(), getattr(other, part).state_dict()
        if mine.keys() != theirs.keys() or any(not torch.allclose(mine[k].float(), theirs[k].float(), atol=1e-3)
                                               for k in mine):
            if part == "vae":
                raise ModelLoadError(f"{base}'s {part} differs from {sibling}'s: it cannot be shared")
            own.append((getattr(pipe, part), file))
    folder = Path(out)
    if Path(sibling).resolve().parent != folder.resolve().parent:
        raise ModelLoadError(f"{out} must sit beside {sibling}: a shared folder is a sibling")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    config = pipe.config
    config.name, config.shares = name or config.name, Path(sibling).name
    config.adapters = list(other.adapters.keys())
    if steps:
        config.sampler.steps = steps
    if iterations:
        config.sampler.iterations = iterations
    config.save(folder / "config.json")
    save_weights(pipe.generator, folder / "generator.safetensors", dtype)
    for module, file in own:
        save_weights(module, folder / file, dtype if file != "preview.safetensors" else None)
    return folder


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iris.train.assemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="export holding the generator and text encoder")
    p.add_argument("--vae", help="export whose VAE replaces the base's (same latent space)")
    p.add_argument("--adapters", nargs="*", default=[], help="exports whose adapters are added")
    p.add_argument("--out", required=True)
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    p.add_argument("--shares", help="a sibling model folder: write the base's generator and config (and its text "
                   "encoder or preview decoder where they differ), sharing the rest with it")
    p.add_argument("--name", default="", help="with --shares: the model's name")
    p.add_argument("--position-embedding", action="store_true",
                   help="add the grid position embedding to the base's generator, map zero (see above)")
    p.add_argument("--steps", type=int, help="with --shares: the default sampler steps")
    p.add_argument("--iterations", type=int, help="with --shares: the default core iterations")
    args = p.parse_args(argv)
    dtype = None if args.fp32 else torch.float16
    try:
        if args.shares:
            path = assemble_student(args.base, args.shares, args.out, args.name, args.steps, args.iterations, dtype)
        else:
            path = assemble(args.base, args.vae, args.adapters, args.out, dtype, args.position_embedding)
    except IrisError as err:
        print(f"assemble: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
