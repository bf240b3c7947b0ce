"""Shared set-up of the equivalence tests: configs, label maps, official-layout weights and cached runs.

The networks are the ``tiny`` preset's (channels shrunk; everything else as the official models), built through
MONAI's classes by :mod:`reference_pipeline` with seeded random weights, written in NVIDIA's checkpoint layout and
loaded back by maisi as a user's official weights would be. Both sides then get the same label map, spacing,
initial latent and step noise; each (scheduler, shape) case runs once per session and several tests read it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import reference_pipeline as ref
from maisi.config import Config, preset

#: the bound of the issue: max |maisi - reference| in [0, 1] image units, fp32 on the CPU
TOL_UNIT = 1e-4
#: image latent scale factor written into the diffusion checkpoint (not 1, so a missing division shows)
SCALE_FACTOR = 0.8
#: official ``config_infer.json`` decode settings
OFFICIAL_WINDOW = (48, 48, 48)
OFFICIAL_OVERLAP = 0.6666
#: DDPM chain length of the fast tests: the official loop walks every training step, so both sides are built with
#: a 6-step schedule and walk all of it (the official 1000-step chain runs in the slow tests)
SHORT_DDPM_T = 6
RFLOW_STEPS = 3
SEED = 7

_CACHE: dict[Any, Any] = {}


# ----------------------------------------------------------------------------------------------------------------
# configs


def tiny_config(kind: str = "rflow", *, ddpm_steps: int = SHORT_DDPM_T) -> Config:
    """The ``tiny`` preset as an rflow-ct-like or ddpm-ct-like model (the ddpm variant takes the ``ddpm-ct``
    differences: body-region inputs, no class embeddings, no ``include_fc``, no resblock up/down)."""
    cfg = preset("tiny")
    m = cfg.model
    if kind == "ddpm":
        unet = dataclasses.replace(
            m.unet,
            include_top_region_index_input=True,
            include_bottom_region_index_input=True,
            num_class_embeds=None,
            include_fc=False,
            resblock_updown=False,
        )
        controlnet = dataclasses.replace(
            m.controlnet, num_class_embeds=None, include_fc=False, resblock_updown=False
        )
        scheduler = dataclasses.replace(m.scheduler, kind="ddpm", num_train_timesteps=ddpm_steps)
        cfg.model = dataclasses.replace(
            m, unet=unet, controlnet=controlnet, scheduler=scheduler, include_body_region=True
        )
    mask_scheduler = dataclasses.replace(cfg.model.mask_scheduler, num_train_timesteps=SHORT_DDPM_T)
    mask_vae = dataclasses.replace(cfg.model.mask_vae, scale_factor=1.0055984258651733)
    # a 64 x 64 x 32 mask (half the tiny preset's 64^3) keeps the 125-channel decode cheap
    cfg.model = dataclasses.replace(
        cfg.model, mask_scheduler=mask_scheduler, mask_vae=mask_vae, mask_latent_shape=(4, 16, 16, 8)
    )
    cfg.data = dataclasses.replace(cfg.data, label_set="maisi")
    cfg.generate = dataclasses.replace(
        cfg.generate,
        steps=RFLOW_STEPS if kind == "rflow" else ddpm_steps,
        mask_steps=SHORT_DDPM_T,
        decode_window=OFFICIAL_WINDOW,
        decode_overlap=OFFICIAL_OVERLAP,
        qc=False,
        qc_retries=0,
        preview=False,
        seed=SEED,
    )
    return cfg


def official_scheduler_for(cfg: Config):
    """The official scheduler of the model kind, with the config's chain length."""
    if cfg.model.scheduler.kind == "rflow":
        return ref.official_scheduler("config_network_rflow.json")
    return ref.official_scheduler(
        "config_network_ddpm.json", num_train_timesteps=cfg.model.scheduler.num_train_timesteps
    )


# ----------------------------------------------------------------------------------------------------------------
# label maps


def _ellipsoid(shape, center, radii) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii)) <= 1.0


def make_label(shape: tuple[int, int, int], *, tumors: tuple[int, ...] = (26, 23)) -> np.ndarray:
    """A body (200) holding liver (1), spleen (3), kidneys (5, 14), two lung lobes (28, 29), a vertebra (33),
    airway (132) and tumours inside their hosts: ids above 127 exercise the 8th ControlNet bit. Body regions:
    thorax (lungs) to abdomen (liver, kidneys).

    Returns:
        (X, Y, Z) uint8.
    """
    s = np.asarray(shape, dtype=float)
    label = np.zeros(shape, np.uint8)
    label[_ellipsoid(shape, s / 2, s * [0.42, 0.36, 0.48])] = 200

    def put(id_, frac_center, frac_radii):
        label[_ellipsoid(shape, s * frac_center, np.maximum(s * frac_radii, 1.5)) & (label == 200)] = id_

    put(28, [0.35, 0.5, 0.72], [0.12, 0.14, 0.14])
    put(29, [0.65, 0.5, 0.72], [0.12, 0.14, 0.14])
    put(1, [0.38, 0.45, 0.35], [0.14, 0.13, 0.13])
    put(3, [0.66, 0.6, 0.38], [0.07, 0.07, 0.08])
    put(5, [0.36, 0.66, 0.25], [0.05, 0.05, 0.07])
    put(14, [0.64, 0.66, 0.25], [0.05, 0.05, 0.07])
    put(33, [0.5, 0.72, 0.5], [0.04, 0.04, 0.3])
    put(132, [0.5, 0.45, 0.85], [0.03, 0.03, 0.08])
    if 26 in tumors:
        label[_ellipsoid(shape, s * [0.38, 0.45, 0.35], np.maximum(s * 0.04, 1.5)) & (label == 1)] = 26
    if 23 in tumors:
        label[_ellipsoid(shape, s * [0.35, 0.5, 0.74], np.maximum(s * 0.035, 1.5)) & (label == 28)] = 23
    if 128 in tumors:
        label[_ellipsoid(shape, s * [0.5, 0.72, 0.5], np.maximum(s * 0.03, 1.5)) & (label == 33)] = 128
    return label


def write_mask(path: Path, label: np.ndarray, spacing) -> Path:
    """A label NIfTI in RAS with a diagonal affine (what a user passes with ``--mask``)."""
    nib.save(nib.Nifti1Image(label.astype(np.uint8), np.diag([*map(float, spacing), 1.0])), str(path))
    return path


def initial_noise(shape: tuple[int, int, int], *, seed: int = SEED, channels: int = 4) -> torch.Tensor:
    """``(1, C, X/4, Y/4, Z/4)`` standard normal noise rounded to fp16 as the official ``initialize_noise_latents``
    makes it (and exactly representable in fp32 for both sides)."""
    lat = tuple(n // 4 for n in shape)
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels, *lat), generator=g).half().float()


def step_generator(cfg: Config, index: int = 0) -> torch.Generator:
    """The generator maisi draws DDPM step noise of sample ``index`` from, for the reference's ``step(...,
    generator=)`` (the official call draws the same values from the global RNG seeded likewise)."""
    from maisi.generation.seeds import derive_seed, torch_generator

    return torch_generator(derive_seed(cfg.generate.seed, index, 0, stream="sampler"))


# ----------------------------------------------------------------------------------------------------------------
# weights


def official_weights(
    tmp_path_factory: pytest.TempPathFactory, kind: str
) -> tuple[Path, ref.ReferenceNetworks]:
    """Random MONAI networks of the tiny ``kind`` model, saved in NVIDIA's layout (built once per session)."""
    key = ("weights", kind)
    if key not in _CACHE:
        cfg = tiny_config(kind)
        nets = ref.build_reference_networks(
            cfg.model, seed=11 if kind == "rflow" else 12, scale_factor=SCALE_FACTOR
        )
        d = ref.save_official_checkpoints(
            tmp_path_factory.mktemp(f"official-{kind}"), nets, variant=f"{kind}-ct"
        )
        _CACHE[key] = (d, nets)
    return _CACHE[key]


def load_maisi_model_set(weights: Path, cfg: Config, components=None):
    """maisi's loader on the official files, with the tiny network config as the base."""
    from maisi.networks.model_set import load_model_set

    return load_model_set(weights, base=cfg.model, components=components)


# ----------------------------------------------------------------------------------------------------------------
# one case: reference and maisi on the same inputs


@dataclass
class Case:
    """One equivalence run: the inputs, the reference result and maisi's sample."""

    kind: str
    label: np.ndarray
    spacing: tuple[float, float, float]
    reference: ref.ReferenceImage
    sample: Any
    cfg: Config


def run_case(
    tmp_path_factory: pytest.TempPathFactory,
    kind: str,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    *,
    guidance: float = 0.0,
    dtype: str = "float32",
    decode_window: tuple[int, int, int] = OFFICIAL_WINDOW,
    decode_overlap: float = OFFICIAL_OVERLAP,
    tumors: tuple[int, ...] = (26, 23),
    ddpm_steps: int = SHORT_DDPM_T,
) -> Case:
    """Run the reference loop and ``maisi.generation.generate`` (weights = the official files, ``--mask`` = the
    label map, ``initial_noise`` = the same latent); cached per argument set."""
    key = ("case", kind, shape, spacing, guidance, dtype, decode_window, decode_overlap, tumors, ddpm_steps)
    if key in _CACHE:
        return _CACHE[key]
    from maisi.generation import generate

    weights, nets = official_weights(tmp_path_factory, kind)
    work = tmp_path_factory.mktemp(f"case-{kind}")
    label = make_label(shape, tumors=tumors)
    cfg = tiny_config(kind, ddpm_steps=ddpm_steps)
    cfg.generate = dataclasses.replace(
        cfg.generate,
        weights=str(weights),
        mask=str(write_mask(work / "mask.nii.gz", label, spacing)),
        mask_source="file",
        output_dir=str(work / "out"),
        output_size=shape,
        spacing=spacing,
        guidance=guidance,
        dtype=dtype,
        decode_window=decode_window,
        decode_overlap=decode_overlap,
    )
    noise = initial_noise(shape)
    fp32_key = key[:5] + ("float32",) + key[6:]
    if dtype != "float32" and fp32_key in _CACHE:
        reference = _CACHE[fp32_key].reference
    else:
        reference = ref.reference_image(
            nets,
            official_scheduler_for(cfg),
            label,
            spacing,
            noise,
            num_inference_steps=cfg.generate.steps,
            decode_window=decode_window,
            decode_overlap=decode_overlap,
            step_generator=step_generator(cfg),
            guidance_scale=guidance,
        )
    (sample,) = generate(cfg, initial_noise=noise, return_unit=True, write=True)
    _CACHE[key] = Case(kind=kind, label=label, spacing=spacing, reference=reference, sample=sample, cfg=cfg)
    return _CACHE[key]


def max_abs(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    b = b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b)
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def latent_voxels(shape) -> int:
    return math.prod(n // 4 for n in shape)
