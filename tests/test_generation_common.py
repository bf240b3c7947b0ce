"""Shared helpers of the generation tests: random-weight model sets, smaller still than the tiny preset.

Generation plumbing does not need trained weights; a model set with the tiny preset's structure and fewer channels
keeps every test on CPU in seconds. Weights are built once per test session (module-level cache).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from maisi.config import Config, preset

#: where the session's model sets live, by name (built once)
_CACHE: dict[str, Path] = {}
DATA = Path(__file__).parent / "data"


def micro_config() -> Config:
    """The tiny preset with about 4x fewer channels: 64^3 images -> 16^3 latents, every network < 0.5 M params."""
    cfg = preset("tiny")
    m = cfg.model
    vae = dataclasses.replace(m.vae, num_channels=(8, 16, 16), norm_num_groups=4)
    mask_vae = dataclasses.replace(m.mask_vae, num_channels=(8, 16, 16), norm_num_groups=4)
    unet = dataclasses.replace(
        m.unet, num_channels=(16, 16, 32), num_head_channels=(0, 0, 8), norm_num_groups=8
    )
    controlnet = dataclasses.replace(
        m.controlnet,
        num_channels=(16, 16, 32),
        num_head_channels=(0, 0, 8),
        norm_num_groups=8,
        conditioning_embedding_num_channels=(8, 8, 8),
    )
    mask_unet = dataclasses.replace(
        m.mask_unet, num_channels=(16, 16, 32), num_head_channels=(0, 0, 8), norm_num_groups=8
    )
    cfg.model = dataclasses.replace(
        m, vae=vae, mask_vae=mask_vae, unet=unet, controlnet=controlnet, mask_unet=mask_unet
    )
    cfg.generate = dataclasses.replace(cfg.generate, steps=2, qc=False, qc_retries=0, mask_steps=3)
    return cfg


def build_model_set(directory: Path, cfg: Config, *, seed: int = 0, mask: bool = True) -> Path:
    """Random-weight model set saved in maisi's layout.

    MONAI zero-initialises the UNets' output convolutions and the ControlNet's residual projections, so freshly
    built networks predict exactly 0 and ignore the label map; those all-zero weights get small random values
    here, as after training, so that conditioning and guidance change the output.
    """
    from maisi.networks import build
    from maisi.networks.checkpoint import Component
    from maisi.networks.model_set import ModelSet, save_model_set

    torch.manual_seed(seed)
    names = ["vae", "unet", "controlnet"] + (["mask_vae", "mask_unet"] if mask else [])
    comps = {}
    for name in names:
        model = build(name, cfg.model)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0.0, 0.05)
        comps[name] = Component(
            name=name, model=model, config=getattr(cfg.model, name), path=directory / name
        )
    save_model_set(directory, ModelSet(config=cfg.model, components=comps, layout="maisi", root=directory))
    return directory


def session_weights(tmp_path_factory: pytest.TempPathFactory, name: str = "micro", **kwargs) -> Path:
    """A model set shared by every test of the session."""
    if name not in _CACHE or not (_CACHE[name] / "vae" / "config.json").is_file():
        _CACHE[name] = build_model_set(tmp_path_factory.mktemp(f"weights-{name}"), micro_config(), **kwargs)
    return _CACHE[name]


def request(weights: Path, out: Path, **generate) -> Config:
    """A micro config asking for ``generate`` fields, weights and output folder set."""
    cfg = micro_config()
    cfg.generate = dataclasses.replace(cfg.generate, weights=str(weights), output_dir=str(out), **generate)
    return cfg


@pytest.fixture(scope="module", autouse=False)
def one_thread():
    """Run the micro networks on one intra-op thread (they are latency-bound; two threads only add contention),
    restoring the previous setting after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def perturbed_model_set(name: str = "tiny", device: torch.device | str = "cpu"):
    """The preset's VAE, UNet and ControlNet with seeded random weights, every parameter moved by N(0, 0.05) so
    zero-initialised outputs (the ControlNet's residual convolutions) are not zero; in memory, not saved."""
    from maisi.networks import build
    from maisi.networks.checkpoint import Component
    from maisi.networks.model_set import ModelSet

    cfg = preset(name)
    torch.manual_seed(0)
    comps = {}
    for component in ("vae", "unet", "controlnet"):
        model = build(component, cfg.model).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        comps[component] = Component(
            name=component, model=model.to(device), config=getattr(cfg.model, component), path=Path(component)
        )
    return ModelSet(config=cfg.model, components=comps, layout="maisi", root=Path(name))
