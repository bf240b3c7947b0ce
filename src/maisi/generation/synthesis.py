"""Label maps + initial latents -> images: the official MAISI numerics in one sampler loop and one decode.

For a batch of label maps on one grid: ControlNet conditioning = 8 bit planes of the ids; spacing x 100; modality
class (rflow-ct) or top/bottom body region x 100 (ddpm-ct); the UNet and ControlNet composed with classifier-free
guidance into one denoiser closure (:func:`maisi.diffusion.make_denoiser`); the scheduler's timesteps for the
latent's spatial size; the latent decoded by the codec's tiled Gaussian-blended decode (the official sliding-window
settings by default); ``[0, 1]`` clipped and mapped to ``[-1000, 1000]`` HU with -1000 HU outside the body
(label 0).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from maisi.conditioning import (
    binarize_labels,
    label_ids,
    region_input,
    regions_for,
    spacing_input,
    without_tumors,
)
from maisi.data.intensity import is_mr
from maisi.errors import RequestError, SamplingError
from maisi.generation.masks.base import MaskSample
from maisi.performance import Speedups, accelerate
from maisi.performance.control import forget_cached_embeddings
from maisi.runtime import compute_dtype


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_denoiser(
    model_set: Any,
    masks: Sequence[MaskSample],
    *,
    modality: int,
    guidance: float,
    requested_regions: Sequence[int],
    device: torch.device,
    controlnet_scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
):
    """The ``denoiser(x, t)`` closure of a batch of label maps (all on one grid), or of grids without label maps
    (image-only generation: the UNet alone, guided by dropping the modality class as the official
    ``diff_model_infer`` does)."""
    from maisi.diffusion import make_denoiser

    cfg = model_set.config
    paired = masks[0].label is not None
    planes = control_dtype(dtype)
    control = _control([m.label for m in masks], device, planes) if paired else None
    spacing = torch.cat([spacing_input(m.spacing) for m in masks]).to(device)
    kwargs: dict[str, Any] = {"spacing": spacing}
    if cfg.unet.num_class_embeds is not None:
        kwargs["modality"] = torch.full((len(masks),), int(modality), dtype=torch.long, device=device)
    if cfg.unet.include_top_region_index_input:
        regions = [regions_for(m.label, requested_regions) for m in masks]
        kwargs["top_region"] = torch.cat([region_input(top) for top, _ in regions]).to(device)
        kwargs["bottom_region"] = torch.cat([region_input(bottom) for _, bottom in regions]).to(device)
    if guidance > 0 and paired:
        free = [without_tumors(m.label) for m in masks]
        if any(not np.array_equal(f, m.label) for f, m in zip(free, masks)):
            kwargs["uncond_control"] = _control(free, device, planes)
    try:
        base = make_denoiser(
            model_set["unet"],
            controlnet=model_set["controlnet"] if paired else None,
            control=control,
            conditioning_scale=controlnet_scale,
            guidance_scale=guidance,
            **kwargs,
        )
    except ValueError as e:
        raise RequestError(f"guidance {guidance:g}: {e}") from None

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with _autocast(device, dtype):
            return base(x, t).float()

    return denoise


def control_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the ControlNet's bit planes for a compute dtype: the half dtype itself (under autocast the
    embedding's first convolution casts its input to it anyway, and 0/1 are exact, so the numbers do not change;
    half the bytes of float32), else float32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32


def _control(label_maps: Sequence[np.ndarray], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The bit planes ``(B, 8, X, Y, Z)`` of label maps, made on ``device`` from their uint8 ids (1 byte per voxel
    on the host and in the transfer)."""
    ids = torch.stack([label_ids(torch.from_numpy(np.asarray(m))) for m in label_maps])
    return binarize_labels(ids.to(device), dtype=dtype)


def synthesise(
    model_set: Any,
    scheduler: Any,
    codec: Any,
    masks: Sequence[MaskSample],
    noise: torch.Tensor,
    *,
    steps: int,
    modality: int,
    guidance: float = 0.0,
    controlnet_scale: float = 1.0,
    requested_regions: Sequence[int] = (),
    step_generators: Sequence[torch.Generator] | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
    progress: bool = False,
    speedups: Speedups | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sample and decode a batch.

    Args:
        masks: label maps of one grid ``(X, Y, Z)``.
        noise: initial latents ``(B, C, X/d, Y/d, Z/d)``.
        step_generators: one per sample, for stochastic schedulers (DDPM).
        speedups: :class:`maisi.performance.Speedups` applied to the UNet, ControlNet and VAE for this call
            (default: none; :func:`maisi.generation.generate` passes its own).

    Returns:
        ``(image in [0, 1] (B, 1, X, Y, Z) float32 on the CPU, with 0 outside the body of a label map; MR not
        clipped above 1; timings in seconds)``.
    """
    from maisi.diffusion import sample

    device = torch.device(device)
    shapes = {m.shape for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"a batch needs label maps of one shape, got {sorted(shapes)}")
    t0 = time.perf_counter()
    denoiser = build_denoiser(
        model_set,
        masks,
        modality=modality,
        guidance=guidance,
        requested_regions=requested_regions,
        device=device,
        dtype=compute_dtype(dtype),
        controlnet_scale=controlnet_scale,
    )
    networks = sampling_networks(model_set, codec)
    with accelerate(networks, speedups, device=device):
        try:
            with torch.inference_mode():
                latent = sample(
                    denoiser,
                    scheduler,
                    noise.to(device, torch.float32),
                    num_steps=steps,
                    generator=list(step_generators) if step_generators else None,
                    progress=progress,
                )
        finally:
            # the conditioning (ControlNet planes: 8 image-sized channels, twice with guidance) and its cached
            # embedding are not held through the decode or into the next batch
            del denoiser
            forget_cached_embeddings(networks)
        _check_finite(latent, "the sampler's latent")
        _sync(device)
        t1 = time.perf_counter()
        image = codec.decode(latent)
        _check_finite(image, "the decoded image")
        _sync(device)
        t2 = time.perf_counter()
    unit = image.float().cpu()
    unit = unit.clamp(0.0, 1.0) if not is_mr(modality) else unit.clamp_min(0.0)  # MR keeps its bright tail
    if masks[0].label is not None:
        body = torch.from_numpy(np.stack([m.label for m in masks]))[:, None] > 0
        unit = torch.where(body, unit, torch.zeros((), dtype=unit.dtype))  # -1000 HU outside the body
    return unit, {"sampling_s": round(t1 - t0, 4), "decode_s": round(t2 - t1, 4)}


def sampling_networks(model_set: Any, codec: Any) -> list[torch.nn.Module]:
    """The networks :func:`synthesise` runs (and :func:`maisi.performance.accelerate` speeds up)."""
    return [model_set[n] for n in ("unet", "controlnet") if n in model_set] + [codec.vae]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _check_finite(t: torch.Tensor, what: str) -> None:
    """A non-finite latent or image is never written: it is an error naming what went wrong."""
    bad = int((~torch.isfinite(t)).sum())
    if bad:
        raise SamplingError(
            f"{what} has {bad} NaN/inf values; nothing was written for this sample (a NaN in --initial-noise, "
            "in the weights, or half precision overflowing: try --dtype float32)"
        )
