"""Autoencoder reconstruction quality: encode and decode whole volumes through the latent codec and compare.

Each image is scaled to [0, 1] (CT: [-1000, 1000] HU), padded (centred, with 0 = -1000 HU) to a multiple of the
VAE downsampling, encoded to the posterior mean, decoded (both tiled as the codec decides), cropped back and
clipped to [0, 1]. PSNR, 3D SSIM and MS-SSIM (where the volume is large enough) are computed on the [0, 1] volumes
(data range 1); the mean absolute error is also given in HU.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from maisi.evaluation.metrics import MS_SSIM_KERNEL_SIZE, SSIM_KERNEL_SIZE, image_metrics
from maisi.evaluation.volumes import find_cases, json_number, summarize


def reconstruct(codec: Any, unit: np.ndarray) -> np.ndarray:
    """Encode + decode one (X, Y, Z) [0, 1] volume with a :class:`~maisi.latents.LatentCodec`; same shape back."""
    from maisi.evaluation.fid import pad_or_crop

    d = codec.downsample
    shape = unit.shape
    padded_shape = tuple(-(-s // d) * d for s in shape)
    padded = pad_or_crop(unit, padded_shape, value=0.0)
    x = torch.from_numpy(np.ascontiguousarray(padded, dtype=np.float32))[None, None]
    y = codec.decode(codec.encode(x))[0, 0].float().clamp(0, 1).cpu().numpy()
    return pad_or_crop(y, shape, value=0.0)


def evaluate_recon(
    weights: str | os.PathLike,
    data: str | os.PathLike,
    *,
    device: str = "cpu",
    max_cases: int | None = None,
    intensity: str = "ct",
    ssim_kernel: int = SSIM_KERNEL_SIZE,
    ms_kernel: int = MS_SSIM_KERNEL_SIZE,
    codec_options: dict[str, Any] | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Reconstruction metrics of the VAE of a model set on the images of ``data``.

    Args:
        weights: model-set folder (ours or official) holding a ``vae``.
        data: pairs folder, datalist JSON or NIfTI file(s).
        max_cases: evaluate only the first N cases (sorted by name).
        intensity: ``ct`` or ``mri`` scaling of the inputs.
        codec_options: extra :class:`~maisi.latents.LatentCodec` arguments (windows, overlaps, dtype).
        out: write the result as JSON here.

    Returns:
        ``{"cases": [{"name", "shape", "psnr", "ssim", "ms_ssim", "mae_hu", "seconds"}], "summary": {metric:
        summary}, "weights", "scale_factor"}``.
    """
    from maisi.data.intensity import CT_MAX_HU, CT_MIN_HU, scale_intensity
    from maisi.data.nifti import load_nifti
    from maisi.latents import LatentCodec
    from maisi.networks.model_set import load_model_set

    model_set = load_model_set(weights, components=["vae"], device=device)
    vae_cfg = model_set.config.vae
    codec = LatentCodec.from_model_set(model_set, device=device, **(codec_options or {}))
    cases = find_cases(data)[: max_cases or None]
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="recon", unit="volume")
    rows = []
    for case in cases:
        t0 = time.perf_counter()
        unit = scale_intensity(load_nifti(case.image, kind="image").array, intensity)
        recon = reconstruct(codec, unit)
        m = image_metrics(unit, recon, ssim_kernel=ssim_kernel, ms_kernel=ms_kernel)
        rows.append(
            {
                "name": case.name,
                "shape": list(unit.shape),
                **m,
                "mae_hu": float(np.abs(unit - recon).mean() * (CT_MAX_HU - CT_MIN_HU))
                if intensity == "ct"
                else None,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
    summary = {
        k: summarize([r[k] for r in rows if r[k] is not None]) for k in ("psnr", "ssim", "ms_ssim", "mae_hu")
    }
    result = {
        "weights": str(weights),
        "data": str(data),
        "scale_factor": float(vae_cfg.scale_factor),
        "summary": summary,
        "cases": [{k: json_number(v) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
    }
    if out is not None:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result
