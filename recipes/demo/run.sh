#!/usr/bin/env bash
# The demo model set, from scratch: phantoms -> VAE -> encode -> diffusion UNet -> ControlNet -> mask VAE ->
# mask diffusion UNet -> export (fp16, into src/maisi/demo/) -> evaluation on held-out phantoms.
#
#   bash recipes/demo/run.sh WORK_DIR [DEVICE]
#
# Every stage resumes or is skipped when re-run (training runs resume from their checkpoints, encoding skips
# finished files). Configs: the `demo` preset plus the overlays beside this script. 1 h 44 min on the 2-core CPU,
# timed from scratch on 2026-12-05 (recipes/demo/README.md gives every stage).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
W="${1:?usage: run.sh WORK_DIR [DEVICE]}"
DEV="${2:-cpu}"
OUT="${DEMO_OUT:-$HERE/../../src/maisi/demo}"
mkdir -p "$W"
T() { local task="$1"; shift; maisi train "$task" --preset demo --device "$DEV" --no-progress "$@"; }
stamp() { echo "[$(date +%H:%M:%S)] $*"; }

# 1. data: 40 training phantoms (128^3 at 3 mm) and 20 held-out phantoms; the mask model learns 64^3 maps at 6 mm
#    (the same field of view) because it generates on a 16^3 latent grid
[ -f "$W/phantoms/datalist.json" ] || maisi phantom --num 40 --output-dir "$W/phantoms" --size 128 128 128 --spacing 3 3 3 --region chest-abdomen --seed 1000
[ -f "$W/heldout/datalist.json" ] || maisi phantom --num 20 --output-dir "$W/heldout" --size 128 128 128 --spacing 3 3 3 --region chest-abdomen --seed 5000
[ -f "$W/masks64/datalist.json" ] || maisi phantom --num 40 --output-dir "$W/masks64" --size 64 64 64 --spacing 6 6 6 --region chest-abdomen --seed 1000

# 2. the image branch
stamp "VAE"
T vae --config "$HERE/vae.json" --data "$W/phantoms" --run-dir "$W/vae"
stamp "encode"
maisi encode --preset demo --config "$HERE/encode.json" --data "$W/phantoms/datalist.json" --weights "$W/vae/model" --output-dir "$W/latents" --device "$DEV"
# the UNet and ControlNet learn on 16^3 latent crops (8x cheaper per step), then on whole 32^3 latents, the size they
# generate at: crop-only training left generated soft tissue ~60 HU too bright (the deepest level's attention and
# the GroupNorm statistics see 8x more latent voxels at generation than on a crop)
stamp "diffusion UNet (crops)"
T diffusion --config "$HERE/diffusion.json" --data "$W/latents" --init-from "$W/vae/model" --run-dir "$W/diffusion"
stamp "ControlNet (crops)"
T controlnet --config "$HERE/controlnet.json" --data "$W/latents" --init-from "$W/diffusion/model" --run-dir "$W/controlnet"
stamp "diffusion UNet (whole latents)"
T diffusion --config "$HERE/diffusion_whole.json" --data "$W/latents" --init-from "$W/diffusion/model" --run-dir "$W/diffusion_whole"
stamp "ControlNet (whole latents)"
# it starts from the crop-trained ControlNet, beside the whole-latent UNet it will be used with
if [ ! -d "$W/controlnet_whole_init" ]; then
  rm -rf "$W/controlnet_whole_init.tmp"
  cp -r "$W/diffusion_whole/model" "$W/controlnet_whole_init.tmp"
  cp -r "$W/controlnet/model/controlnet" "$W/controlnet_whole_init.tmp/controlnet"
  mv "$W/controlnet_whole_init.tmp" "$W/controlnet_whole_init"
fi
T controlnet --config "$HERE/controlnet_whole.json" --data "$W/latents" --init-from "$W/controlnet_whole_init" --run-dir "$W/controlnet_whole"
# 3. the mask branch (mask VAE -> mask diffusion UNet) needs nothing from the image branch. It runs after it: on a
#    2-core CPU the two branches side by side got through no more work per minute than one alone
#    (recipes/demo/README.md has the measured rates)
stamp "mask VAE"
T mask-vae --config "$HERE/mask_vae.json" --data "$W/masks64" --run-dir "$W/mask_vae"
stamp "mask diffusion UNet"
T mask-diffusion --config "$HERE/mask_diffusion.json" --data "$W/masks64" --init-from "$W/mask_vae/model" --run-dir "$W/mask_diffusion"
stamp "export to $OUT"
python "$HERE/export.py" --image "$W/controlnet_whole/model" --mask "$W/mask_diffusion/model" --sizes "$W/masks64" --output "$OUT" --device "$DEV"
stamp "evaluation"
bash "$HERE/evaluate.sh" "$W" "$DEV" "$OUT"
stamp "done: $((SECONDS / 60)) min $((SECONDS % 60)) s in all"
