#!/usr/bin/env bash
# Evaluation of the demo model set (the issue's must-shows), results in WORK_DIR/eval:
#   recon.json        VAE reconstruction of the 20 held-out phantoms (PSNR, SSIM, MS-SSIM)
#   generated/        20 generated pairs (phantom masks, 128^3 at 3 mm), consistency.json, qc.json (in the report)
#   consistency_real.json  the same segmenter on the 20 held-out REAL phantom pairs (its ceiling)
#   size_phantom/, size_model/  one sample per requested liver size (5 sizes), size_*.json
#   report.html / report.md
#
#   bash recipes/demo/evaluate.sh WORK_DIR [DEVICE] [WEIGHTS]
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="${1:?usage: evaluate.sh WORK_DIR [DEVICE] [WEIGHTS]}"
DEV="${2:-cpu}"
WEIGHTS="${3:-$HERE/../../src/maisi/demo}"
E="$W/eval"
mkdir -p "$E"
G="maisi generate --preset demo --weights $WEIGHTS --device $DEV --qc-retries 0"
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

stamp "segmenter (trained on the 40 training phantoms: the five large-organ groups)"
# one class per group (liver, spleen, kidneys, lungs, vertebrae), as the must-show scores them: 24 separate vertebra
# levels at 3 mm cost a small network most of its capacity (and a 34-class loss 12x the time per step)
[ -f "$E/segmenter/model/segmenter/config.json" ] || maisi evaluate train-segmenter --data "$W/phantoms" --run-dir "$E/segmenter" --steps 1500 --groups large-organs --device "$DEV"
stamp "VAE reconstruction on held-out phantoms"
[ -f "$E/recon.json" ] || maisi evaluate recon --weights "$WEIGHTS" --data "$W/heldout" --device "$DEV" --out "$E/recon.json"
stamp "20 generated pairs"
$G --num-samples 20 --seed 2026 --output-dir "$E/generated"
stamp "size control: five liver sizes, phantom masks and the mask-generation model"
# A relative size means a place in the phantom population's liver range for phantom masks, and a value of the size
# vector the mask model was trained on for the model: its five requests span the liver values of the training maps
# (anatomy_size_conditions.json), since a model cannot be asked for sizes it never saw.
MODEL_SIZES="$(python -c '
import sys
from maisi.evaluation.size import slot_range_requests
print(" ".join(f"{v:.3f}" for v in slot_range_requests(sys.argv[1], "liver")))' "$WEIGHTS")"
for src in phantom model; do
  extra=""; sizes="0.3 0.5 0.7 0.9 1.0"
  if [ "$src" = model ]; then extra="--mask-steps 100"; sizes="$MODEL_SIZES"; fi  # 100 DDPM steps: 1000 take minutes per sample on a CPU
  mkdir -p "$E/size_$src"
  for s in $sizes; do
    run="$E/size_runs/${src}_liver_$s"
    $G --mask-source $src --organ-size liver=$s --seed 11 $extra --output-dir "$run"
    for f in image.nii.gz label.nii.gz preview.png; do cp -f "$run/sample_00000_$f" "$E/size_$src/liver_${s}_$f"; done
    cp -f "$run/sample_00000.json" "$E/size_$src/liver_$s.json"
  done
done
for src in phantom model; do
  [ -f "$E/size_$src.json" ] || maisi evaluate size --pairs "$E/size_$src" --out "$E/size_$src.json"
done
stamp "consistency of the segmenter on held-out real phantoms (its ceiling)"
[ -f "$E/consistency_real.json" ] || maisi evaluate consistency --pairs "$W/heldout" --segmenter "$E/segmenter" --device "$DEV" --out "$E/consistency_real.json"
stamp "consistency of generated pairs"
[ -f "$E/consistency.json" ] || maisi evaluate consistency --pairs "$E/generated" --segmenter "$E/segmenter" --device "$DEV" --out "$E/consistency.json"
stamp "report"
maisi evaluate report "$E" --real "$W/heldout" --synthetic "$E/generated" --training "$W/phantoms" --segmenter "$E/segmenter" --device "$DEV" --overwrite
