"""maisi: paired synthetic CT images and segmentation masks by 3D latent diffusion (MAISI)."""

from __future__ import annotations

__version__ = "0.1.0"
