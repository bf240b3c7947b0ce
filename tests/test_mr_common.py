"""Shared set-up of the MR tests: the official MR networks at reduced width with seeded random weights, written in
NVIDIA's layout for each MR variant, and the request that generates from them.

The networks are MONAI's classes built by :mod:`reference_pipeline` from a maisi ``ModelConfig`` (the rflow-ct
structure every MR variant uses, shrunk for the CPU: UNet widths 16/32/32, VAE widths 4/8/8). They are saved
as the official files of ``rflow-mr`` (``models/autoencoder_v2.pt`` nested under ``unet_state_dict``, as some
official autoencoder files are, and ``models/diff_unet_3d_rflow-mr.pt``) or ``rflow-mr-brain``
(``models/autoencoder_v1.pt`` plain, ``models/diff_unet_3d_rflow-mr-brain_v1.pt``) in a fake hub, fetched by
``maisi download``'s function and loaded back as a user's downloaded weights.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

import reference_pipeline as ref
from maisi.config import Config, preset

#: the official hub repository and file of each MR variant's VAE and diffusion UNet (NV-Generate-CTMR README and
#: environment_maisi_diff_model_*.json: the brain model runs on the CT VAE)
MR_FILES = {
    "rflow-mr": (
        ("nvidia/NV-Generate-MR", "autoencoder_v2.pt"),
        ("nvidia/NV-Generate-MR", "diff_unet_3d_rflow-mr.pt"),
    ),
    "rflow-mr-brain": (
        ("nvidia/NV-Generate-CT", "autoencoder_v1.pt"),
        ("nvidia/NV-Generate-MR-Brain", "diff_unet_3d_rflow-mr-brain_v1.pt"),
    ),
}
#: the latent scale factor written into the diffusion checkpoints (not 1, so a missing division shows)
SCALE_FACTOR = 0.8
#: a small valid MR request: 128^3 (Z = 128 with X = Y = 128)
SMALL = (128, 128, 128)
#: sampling steps of the tests (the presets use 30)
STEPS = 2

_CACHE: dict[Any, Any] = {}


def mr_model_config(variant: str):
    """The preset's networks at reduced width for the CPU: UNet widths 16/32/32, VAE widths 4/8/8 (every other
    hyper-parameter as the preset's, which are the official ones except ``tiny``'s shallower blocks)."""
    tiny = preset("tiny").model
    vae = dataclasses.replace(tiny.vae, num_channels=(4, 8, 8), norm_num_groups=4)
    unet = dataclasses.replace(tiny.unet, num_channels=(16, 32, 32), norm_num_groups=8)
    return dataclasses.replace(preset(variant).model, vae=vae, unet=unet, controlnet=tiny.controlnet)


def save_official_mr(hub: Path, nets: ref.ReferenceNetworks, variant: str) -> Path:
    """The VAE and diffusion UNet as NVIDIA ships them for ``variant``, at their paths in a hub folder
    (``HUB/<owner>/<name>/models/<file>``, what :class:`maisi.networks.hub.FolderHub` serves); returns ``hub``."""
    (vae_repo, vae_name), (unet_repo, unet_name) = MR_FILES[variant]
    for repo in (vae_repo, unet_repo):
        (hub / repo / "models").mkdir(parents=True, exist_ok=True)
    vae_state = nets.autoencoder.state_dict()
    vae = {"unet_state_dict": vae_state} if variant == "rflow-mr" else vae_state
    torch.save(vae, hub / vae_repo / "models" / vae_name)
    unet = {
        "unet_state_dict": nets.diffusion_unet.state_dict(),
        "scale_factor": torch.tensor(nets.scale_factor),
    }
    torch.save(unet, hub / unet_repo / "models" / unet_name)
    return hub


def maisi_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's ``MAISI_HOME``: each MR variant downloaded into ``<home>/<variant>``."""
    if "home" not in _CACHE:
        _CACHE["home"] = tmp_path_factory.mktemp("maisi-home")
    return _CACHE["home"]


def mr_weights(tmp_path_factory: pytest.TempPathFactory, variant: str) -> tuple[Path, ref.ReferenceNetworks]:
    """Random reduced-width MR networks of ``variant``, served by a fake hub and fetched by ``maisi.networks.hub.
    download`` into ``<maisi_home>/<variant>`` (built once per session)."""
    from maisi.networks.hub import FolderHub, download

    key = ("weights", variant)
    if key not in _CACHE:
        seed = {"rflow-mr": 21, "rflow-mr-brain": 22}[variant]
        nets = ref.build_reference_networks(
            mr_model_config(variant), seed=seed, scale_factor=SCALE_FACTOR, mask=False
        )
        hub = save_official_mr(tmp_path_factory.mktemp(f"hub-{variant}"), nets, variant)
        target = maisi_home(tmp_path_factory) / variant
        download(variant, directory=target, hub=FolderHub(hub), progress=False)
        _CACHE[key] = (target, nets)
    return _CACHE[key]


def mr_config(variant: str, weights: Path, out: Path, **generate: Any) -> Config:
    """The variant's preset with the reduced networks, these weights and output folder, 3 steps, and ``generate``."""
    cfg = preset(variant)
    cfg.model = mr_model_config(variant)
    values = dict(weights=str(weights), output_dir=str(out), output_size=SMALL, steps=STEPS, qc_retries=0)
    cfg.generate = dataclasses.replace(cfg.generate, **{**values, **generate})
    return cfg
