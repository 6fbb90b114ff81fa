#!/usr/bin/env bash
# The demo model's GPU refinement (about 10 minutes on one H100), on wall-clock budgets: every run is resumed
# from the model folder given (default: the bundled demo model) and ends on its `time_limit` with its cosine
# decay done. The CPU recipe that made the starting point is train.sh.
#
#   SEED=N bash configs/demo/train_gpu.sh [START_MODEL] [OUT_MODEL]
#
# Give every refinement its own SEED: the emoji scenes a run draws start at a point set by the seed, so a new
# seed means scenes the model has not seen. The generator's step is dispatch-bound at this size (about 0.4 s
# at batch 256, 0.7 s at 1024 on an H100), so it trains at batch 1024 (26 GB of GPU memory); the other
# CPU cores render the scenes. Needs open_clip_torch installed (`python3 -m pip install open_clip_torch`).
set -euo pipefail
cd "$(dirname "$0")/../.."
START=${1:-assets/models/iris-nano-emoji}
OUT=${2:-runs/demo/gpu/model}
SEED=${SEED:-1}
R=runs/demo/gpu
run="--steps 1000000 --set sample_every=0 --set save_every=100000 --set optim.decay=cosine --set seed=$SEED"

# decoder refinement (8 min) beside the generator (7.2 min at batch 1024), then the canny adapter (0.5 min)
iris-train vae --config configs/demo/vae_decoder.toml --model "$START" --out $R/dec $run --set batch_size=64 \
    --set data.workers=3 --set optim.lr=3e-4 --set optim.warmup_steps=200 --set time_limit=8.0 &
iris-train text --config configs/demo/text.toml --model "$START" --out $R/text $run --set batch_size=1024 \
    --set data.workers=11 --set optim.lr=1e-3 --set optim.warmup_steps=60 --set time_limit=7.2
iris-train control --config configs/demo/control.toml --model $R/text/export --out $R/ctl $run \
    --set batch_size=64 --set data.workers=10 --set optim.lr=3e-4 --set optim.warmup_steps=50 --set time_limit=0.5
wait
python -m iris.train.assemble --base $R/ctl/export --vae $R/dec/export --out "$OUT"
