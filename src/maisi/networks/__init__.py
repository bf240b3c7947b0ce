"""The MAISI networks (on MONAI's classes) and their checkpoint IO."""

from __future__ import annotations

from maisi.networks.builders import (
    COMPONENTS,
    build,
    build_controlnet,
    build_discriminator,
    build_unet,
    build_vae,
    count_parameters,
    fuse_vae,
    set_fused_attention,
)

__all__ = [
    "COMPONENTS",
    "build",
    "build_controlnet",
    "build_discriminator",
    "build_unet",
    "build_vae",
    "count_parameters",
    "fuse_vae",
    "set_fused_attention",
]
