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
from maisi.generation.masks.base import MASK_MODEL_SPACING, MaskSample
from maisi.generation.seeds import derive_seed, torch_generator
from maisi.io import read_json
from maisi.latents import OFFICIAL_DECODE_OVERLAP, OFFICIAL_DECODE_WINDOW

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


#: DDPM steps of the v1 mask generator when the request does not say (official: every training step)
MASK_STEPS_V1 = 1000


class ModelMaskSource:
    """Label maps sampled from the mask-generation model of a model set: the v1 DDPM model (``mask_unet``, a
    10-slot size vector as cross-attention context) or the 2026 rflow-mask model (``mask_unet_v2``: 14 anatomy
    slots and 5 demographics through AdaGN, classifier-free guidance); both decoded by ``mask_vae``.

    Args:
        model_set: weights with ``mask_vae`` and the generator's UNet (``model_set.config`` gives its scheduler,
            ``mask_latent_shape`` and ``mask_vae.scale_factor``).
        size: requested output size (the map is resampled and padded/cropped to it).
        spacing: requested spacing.
        seed: base seed.
        organ_sizes: requested relative sizes (name -> value in [0, 1] or -1).
        demographics: v2 only: age, sex, weight, bmi, height (see
            :func:`~maisi.generation.masks.conditions_v2.build_condition_v2`).
        generator: ``"v1"`` or ``"v2"``.
        steps: sampler steps (default: v1 1000 DDPM steps, v2 100 rectified-flow steps).
        guidance: v2 classifier-free guidance scale (official 2.0).
        decode_window: sliding-window size in latent voxels; ``decode_overlap``: its overlap.
        size_conditions: v1: real size vectors file; default searched beside the weights.
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
        demographics: dict[str, Any] | None = None,
        generator: str = "v1",
        steps: int | None = None,
        guidance: float = 2.0,
        decode_window: Sequence[int] = OFFICIAL_DECODE_WINDOW,
        decode_overlap: float = OFFICIAL_DECODE_OVERLAP,
        size_conditions: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        from maisi.latents import LatentCodec

        if generator not in ("v1", "v2"):
            raise ValueError(f"generator must be 'v1' or 'v2', got {generator!r}")
        self.model_set, self.generator = model_set, generator
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.progress = progress
        self.guidance = float(guidance)
        self.latent_shape = tuple(int(s) for s in model_set.config.mask_latent_shape)
        self.requested = {k: float(v) for k, v in dict(organ_sizes or {}).items()}
        self.unet_name = "mask_unet_v2" if generator == "v2" else "mask_unet"
        if generator == "v2":
            from maisi.generation.masks.conditions_v2 import build_condition_v2
            from maisi.generation.masks.sample_v2 import MASK_STEPS_V2

            self.condition = build_condition_v2(self.requested or None, demographics or None)
            self.steps = int(steps or MASK_STEPS_V2)
            self.facts: dict[str, Any] = {
                "generator": "v2",
                "condition": list(self.condition.vector),
                "demographics": dict(self.condition.demographics),
                "guidance": self.guidance,
            }
        else:
            path = size_conditions or find_size_conditions(getattr(model_set, "root", None))
            real = load_size_conditions(path) if path else None
            self.size_vector, completion = complete_size_vector(self.requested, real)
            self.steps = int(steps or MASK_STEPS_V1)
            self.facts = {
                "generator": "v1",
                "size_vector": self.size_vector,
                "size_vector_completion": completion,
                "size_conditions": str(path) if path else None,
            }
        extra = model_set.components[self.unet_name].extra if self.unet_name in model_set.components else {}
        self.native_spacing = float(extra.get("spacing", MASK_MODEL_SPACING))
        self.codec = LatentCodec.from_model_set(
            model_set,
            component="mask_vae",
            decode_window=decode_window,
            decode_overlap=decode_overlap,
            device=self.device,
        )

    @property
    def warnings(self) -> list[str]:
        """What the request asks of the generator beyond what it was trained on (v2: flagged demographics)."""
        return list(self.condition.warnings) if self.generator == "v2" else []

    @property
    def tumor(self) -> int | None:
        """MAISI id of the requested tumour (kept inside its host organ after decoding), or None."""
        if self.generator == "v2":
            return self.condition.tumor
        found = None
        for slot, value in zip(labels.SIZE_SLOTS[5:], self.size_vector[5:]):
            if labels.size_is_set(value):
                found = labels.TUMORS[slot]
        return found

    def sample_latent(self, index: int, attempt: int = 0) -> torch.Tensor:
        """The denoised mask latent ``(1, *mask_latent_shape)`` of one sample."""
        from maisi.diffusion import make_denoiser, randn, sample, scheduler_from_config

        unet = self.model_set[self.unet_name].to(self.device).eval()
        noise = randn(
            (1, *self.latent_shape),
            generator=torch_generator(derive_seed(self.seed, index, attempt, stream="mask")),
        ).to(self.device)
        with torch.inference_mode():
            if self.generator == "v2":
                from maisi.generation.masks.sample_v2 import sample_mask_latent_v2

                # the official sampler gives the request's spacing to the UNet and reads the output at 1.5 mm
                return sample_mask_latent_v2(
                    unet,
                    self.model_set.config.mask_scheduler_v2,
                    self.condition,
                    noise,
                    steps=self.steps,
                    guidance=self.guidance,
                    spacing=self.spacing,
                    progress=self.progress,
                )
            context = torch.tensor([[self.size_vector]], dtype=torch.float32, device=self.device)
            step_gen = [torch_generator(derive_seed(self.seed, index, attempt, stream="mask_sampler"))]
            return sample(
                make_denoiser(unet, context=context),
                scheduler_from_config(self.model_set.config.mask_scheduler),
                noise,
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
        if self.tumor is not None:
            label = keep_tumor_in_host(label, self.tumor)
        native = (self.native_spacing,) * 3
        fitted = fit_to_grid(
            label, spacing_affine(native, label.shape), native, size=self.size, new_spacing=self.spacing
        )
        return MaskSample(
            label=np.ascontiguousarray(fitted.label, dtype=np.uint8),
            affine=spacing_affine(self.spacing, self.size),
            spacing=self.spacing,  # type: ignore[arg-type]
            source=self.name,
            info={
                "seed": derive_seed(self.seed, index, attempt, stream="mask"),
                **self.facts,
                "mask_steps": self.steps,
                "native_spacing": list(native),
                "native_shape": list(label.shape),
            },
            changes=fitted.changes,
            warnings=self.warnings,
            requested={k: {"relative": v} for k, v in self.requested.items()},
        )
