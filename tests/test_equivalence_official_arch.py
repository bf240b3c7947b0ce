"""The official architectures, built from the official network JSON files by MONAI (not from maisi's presets),
load strictly into maisi's networks, and the rflow-ct model samples the same image through maisi's pipeline.

This ties maisi's ``rflow-ct`` / ``ddpm-ct`` presets to ``config_network_rflow.json`` / ``config_network_ddpm.json``
(a hyper-parameter drift would fail the strict load) and checks the full-width networks (64-512 channels,
attention at two levels, the VAE's ``num_splits`` memory path) on a small volume: 32 x 64 x 32 (the smallest that
MONAI's 4-way split VAE convolutions accept along Y), two rflow steps; ddpm-ct (slow): 32 x 128 x 32, 3 steps.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import reference_pipeline as ref
from test_equivalence_common import TOL_UNIT, initial_noise, make_label, max_abs, write_mask

SHAPE, SPACING = (32, 64, 32), (1.5, 1.5, 2.0)
#: the ddpm-ct VAE splits its convolutions 8 ways along Y: MONAI needs 32 latent voxels there
SHAPE_DDPM = (32, 128, 32)
COMPONENTS = {
    "vae": "autoencoder_def",
    "unet": "diffusion_unet_def",
    "controlnet": "controlnet_def",
    "mask_vae": "mask_generation_autoencoder_def",
    "mask_unet": "mask_generation_diffusion_def",
}


def official_networks(network_json: str, names=("vae", "unet", "controlnet"), *, seed: int = 0) -> dict:
    """MONAI networks from an official network JSON (CPU overrides only), seeded random weights."""
    defs = ref.network_definitions(network_json)
    g = torch.Generator().manual_seed(seed)
    nets = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            overrides = ref.CPU_VAE_OVERRIDES if "vae" in name else ref.CPU_OVERRIDES
            nets[name] = ref.randomize_(
                ref.instantiate(defs[COMPONENTS[name]], **overrides),
                generator=g,
                std=0.05 if "vae" in name else 0.01,
            ).eval()
    if "vae" in nets:
        ref.center_image_output_(nets["vae"])
    if "controlnet" in nets:
        ref.perturb_zero_convs(nets["controlnet"], generator=g)
    return nets


def maisi_model_set(preset_name: str, nets: dict, root: Path, *, scale_factor: float = 0.8):
    """maisi's own networks for the preset, each loaded strictly from the MONAI network's state dict."""
    from maisi.config import preset
    from maisi.networks import build
    from maisi.networks.checkpoint import Component, load_state_strict
    from maisi.networks.model_set import ModelSet

    cfg = preset(preset_name).model
    cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scale_factor=scale_factor))
    comps = {}
    for name, net in nets.items():
        model = build(name, cfg)
        load_state_strict(model, net.state_dict(), source=f"{preset_name}:{name}")
        comps[name] = Component(name=name, model=model.eval(), config=getattr(cfg, name), path=root / name)
    return ModelSet(config=cfg, components=comps, layout="official", root=root)


@pytest.mark.parametrize(
    "network_json, preset_name",
    [("config_network_rflow.json", "rflow-ct"), ("config_network_ddpm.json", "ddpm-ct")],
)
def test_presets_build_official_architectures(network_json, preset_name):
    """Every component of the preset has exactly the official network's parameters and buffers (names and shapes:
    what a strict load of NVIDIA's files checks), built on the meta device (no memory, no init cost)."""
    from maisi.config import preset
    from maisi.networks import build

    cfg = preset(preset_name).model
    defs = ref.network_definitions(network_json)
    for name, key in COMPONENTS.items():
        with torch.device("meta"):
            overrides = ref.CPU_VAE_OVERRIDES if "vae" in name else ref.CPU_OVERRIDES
            theirs = {
                k: tuple(v.shape) for k, v in ref.instantiate(defs[key], **overrides).state_dict().items()
            }
            ours = {k: tuple(v.shape) for k, v in build(name, cfg).state_dict().items()}
        assert ours == theirs, f"{preset_name} {name}: {sorted(set(ours) ^ set(theirs))[:5]}"
    official = ref.official_json(network_json)
    assert tuple(cfg.mask_latent_shape) == tuple(official["mask_generation_latent_shape"])
    assert cfg.mask_vae.scale_factor == pytest.approx(official["mask_generation_scale_factor"])
    assert cfg.include_body_region == official["include_body_region"]
    scheduler = {k: v for k, v in official["noise_scheduler"].items() if k != "_target_"}
    ours = dataclasses.asdict(cfg.scheduler)
    assert ours["kind"] == ("rflow" if "rflow" in network_json else "ddpm")
    assert {k: ours[k] for k in scheduler} == scheduler
    mask_scheduler = {k: v for k, v in official["mask_generation_noise_scheduler"].items() if k != "_target_"}
    ours = dataclasses.asdict(cfg.mask_scheduler)
    assert ours["kind"] == "ddpm"
    assert {k: ours[k] for k in mask_scheduler} == mask_scheduler


@pytest.mark.parametrize(
    "network_json, preset_name",
    [
        ("config_network_rflow.json", "rflow-ct"),
        # a 3-step DDPM chain on both sides (the official 1000-step chain is far too slow at full width on a CPU)
        pytest.param("config_network_ddpm.json", "ddpm-ct", marks=pytest.mark.slow),
    ],
)
def test_official_architecture_matches_official_loop(tmp_path, network_json, preset_name):
    from maisi.config import preset
    from maisi.generation import generate
    from maisi.generation.seeds import derive_seed, torch_generator

    ddpm = preset_name == "ddpm-ct"
    steps = 3 if ddpm else 2
    nets = official_networks(network_json)
    model_set = maisi_model_set(preset_name, nets, tmp_path / "weights")
    if ddpm:
        model_set.config = dataclasses.replace(
            model_set.config,
            scheduler=dataclasses.replace(model_set.config.scheduler, num_train_timesteps=steps),
        )
    shape = SHAPE_DDPM if ddpm else SHAPE
    label = make_label(shape)
    noise = initial_noise(shape)
    scheduler = ref.official_scheduler(network_json, **({"num_train_timesteps": steps} if ddpm else {}))
    cfg = preset(preset_name)
    cfg.data = dataclasses.replace(cfg.data, label_set="maisi")
    cfg.generate = dataclasses.replace(
        cfg.generate,
        steps=steps,
        qc=False,
        qc_retries=0,
        preview=False,
        mask_source="file",
        seed=3,
        mask=str(write_mask(tmp_path / "mask.nii.gz", label, SPACING)),
        output_dir=str(tmp_path / "out"),
    )
    reference = ref.reference_image(
        ref.ReferenceNetworks(
            autoencoder=nets["vae"],
            diffusion_unet=nets["unet"],
            controlnet=nets["controlnet"],
            scale_factor=0.8,
        ),
        scheduler,
        label,
        SPACING,
        noise,
        num_inference_steps=steps,
        step_generator=torch_generator(derive_seed(3, 0, 0, stream="sampler")),
    )
    (sample,) = generate(cfg, model_set=model_set, initial_noise=noise, return_unit=True, write=False)
    assert max_abs(sample.unit, reference.unit) <= TOL_UNIT
    body = torch.from_numpy(label > 0)
    assert reference.unit[body].std().item() > 0.02  # an informative image, not a clipped constant
