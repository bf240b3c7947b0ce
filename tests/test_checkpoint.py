"""Official checkpoint files (made with MONAI's reference classes) load strictly; our format round-trips."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from maisi.cli import main
from maisi.config import preset
from maisi.errors import CheckpointError
from maisi.io import read_torch_file
from maisi.networks import build, count_parameters
from maisi.networks.checkpoint import load_component, save_component
from maisi.networks.model_set import load_model_set, save_model_set
from maisi.networks.official import OFFICIAL_FILES


def _reference(name: str, model_cfg):
    """The network built exactly as the official scripts do, through MONAI's classes."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
    from monai.networks.nets import DiffusionModelUNet

    kw = dataclasses.asdict(getattr(model_cfg, name))
    if name in ("vae", "mask_vae"):
        kw.pop("scale_factor")
        kw["norm_float16"] = False  # fp32 on CPU: MONAI's fp16 norm output cannot feed fp32 convolutions
        kw["num_splits"] = (
            1  # splitting only bounds memory; at 32^3 MONAI's split convolutions would be too thin
        )
        return AutoencoderKlMaisi(**kw)
    kw["use_flash_attention"] = False  # MONAI refuses flash attention without CUDA
    if name == "controlnet":
        return ControlNetMaisi(**kw)
    variant = kw.pop("variant")
    kw.pop("adagn_condition_dim"), kw.pop("adagn_context_embed_dim")  # fields of the AdaGN variant only
    if variant == "monai":
        for k in (
            "include_top_region_index_input",
            "include_bottom_region_index_input",
            "include_spacing_input",
        ):
            kw.pop(k)
        kw["channels"] = kw.pop("num_channels")
        return DiffusionModelUNet(**kw)
    return DiffusionModelUNetMaisi(**kw)


def _write_official(models, variant, model_cfg, names, scale=0.9):
    """Save reference state dicts in NVIDIA's file layout and wrappers."""
    refs = {}
    for name in names:
        torch.manual_seed(len(name))
        ref = refs[name] = _reference(name, model_cfg).eval()
        sd = ref.state_dict()
        fname = OFFICIAL_FILES[variant][name]
        if name == "unet":
            obj = {"unet_state_dict": sd, "scale_factor": torch.tensor(scale), "num_train_timesteps": 1000}
        elif name == "controlnet":
            obj = {"controlnet_state_dict": sd}
        else:
            obj = sd
        torch.save(obj, models / fname)
    return refs


def _outputs(name, net, model_cfg):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if name in ("vae", "mask_vae"):
            c = getattr(model_cfg, name).in_channels
            x = torch.rand(1, c, 32, 32, 32, generator=g)
            return net.decode(net.encode(x)[0])
        z = torch.randn(1, 4, 8, 8, 8, generator=g)
        t = torch.tensor([300.0])
        if name == "mask_unet":
            return net(z, t, context=torch.rand(1, 1, 10, generator=g))
        kw = {"class_labels": torch.tensor([1])} if getattr(model_cfg, name).num_class_embeds else {}
        if name == "controlnet":
            return net(x=z, timesteps=t, controlnet_cond=torch.rand(1, 8, 32, 32, 32, generator=g), **kw)[1]
        kw["spacing_tensor"] = torch.tensor([[150.0, 150.0, 200.0]])
        if model_cfg.unet.include_top_region_index_input:
            kw["top_region_index_tensor"] = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
            kw["bottom_region_index_tensor"] = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
        return net(z, t, **kw)


def _check_official(tmp_path, variant, names):
    """Files made by MONAI's classes load strictly into ours and give the same outputs: <= 1e-5 with MONAI's own
    VAE numerics; the fused VAE path (default) stays within 5e-5 (outputs of magnitude ~2, so ~2.5e-5 relative)."""
    cfg = preset(variant).model
    models = tmp_path / "models"
    models.mkdir(parents=True)
    refs = _write_official(models, variant, cfg, names)
    # MONAI's own VAE code, with convolutions unsplit (splitting bounds memory; 32^3 inputs are too thin for it)
    plain = dataclasses.replace(
        cfg,
        vae=dataclasses.replace(cfg.vae, num_splits=1),
        mask_vae=dataclasses.replace(cfg.mask_vae, num_splits=1),
    )
    ms = load_model_set(tmp_path, fast=False, base=plain)
    assert ms.layout == "official" and sorted(ms.components) == sorted(names)
    for name in names:
        diff = (_outputs(name, refs[name], cfg) - _outputs(name, ms[name], cfg)).abs().max().item()
        assert diff <= 1e-5, (name, diff)
    fused = load_model_set(tmp_path, components=[n for n in names if n.endswith("vae")])
    for name in fused.components:
        diff = (_outputs(name, refs[name], cfg) - _outputs(name, fused[name], cfg)).abs().max().item()
        assert diff <= 5e-5, (name, diff)
    if "unet" in names:
        assert ms.config.vae.scale_factor == pytest.approx(0.9)
    return ms


def test_official_rflow_layout_loads_strictly_and_matches(tmp_path):
    ms = _check_official(tmp_path, "rflow-ct", ["vae", "controlnet", "mask_vae"])
    assert count_parameters(ms["controlnet"]) == 72_037_072


@pytest.mark.slow
def test_official_rflow_unet_loads_strictly_and_matches(tmp_path):
    ms = _check_official(tmp_path, "rflow-ct", ["unet"])
    assert count_parameters(ms["unet"]) == 180_500_868


@pytest.mark.slow
def test_official_full_layouts(tmp_path):
    # the v2 (AdaGN) mask UNet has no MONAI class to write it: its official file loads strictly and equals the
    # reference network in tests/test_adagn.py and test_adagn_equivalence.py
    for root, variant in ((tmp_path / "r", "rflow-ct"), (tmp_path / "d", "ddpm-ct")):
        _check_official(root, variant, [n for n in OFFICIAL_FILES[variant] if n != "mask_unet_v2"])


def test_info_weights_lists_official_components(tmp_path, capsys):
    cfg = preset("tiny").model
    models = tmp_path / "models"
    models.mkdir()
    _write_official(models, "rflow-ct", cfg, ["vae", "unet"])
    assert main(["info", "--weights", str(tmp_path), "--preset", "tiny"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{tmp_path}: official layout, variant rflow-ct"  # the inventory first, then the loaded networks
    out = [line for line in printed if line.startswith(("vae ", "unet "))]
    assert len(out) == 2
    assert (
        out[0].startswith("vae")
        and "autoencoder_v1.pt" in out[0]
        and f"{count_parameters(build('vae', cfg)):,}" in out[0]
    )
    assert out[1].startswith("unet") and "diff_unet_3d_rflow-ct.pt" in out[1]


def test_autoencoder_nested_under_unet_state_dict(tmp_path):
    cfg = preset("tiny").model
    ref = _reference("vae", cfg)
    (tmp_path / "models").mkdir()
    torch.save({"unet_state_dict": ref.state_dict()}, tmp_path / "models" / "autoencoder_v1.pt")
    ms = load_model_set(tmp_path, base=cfg)
    assert all(torch.equal(ms["vae"].state_dict()[k], v) for k, v in ref.state_dict().items())


def test_mismatched_checkpoint_lists_keys(tmp_path):
    cfg = preset("tiny").model
    sd = _reference("vae", cfg).state_dict()
    sd.pop("decoder.blocks.0.conv.conv.weight")
    sd["extra.weight"] = torch.zeros(1)
    (tmp_path / "models").mkdir()
    torch.save(sd, tmp_path / "models" / "autoencoder_v1.pt")
    with pytest.raises(
        CheckpointError,
        match=r"autoencoder_v1\.pt: does not match the network: 1 missing keys "
        r"\[decoder\.blocks\.0\.conv\.conv\.weight\]; 1 unexpected keys \[extra\.weight\]",
    ):
        load_model_set(tmp_path, base=cfg)


def test_shape_mismatch_is_reported(tmp_path):
    tiny = preset("tiny").model
    (tmp_path / "models").mkdir()
    torch.save(_reference("vae", tiny).state_dict(), tmp_path / "models" / "autoencoder_v1.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_model_set(tmp_path)  # official rflow-ct architecture


class _Payload:
    def __reduce__(self):
        return (os.getcwd, ())


def test_pickled_object_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state": _Payload()}, path)
    with pytest.raises(
        CheckpointError, match=r"evil\.pt: refused to load: the file holds pickled Python objects"
    ):
        read_torch_file(path)


def test_numpy_scalar_scale_factor_is_allowed(tmp_path):
    import numpy as np

    path = tmp_path / "f.pt"
    torch.save({"unet_state_dict": {"w": torch.ones(2)}, "scale_factor": np.float64(0.5)}, path)
    obj = read_torch_file(path)
    assert float(obj["scale_factor"]) == 0.5


@pytest.mark.parametrize(
    "content,match", [(None, "checkpoint file not found"), (b"garbage", "not a readable PyTorch")]
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / "x.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_torch_file(path)


def test_safetensors_round_trip_is_bit_exact(tmp_path):
    cfg = preset("tiny").model
    torch.manual_seed(3)
    for name in ("vae", "unet", "controlnet", "mask_vae", "mask_unet", "discriminator"):
        net = build(name, cfg)
        save_component(tmp_path / name, net, getattr(cfg, name), component=name, extra={"step": 7})
        comp = load_component(tmp_path / name)
        assert comp.config == getattr(cfg, name) and comp.extra == {"step": 7}
        for k, v in net.state_dict().items():
            assert torch.equal(comp.model.state_dict()[k], v), (name, k)


def test_component_folder_never_silently_overwritten(tmp_path):
    cfg = preset("tiny").model
    net = build("vae", cfg)
    save_component(tmp_path / "vae", net, cfg.vae, component="vae")
    with pytest.raises(CheckpointError, match="already exists"):
        save_component(tmp_path / "vae", net, cfg.vae, component="vae")
    save_component(tmp_path / "vae", net, cfg.vae, component="vae", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vae"]  # no temporary folders left


def test_model_set_round_trip_keeps_scale_factor(tmp_path):
    cfg = preset("tiny").model
    cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scale_factor=1.7))
    from maisi.networks.checkpoint import Component
    from maisi.networks.model_set import ModelSet

    comps = {n: Component(n, build(n, cfg), getattr(cfg, n), tmp_path) for n in ("vae", "unet")}
    save_model_set(tmp_path / "set", ModelSet(config=cfg, components=comps, layout="maisi", root=tmp_path))
    ms = load_model_set(tmp_path / "set")
    assert ms.layout == "maisi" and ms.config.vae.scale_factor == 1.7
    assert ms.config.mask_latent_shape == cfg.mask_latent_shape


def test_missing_weights_folder(tmp_path):
    with pytest.raises(CheckpointError, match="weights folder not found"):
        load_model_set(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no weights found"):
        load_model_set(tmp_path)
