"""The mask-generation model: organ/tumour size vector -> latent diffusion (DDPM) -> 125-class decode -> MAISI ids.

Numerics of the official pipeline: noise of shape ``mask_latent_shape`` (4, 64, 64, 64), the mask UNet called
with ``context`` = the size vector ``(1, 1, 10)``, every DDPM step of ``mask_steps`` (1000), the mask VAE decoded
with Gaussian sliding windows at ``z / mask_scale_factor``, argmax over the 125 output channels, channel -> MAISI
id through ``label_dict_124_to_132.json``. The official post-processing (hole filling, largest components) is
reduced to one rule here: a requested tumour is kept only inside (a 2-voxel margin of) its host organ.

Unspecified slots of the size vector are completed from the nearest real size vector (the official
``all_anatomy_size_condtions.json`` format: a list of ``{"organ_size": [10 values]}``), searched for beside the
weights; without one they take :data:`DEFAULT_SIZE_VECTOR`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from maisi import labels
from maisi.conditioning import mask_channels_to_ids
from maisi.errors import DataError
from maisi.generation.grid import fit_to_grid, spacing_affine
from maisi.generation.masks.base import MaskSample
from maisi.generation.seeds import derive_seed, torch_generator
from maisi.io import read_json

#: spacing (mm) of the official mask-generation model's output (256^3 at 1.5 mm)
MASK_MODEL_SPACING = 1.5
#: completion of unspecified slots when no real size vectors are available: organs mid-range, no tumour
DEFAULT_SIZE_VECTOR: tuple[float, ...] = (0.5,) * 5 + (labels.ABSENT_SIZE,) * 5
#: file name patterns of the official size-condition database
SIZE_CONDITION_GLOBS = ("*anatomy_size_cond*.json", "*/*anatomy_size_cond*.json")


def find_size_conditions(root: str | os.PathLike | None) -> Path | None:
    """The size-condition database beside a weights folder (or in its ``datasets/``), if any."""
    if root is None:
        return None
    base = Path(root)
    for pattern in SIZE_CONDITION_GLOBS:
        found = sorted(base.glob(pattern)) or sorted(base.parent.glob(pattern))
        if found:
            return found[0]
    return None


def load_size_conditions(path: str | os.PathLike) -> np.ndarray:
    """Real size vectors ``(N, 10)`` from an official ``all_anatomy_size_condtions.json``."""
    p = Path(path)
    data = read_json(p, what="size-condition list", expect=list)
    try:
        vectors = np.array([item["organ_size"] for item in data], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{p}: not a size-condition list of {{'organ_size': [10 values]}} ({e})") from None
    if vectors.ndim != 2 or vectors.shape[1] != len(labels.SIZE_SLOTS):
        raise DataError(
            f"{p}: size vectors must have {len(labels.SIZE_SLOTS)} values, got shape {vectors.shape}"
        )
    return vectors


def complete_size_vector(
    requested: dict[str, float], real: np.ndarray | None = None
) -> tuple[list[float], str]:
    """The full 10-slot vector: requested slots as given, the others from the nearest real vector.

    Nearest is the official rule: smallest sum of absolute differences over the requested slots.

    Returns:
        ``(vector, how the rest was completed)``.
    """
    given = labels.size_vector(requested, default=np.nan)
    if real is None or len(real) == 0:
        base, how = list(DEFAULT_SIZE_VECTOR), "default (no real size vectors found)"
    else:
        mask = ~np.isnan(given)
        diff = (
            np.abs(real[:, mask] - np.asarray(given)[mask]).sum(axis=1) if mask.any() else np.zeros(len(real))
        )
        k = int(np.argmin(diff))
        base, how = [float(v) for v in real[k]], f"nearest real size vector #{k}"
    return [b if np.isnan(g) else float(g) for g, b in zip(given, base)], how


def keep_tumor_in_host(label: np.ndarray, tumor: int, margin: int = 2) -> np.ndarray:
    """Remove voxels of ``tumor`` that lie outside a ``margin``-voxel dilation of its host organs."""
    out = np.array(label, copy=True)
    sel = out == tumor
    if sel.any():
        host = ndi.binary_dilation(np.isin(out, labels.TUMOR_HOSTS[tumor]), iterations=margin)
        out[sel & ~host] = labels.BODY
    return out


class ModelMaskSource:
    """Label maps sampled from the mask-generation model of a model set.

    Args:
        model_set: weights with ``mask_vae`` and ``mask_unet`` (``model_set.config`` gives ``mask_scheduler``,
            ``mask_latent_shape`` and ``mask_vae.scale_factor``).
        size: requested output size (the map is resampled and padded/cropped to it).
        spacing: requested spacing.
        seed: base seed.
        organ_sizes: requested relative sizes (name -> value in [0, 1] or -1).
        steps: DDPM steps (official: 1000).
        decode_window: sliding-window size in latent voxels; ``decode_overlap``: its overlap.
        size_conditions: real size vectors file; default searched beside the weights.
    """

    name = "model"

    def __init__(
        self,
        model_set: Any,
        *,
        size: Sequence[int],
        spacing: Sequence[float],
        seed: int = 0,
        organ_sizes: dict[str, float] | None = None,
        steps: int = 1000,
        decode_window: Sequence[int] = (48, 48, 48),
        decode_overlap: float = 0.6666,
        size_conditions: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        from maisi.latents import LatentCodec

        self.model_set = model_set
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed = int(seed)
        self.steps = int(steps)
        self.device = torch.device(device)
        self.progress = progress
        cfg = model_set.config
        self.latent_shape = tuple(int(s) for s in cfg.mask_latent_shape)
        self.requested = {k: float(v) for k, v in dict(organ_sizes or {}).items()}
        path = size_conditions or find_size_conditions(getattr(model_set, "root", None))
        real = load_size_conditions(path) if path else None
        self.size_vector, self.completion = complete_size_vector(self.requested, real)
        self.size_conditions = str(path) if path else None
        extra = model_set.components["mask_unet"].extra if "mask_unet" in model_set.components else {}
        self.native_spacing = float(extra.get("spacing", MASK_MODEL_SPACING))
        self.codec = LatentCodec.from_model_set(
            model_set,
            component="mask_vae",
            decode_window=decode_window,
            decode_overlap=decode_overlap,
            device=self.device,
        )

    def sample_latent(self, index: int, attempt: int = 0) -> torch.Tensor:
        """The denoised mask latent ``(1, *mask_latent_shape)`` of one sample."""
        from maisi.diffusion import make_denoiser, randn, sample, scheduler_from_config

        unet = self.model_set["mask_unet"].to(self.device).eval()
        noise = randn(
            (1, *self.latent_shape),
            generator=torch_generator(derive_seed(self.seed, index, attempt, stream="mask")),
        )
        context = torch.tensor([[self.size_vector]], dtype=torch.float32, device=self.device)
        denoiser = make_denoiser(unet, context=context)
        scheduler = scheduler_from_config(self.model_set.config.mask_scheduler)
        step_gen = [torch_generator(derive_seed(self.seed, index, attempt, stream="mask_sampler"))]
        with torch.inference_mode():
            return sample(
                denoiser,
                scheduler,
                noise.to(self.device),
                num_steps=self.steps,
                generator=step_gen,
                progress=self.progress,
            )

    def decode(self, latent: torch.Tensor) -> np.ndarray:
        """Decoded class map in MAISI ids ``(X, Y, Z)`` uint8 at the model's native grid."""
        channels = int(self.model_set.config.mask_vae.out_channels)
        image = tuple(s * self.codec.downsample for s in latent.shape[2:])
        numel = channels * int(np.prod(image))
        dtype = (
            torch.float32 if numel <= 2**28 else torch.float16
        )  # 125 channels: keep a 256^3 decode in memory
        logits = torch.empty((1, channels, *image), dtype=dtype)
        self.codec.decode(latent, out=logits)
        return mask_channels_to_ids(logits[0].argmax(dim=0)).numpy().astype(np.uint8)

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        label = self.decode(self.sample_latent(index, attempt))
        tumor = None
        for slot, value in zip(labels.SIZE_SLOTS[5:], self.size_vector[5:]):
            if labels.size_is_set(value):
                tumor = labels.TUMORS[slot]
        if tumor is not None:
            label = keep_tumor_in_host(label, tumor)
        native = (self.native_spacing,) * 3
        fitted = fit_to_grid(
            label, spacing_affine(native, label.shape), native, size=self.size, new_spacing=self.spacing
        )
        requested = {k: {"relative": v} for k, v in self.requested.items()}
        return MaskSample(
            label=np.ascontiguousarray(fitted.label, dtype=np.uint8),
            affine=spacing_affine(self.spacing, self.size),
            spacing=self.spacing,  # type: ignore[arg-type]
            source=self.name,
            info={
                "seed": derive_seed(self.seed, index, attempt, stream="mask"),
                "size_vector": self.size_vector,
                "size_vector_completion": self.completion,
                "size_conditions": self.size_conditions,
                "mask_steps": self.steps,
                "native_spacing": list(native),
                "native_shape": list(label.shape),
            },
            changes=fitted.changes,
            requested=requested,
        )
