#!/usr/bin/env bash
# Fine-tune an MR generator on your own MR volumes, then generate from it:
#   prepare (--modality mri) -> encode (the VAE of the model you start from) -> train diffusion (--preset
#   rflow-mr-brain --init-from it) -> generate (image-only MR, guidance 10) -> VAE reconstruction metrics (MR
#   normalisation) -> the loss curve.
#
#   bash recipes/mr/run.sh WORK_DIR [INIT_DIR] [DEVICE]
#
# INIT_DIR: the model to fine-tune, e.g. the official brain model (`maisi download rflow-mr-brain`, then
# ~/.cache/maisi/rflow-mr-brain; a GPU is advised: its UNet has 180 M parameters). Without it, the recipe runs a
# CPU-sized stand-in: the shipped demo model set's small networks (a CT model) fine-tuned to MR, so the whole
# sequence runs on a laptop in minutes. MR_IMAGES: the volumes to fine-tune on (default: the TotalSegmentator
# example MR in tests/data). Every stage is skipped or resumed when re-run. Timed in recipes/mr/README.md.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
W="${1:?usage: run.sh WORK_DIR [INIT_DIR] [DEVICE]}"
INIT="${2:-}"
DEV="${3:-cpu}"
IMAGES="${MR_IMAGES:-$ROOT/tests/data/example_mr_sm.nii.gz}"
PRESET=rflow-mr-brain
EXTRA=()
if [ -z "$INIT" ]; then
  INIT="$(python -c 'import maisi, pathlib; print(pathlib.Path(maisi.__file__).parent / "demo")')"
  # standin.json: the demo UNet's sizes (the network the run builds, then loads) and a learning rate for it (the
  # preset's 1e-5 is the official one, for the 180 M-parameter UNet)
  EXTRA=(--config "$HERE/standin.json")
  echo "no INIT_DIR: fine-tuning the demo model set's small networks (CPU stand-in for $PRESET)"
fi
mkdir -p "$W"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "prepare"
# MR images stay float32; resampled to 3 mm and padded to a multiple of 32 (the latent must divide by the UNet's 8)
[ -f "$W/prepared/datalist.json" ] || maisi prepare --images $IMAGES --output-dir "$W/prepared" --modality mri --spacing 3 3 3 --divisor 32
stamp "encode (the VAE of $INIT)"
maisi encode --preset "$PRESET" --data "$W/prepared/datalist.json" --weights "$INIT" --output-dir "$W/latents" --device "$DEV"
stamp "train diffusion"
maisi train diffusion --preset "$PRESET" --config "$HERE/finetune.json" --data "$W/latents" --init-from "$INIT" --run-dir "$W/finetune" --device "$DEV" --no-progress "${EXTRA[@]}"
stamp "generate"
# 128^3 is the smallest MR request (Z 128 with X = Y = 128); 3 x 3 x 0.75 mm keeps the in-plane field of view of the
# training volume; the preset brings 30 steps and guidance 10
maisi generate --preset "$PRESET" --weights "$W/finetune/model" --modality mri --output-size 128 128 128 --spacing 3 3 0.75 --num-samples 1 --output-dir "$W/generated" --device "$DEV"
stamp "reconstruction metrics (MR normalisation)"
maisi evaluate recon --weights "$INIT" --data "$W/prepared/datalist.json" --intensity mri --device "$DEV"
stamp "loss curve"
python "$HERE/loss_curve.py" "$W/finetune"
stamp "done: $((SECONDS / 60)) min $((SECONDS % 60)) s in all"
