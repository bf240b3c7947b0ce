"""Assemble the demo model set from the recipe's runs and write it in fp16 (maisi's component layout).

    python recipes/demo/export.py --image RUN/controlnet/model --mask RUN/mask_diffusion/model \
        --sizes RUN/masks64 --output src/maisi/demo

``--image`` holds vae, unet and controlnet; ``--mask`` holds mask_vae and mask_unet. ``--sizes`` is the folder of
label maps the mask model was trained on: their organ/tumour size vectors are written as
``anatomy_size_conditions.json`` (the official format), from which generation completes the size slots a user
leaves open. The mask model's size response is then measured on the exported set (realised liver volume over five
requested sizes, noise fixed per seed; ``maisi.evaluation.size.mask_model_size_response``) and recorded in the
``mask_unet`` component's extra as ``size_response``: generation under ``--mask-source auto`` uses a mask model for
organ-size requests only when it follows them. An existing output folder is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from maisi.data.nifti import load_nifti
from maisi.errors import MaisiError
from maisi.io import write_json
from maisi.networks.model_set import ModelSet, load_model_set, save_model_set
from maisi.conditioning import size_vector_from_label
from maisi.training.datasets import find_cases

IMAGE = ("vae", "unet", "controlnet")
MASK = ("mask_vae", "mask_unet")


def record_size_response(folder: Path, *, seeds: tuple[int, ...], steps: int, device: str) -> dict:
    """Measure the mask model of the model set in ``folder`` and write the result into its ``mask_unet`` extra."""
    import json

    from maisi.evaluation.size import mask_model_size_response

    response = mask_model_size_response(
        load_model_set(folder, components=list(MASK)), seeds=seeds, steps=steps, device=device
    )
    path = folder / "mask_unet" / "config.json"
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.setdefault("extra", {})["size_response"] = response
    write_json(path, meta, overwrite=True)
    return response


def export(
    image: Path,
    mask: Path,
    sizes: Path,
    output: Path,
    *,
    overwrite: bool = False,
    size_seeds: tuple[int, ...] = (0, 1),
    size_steps: int = 100,
    device: str = "cpu",
) -> Path:
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise MaisiError(f"{output}: exists and is not empty; pass --overwrite to replace it")
    img = load_model_set(image, components=list(IMAGE))
    msk = load_model_set(mask, components=list(MASK))
    config = dataclasses.replace(
        img.config,
        mask_vae=msk.config.mask_vae,
        mask_unet=msk.config.mask_unet,
        mask_scheduler=msk.config.mask_scheduler,
        mask_latent_shape=msk.config.mask_latent_shape,
    )
    merged = ModelSet(
        config=config, components={**img.components, **msk.components}, layout="maisi", root=output
    )
    vectors = []
    for case in find_cases(sizes, kind="volumes"):
        label = load_nifti(case.label, kind="label")
        vectors.append({"organ_size": size_vector_from_label(label.array, label.spacing)})
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=output.parent))
    try:
        save_model_set(tmp, merged, dtype=torch.float16)
        write_json(tmp / "anatomy_size_conditions.json", vectors)
        response = record_size_response(tmp, seeds=size_seeds, steps=size_steps, device=device)
        print(
            f"mask model size response ({response['anatomy']}, {response['steps']} DDPM steps): requested "
            f"{response['requested']}, realised mL {response['realised_ml']}, Spearman {response['spearman']} "
            f"-> follows sizes: {response['follows_sizes']}"
        )
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, required=True, help="model set with vae, unet, controlnet")
    p.add_argument("--mask", type=Path, required=True, help="model set with mask_vae, mask_unet")
    p.add_argument("--sizes", type=Path, required=True, help="label maps of the mask model's training data")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--size-seeds", type=int, nargs="+", default=[0, 1], help="noise seeds of the size check")
    p.add_argument("--size-steps", type=int, default=100, help="DDPM steps of the size check")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    try:
        out = export(
            args.image,
            args.mask,
            args.sizes,
            args.output,
            overwrite=args.overwrite,
            size_seeds=tuple(args.size_seeds),
            size_steps=args.size_steps,
            device=args.device,
        )
    except MaisiError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({total / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
