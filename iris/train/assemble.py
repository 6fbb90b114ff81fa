"""Assemble one model folder from the exports of separate stages.

    python -m iris.train.assemble --base runs/demo/text/export --vae runs/demo/vae_decoder/export \
        --adapters runs/demo/inpaint/export runs/demo/control/export --out assets/models/iris-nano-emoji

The base export supplies the generator and text encoder; `--vae` replaces the VAE (and preview decoder)
by one that shares its latent space; each `--adapters` export contributes the adapters it holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..errors import IrisError, ModelLoadError
from ..pipeline import IrisPipeline


def assemble(base: str, vae: str | None, adapters: list[str], out: str, dtype: torch.dtype | None) -> Path:
    pipe = IrisPipeline.from_pretrained(base)
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m iris.train.assemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="export holding the generator and text encoder")
    p.add_argument("--vae", help="export whose VAE replaces the base's (same latent space)")
    p.add_argument("--adapters", nargs="*", default=[], help="exports whose adapters are added")
    p.add_argument("--out", required=True)
    p.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16)")
    args = p.parse_args(argv)
    try:
        path = assemble(args.base, args.vae, args.adapters, args.out, None if args.fp32 else torch.float16)
    except IrisError as err:
        print(f"assemble: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
