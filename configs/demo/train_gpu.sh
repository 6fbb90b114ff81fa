#!/usr/bin/env bash
# The demo model's GPU refinement (about 10 minutes on one H100), on wall-clock budgets: every run is resumed
# from the model folder given (default: the bundled demo model) and ends on its `time_limit` with its cosine
# decay done. The CPU recipe that made the starting point is train.sh.
#
#   bash configs/demo/train_gpu.sh [START_MODEL] [OUT_MODEL]
#
# The generator's training step is dispatch-bound at this size (about 0.4 s whatever the batch, on an H100), so
# the second generator run uses a batch of 1024 (26 GB of GPU memory); 13+ CPU cores render the scenes.
set -euo pipefail
cd "$(dirname "$0")/../.."
START=${1:-assets/models/iris-nano-emoji}
OUT=${2:-runs/demo/gpu/model}
R=runs/demo/gpu
run="--steps 1000000 --set sample_every=0 --set save_every=3000 --set optim.decay=cosine"

# 1: decoder refinement (7.2 min) beside the generator (5.9 min at batch 256), then the canny adapter (0.9 min)
iris-train vae --config configs/demo/vae_decoder.toml --model "$START" --out $R/dec $run --set batch_size=64 \
    --set data.workers=3 --set optim.lr=3e-4 --set optim.warmup_steps=200 --set time_limit=7.2 &
iris-train text --config configs/demo/text.toml --model "$START" --out $R/text $run --set batch_size=256 \
    --set data.workers=10 --set optim.lr=8e-4 --set optim.warmup_steps=300 --set time_limit=5.9
iris-train control --config configs/demo/control.toml --model $R/text/export --out $R/ctl $run \
    --set batch_size=64 --set data.workers=8 --set optim.lr=3e-4 --set optim.warmup_steps=50 --set time_limit=0.9
wait
python -m iris.train.assemble --base $R/ctl/export --vae $R/dec/export --out $R/stage1

# 2: the generator again at batch 1024 (3 min), from stage 1
iris-train text --config configs/demo/text.toml --model $R/stage1 --out $R/text2 $run --set batch_size=1024 \
    --set data.workers=13 --set optim.lr=1e-3 --set optim.warmup_steps=60 --set time_limit=3.0
python -m iris.train.assemble --base $R/text2/export --out "$OUT"  # its VAE and adapter are stage 1's
