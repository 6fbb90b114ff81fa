#!/usr/bin/env bash
# The whole demo-model recipe. Every command resumes from its last checkpoint when run again.
# On a CPU, run with OMP_NUM_THREADS=1 to share the cores between the two parallel jobs.
set -euo pipefail
cd "$(dirname "$0")/../.."
iris-train vae --config configs/demo/vae.toml                       # 1: WaveletVAE
iris-train text --config configs/demo/text.toml &                   # 3: text encoder + generator
iris-train vae --config configs/demo/vae_decoder.toml &             # 1b: decoder refinement, same latents
wait
iris-train inpaint --config configs/demo/inpaint.toml               # adapters, base frozen
iris-train control --config configs/demo/control.toml
iris-train upscale --config configs/demo/upscale.toml
iris-train pixel_upscale --config configs/demo/pixel_upscale.toml   # the learned 2x pixel upscaler
python -m iris.train.assemble --base runs/demo/text/export --vae runs/demo/vae_decoder/export \
    --adapters runs/demo/pixel_upscale/export runs/demo/inpaint/export runs/demo/control_canny/export \
    runs/demo/upscale/export \
    --out assets/models/iris-nano-emoji
