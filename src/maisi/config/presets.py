"""Named presets: the official MAISI hyper-parameters (``rflow-ct``, ``ddpm-ct``, ``rflow-mr``, ``rflow-mr-brain``)
and ``tiny`` / ``demo`` for CPU work.

A preset is a function returning a fresh :class:`~maisi.config.schema.Config`; overlays change it key by key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from maisi.config.schema import (
    Config,
    ControlNetConfig,
    DataConfig,
    DiscriminatorConfig,
    GenerateConfig,
    ModelConfig,
    SchedulerConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
)
from maisi.errors import ConfigError

#: the official ``config_infer.json`` request: a chest mask holding a lung tumour (database retrieval keeps only
#: candidates holding every listed anatomy and no unlisted tumour), 256^3 at 1.5 x 1.5 x 2 mm
OFFICIAL_CT_REQUEST = dict(body_region=("chest",), anatomy=("lung tumor",))


def rflow_ct() -> Config:
    """Official MAISI v2 rectified-flow CT model (``config_network_rflow.json``), the official default request."""
    return Config(preset="rflow-ct", generate=GenerateConfig(**OFFICIAL_CT_REQUEST))


def ddpm_ct() -> Config:
    """Official MAISI v1 DDPM CT model (``config_network_ddpm.json``): body-region inputs, no class embeds."""
    model = ModelConfig(
        vae=VAEConfig(num_splits=8),
        unet=UNetConfig(
            resblock_updown=False,
            include_fc=False,
            include_top_region_index_input=True,
            include_bottom_region_index_input=True,
            num_class_embeds=None,
        ),
        controlnet=ControlNetConfig(resblock_updown=False, include_fc=False, num_class_embeds=None),
        scheduler=SchedulerConfig(kind="ddpm"),
        include_body_region=True,
    )
    return Config(preset="ddpm-ct", model=model, generate=GenerateConfig(steps=1000, **OFFICIAL_CT_REQUEST))


def _mr(name: str, *, generate: GenerateConfig, lr: float) -> Config:
    """An official MR variant: the rflow-ct networks (both MR variants are defined by ``config_network_rflow.json``:
    the README's "Network Detail" row and the ``-t configs/config_network_rflow.json`` of their commands), image
    only (no ControlNet, no mask), MR intensities, the official ``diffusion_unet_train`` learning rate."""
    return Config(
        preset=name,
        data=DataConfig(modality="mri"),
        train=TrainConfig(lr=lr, batch_size=1),
        generate=generate,
    )


def rflow_mr() -> Config:
    """Official body-MR model (``nvidia/NV-Generate-MR``: ``autoencoder_v2.pt``, its own VAE trained on CT and MR,
    and ``diff_unet_3d_rflow-mr.pt``). Inference and training defaults from
    ``configs/config_maisi_diff_model_rflow-mr.json`` (commit 2cb90dd): 128 x 256 x 256 at 1.25 x 1 x 1 mm, modality 9
    (``mri_t1``), classifier-free guidance 15, 30 steps, seed 0, lr 1e-4."""
    return _mr(
        "rflow-mr",
        generate=GenerateConfig(
            output_size=(128, 256, 256),
            spacing=(1.25, 1.0, 1.0),
            modality="mri_t1",
            guidance=15.0,
            steps=30,
            seed=0,
            mask_source="none",
            body_region=(),
        ),
        lr=1e-4,
    )


def rflow_mr_brain() -> Config:
    """Official brain-MR model (``nvidia/NV-Generate-MR-Brain``: ``diff_unet_3d_rflow-mr-brain_v1.pt`` on the CT VAE
    ``autoencoder_v1.pt``; T1, T2, FLAIR, SWI, whole-brain and skull-stripped). Defaults from
    ``configs/config_maisi_diff_model_rflow-mr-brain.json`` (commit 34d81a7): 256^3 at 0.8 x 1 x 1 mm, modality 31
    (``mri_flair_skull_stripped``), guidance 10, 30 steps, seed 1234, lr 1e-5."""
    return _mr(
        "rflow-mr-brain",
        generate=GenerateConfig(
            output_size=(256, 256, 256),
            spacing=(0.8, 1.0, 1.0),
            modality="mri_flair_skull_stripped",
            guidance=10.0,
            steps=30,
            seed=1234,
            mask_source="none",
            body_region=(),
        ),
        lr=1e-5,
    )


def tiny() -> Config:
    """The rflow-ct structure shrunk for CPU: every network under 3 M parameters, 64^3 images, 16^3 latents."""
    vae = VAEConfig(num_channels=(16, 32, 32), num_res_blocks=(1, 1, 1), norm_num_groups=8, num_splits=1)
    unet = UNetConfig(
        num_channels=(32, 48, 64),
        attention_levels=(False, False, True),
        num_head_channels=(0, 0, 16),
        num_res_blocks=1,
        norm_num_groups=16,
    )
    controlnet = ControlNetConfig(
        num_channels=(32, 48, 64),
        attention_levels=(False, False, True),
        num_head_channels=(0, 0, 16),
        num_res_blocks=1,
        norm_num_groups=16,
        conditioning_embedding_num_channels=(8, 16, 16),
    )
    mask_vae = VAEConfig(
        in_channels=8,
        out_channels=125,
        num_channels=(16, 32, 32),
        num_res_blocks=(1, 1, 1),
        norm_num_groups=8,
        use_convtranspose=True,
        num_splits=1,
    )
    mask_unet = UNetConfig(
        variant="monai",
        num_channels=(32, 48, 64),
        attention_levels=(False, False, True),
        num_head_channels=(0, 0, 16),
        num_res_blocks=1,
        norm_num_groups=16,
        resblock_updown=False,
        include_spacing_input=False,
        num_class_embeds=None,
        with_conditioning=True,
        cross_attention_dim=10,
        upcast_attention=True,
    )
    model = ModelConfig(
        vae=vae,
        unet=unet,
        controlnet=controlnet,
        mask_vae=mask_vae,
        mask_unet=mask_unet,
        discriminator=DiscriminatorConfig(channels=8, num_layers_d=2),
        mask_latent_shape=(4, 16, 16, 16),
    )
    return Config(
        preset="tiny",
        model=model,
        data=DataConfig(spacing=(3.0, 3.0, 3.0), divisor=64, encode_window=(32, 32, 32)),
        # small networks: activations fit in memory, and recomputing them costs time (ControlNet: ~20% a step)
        train=TrainConfig(
            batch_size=2,
            lr=1e-3,
            patch_size=(32, 32, 32),
            ckpt_every=100,
            val_every=50,
            grad_checkpointing=False,
        ),
        generate=GenerateConfig(output_size=(64, 64, 64), spacing=(3.0, 3.0, 3.0)),
    )


def demo() -> Config:
    """The shipped demo model set (``maisi/demo/``, trained by ``recipes/demo``): the ``tiny`` networks, trained on
    128^3 phantoms at 3 mm and generating 128^3 volumes at 3 mm."""
    cfg = tiny()
    return dataclasses.replace(
        cfg,
        preset="demo",
        generate=dataclasses.replace(
            cfg.generate,
            output_size=(128, 128, 128),
            spacing=(3.0, 3.0, 3.0),
            body_region=("chest", "abdomen"),
            # the small ControlNet under-drives organ contrast (kidneys, vertebrae); 1.25 raised the large-organ
            # Dice of generated pairs by ~0.02 with QC unchanged, 1.5-2 started failing QC (recipes/demo/README.md)
            controlnet_scale=1.25,
        ),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "rflow-ct": rflow_ct,
    "ddpm-ct": ddpm_ct,
    "rflow-mr": rflow_mr,
    "rflow-mr-brain": rflow_mr_brain,
    "tiny": tiny,
    "demo": demo,
}


def preset(name: str) -> Config:
    """A fresh copy of a named preset."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; available: {sorted(PRESETS)}") from None
