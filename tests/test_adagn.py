"""The AdaGN mask UNet of the 2026 mask generator (``maisi.networks.adagn``): structure, official keys, strict
loading, parameter count, and the block and network numerics against the hand-written reference
(:mod:`reference_adagn`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import reference_adagn as refv2
import reference_pipeline as ref
from maisi.config.loading import load_config
from maisi.config.schema import UNetConfig

RESOURCES = Path(__file__).resolve().parents[1] / "src/maisi/resources/2026"
#: parameters of the official v2 mask UNet (``mask_generation_diffusion_def`` of the 2026 network file):
#: MONAI's MAISI UNet of that config (198,799,108) + the condition embedding (19*256+256 + 256*256+256 = 70,912)
#: + the widened resnet projections (768 -> 2*out instead of 512 -> out: 1025 * out over 5,824 output channels)
OFFICIAL_V2_MASK_UNET_PARAMETERS = 204_839_620
#: a small AdaGN UNet with every feature of the official one (attention with cross-attention, spacing input)
TINY = UNetConfig(
    variant="adagn",
    num_channels=(32, 48, 64),
    attention_levels=(False, False, True),
    num_head_channels=(0, 0, 16),
    num_res_blocks=1,
    norm_num_groups=16,
    resblock_updown=False,
    include_spacing_input=True,
    num_class_embeds=None,
    with_conditioning=True,
    cross_attention_dim=19,
    upcast_attention=True,
    adagn_condition_dim=19,
    adagn_context_embed_dim=48,
)


def official_unet_config() -> UNetConfig:
    return load_config(files=[RESOURCES / "config_network_rflow.json"]).model.mask_unet_v2


def reference_unet(cfg: UNetConfig, *, seed: int = 3) -> torch.nn.Module:
    kwargs, d, e = refv2.reference_unet_kwargs(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = refv2.make_reference_unet(kwargs, d, e)
    gen = torch.Generator().manual_seed(seed)
    ref.randomize_(net, generator=gen)
    # a condition that matters, as after training: the condition embedding and the modulation well away from
    # MONAI's initialisation
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "adagn_context_embed" in name or "time_emb_proj" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return net.eval()


def maisi_unet(cfg: UNetConfig, state: dict | None = None) -> torch.nn.Module:
    from maisi.networks.builders import build_unet
    from maisi.networks.checkpoint import load_state_strict

    net = build_unet(cfg)
    if state is not None:
        load_state_strict(net, state, source="reference")
    return net.eval()


def _inputs(batch: int = 2, shape=(4, 8, 4), seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, 4, *shape), generator=g)
    t = torch.tensor([700.25, 35.5][:batch])
    context = torch.rand((batch, 1, 19), generator=g) * 2 - 1
    spacing = torch.tensor([[150.0, 150.0, 200.0]]).expand(batch, 3)
    return x, t, context, spacing


def test_official_config_builds_the_adagn_unet_with_the_official_parameter_count():
    from maisi.networks.adagn import AdaGNResnetBlock, DiffusionModelUNetMaisiAdaGN
    from maisi.networks.builders import build_unet, count_parameters

    cfg = official_unet_config()
    with torch.device("meta"):
        net = build_unet(cfg)
        kwargs, d, e = refv2.reference_unet_kwargs(cfg)
        reference = refv2.make_reference_unet(kwargs, d, e)
    assert isinstance(net, DiffusionModelUNetMaisiAdaGN)
    assert (net.adagn_condition_dim, net.adagn_context_embed_dim) == (19, 256)
    assert count_parameters(net) == OFFICIAL_V2_MASK_UNET_PARAMETERS
    assert count_parameters(reference) == OFFICIAL_V2_MASK_UNET_PARAMETERS
    # the official key names and shapes: an official state dict loads strictly
    ours = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours["adagn_context_embed.0.weight"] == (256, 19)
    assert ours["adagn_context_embed.2.weight"] == (256, 256)
    assert ours["down_blocks.0.resnets.0.time_emb_proj.weight"] == (128, 256 + 256 + 256)
    assert ours["middle_block.resnet_2.time_emb_proj.weight"] == (1024, 768)
    blocks = [m for m in net.modules() if isinstance(m, AdaGNResnetBlock)]
    assert len(blocks) == 2 * 4 + 2 + 3 * 4  # down, middle, up


def test_official_checkpoint_layout_loads_strictly(tmp_path):
    """A file as NVIDIA ships ``mask_generation_diffusion_unet_v2.pt`` (``{"unet_state_dict", "scale_factor"}``)
    loads through maisi's official loader; a missing condition embedding or a v1-shaped projection is refused."""
    from maisi.config import preset
    from maisi.errors import CheckpointError
    from maisi.networks.official import load_official_component

    reference = reference_unet(TINY)
    path = tmp_path / "mask_generation_diffusion_unet_v2.pt"
    torch.save({"unet_state_dict": reference.state_dict(), "scale_factor": torch.tensor(1.0056)}, path)
    model_cfg = dataclasses.replace(preset("tiny").model, mask_unet_v2=TINY)
    component = load_official_component(path, "mask_unet_v2", model_cfg)
    assert component.extra["scale_factor"] == pytest.approx(1.0056)
    for k, v in reference.state_dict().items():
        assert torch.equal(component.model.state_dict()[k], v), k

    state = reference.state_dict()
    del state["adagn_context_embed.2.bias"]
    torch.save({"unet_state_dict": state}, path)
    with pytest.raises(CheckpointError, match=r"1 missing keys \[adagn_context_embed.2.bias\]"):
        load_official_component(path, "mask_unet_v2", model_cfg)
    state = reference.state_dict()
    state["down_blocks.0.resnets.0.time_emb_proj.weight"] = torch.zeros(32, 128)  # plain MAISI shape
    torch.save({"unet_state_dict": state}, path)
    with pytest.raises(CheckpointError, match="1 shape mismatches"):
        load_official_component(path, "mask_unet_v2", model_cfg)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("updown", ["none", "up", "down"])
def test_adagn_block_equals_the_reference_block(spatial_dims, updown):
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    from maisi.networks.adagn import AdaGNResnetBlock, to_adagn_block

    g = torch.Generator().manual_seed(0)
    kw = dict(spatial_dims=spatial_dims, in_channels=16, temb_channels=12, out_channels=32, norm_num_groups=8)
    block = DiffusionUNetResnetBlock(**kw, up=updown == "up", down=updown == "down")
    block = ref.randomize_(to_adagn_block(block, 5), generator=g, std=0.2)
    assert isinstance(block, AdaGNResnetBlock) and tuple(block.time_emb_proj.weight.shape) == (64, 17)
    x = torch.randn((2, 16, *([8] * spatial_dims)), generator=g)
    emb = torch.randn((2, 17), generator=g)
    out = block(x, emb)
    expected = refv2._film_block_forward(block, x, emb)
    assert out.shape == expected.shape and torch.allclose(out, expected, atol=1e-5, rtol=1e-6)
    # the embedding modulates (negative control): another embedding, another output
    assert (block(x, emb.flip(0)) - out).abs().max() > 1e-2


def test_new_block_starts_from_the_plain_block_on_the_time_embedding():
    """Initialisation: with a zero condition embedding a fresh AdaGN block shifts by the plain block's projection
    and does not scale."""
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    from maisi.networks.adagn import to_adagn_block

    torch.manual_seed(0)
    block = DiffusionUNetResnetBlock(3, 8, 6, 16, norm_num_groups=4)
    old_w, old_b = block.time_emb_proj.weight.clone(), block.time_emb_proj.bias.clone()
    proj = to_adagn_block(block, 4).time_emb_proj
    emb = torch.cat([torch.randn(3, 6), torch.zeros(3, 4)], dim=1)
    scale, shift = proj(emb).chunk(2, dim=1)
    assert torch.equal(scale, torch.zeros_like(scale))
    assert torch.allclose(shift, emb[:, :6] @ old_w.T + old_b, atol=1e-6)


def test_adagn_unet_equals_the_reference_network():
    reference = reference_unet(TINY)
    net = maisi_unet(TINY, reference.state_dict())
    x, t, context, spacing = _inputs()
    with torch.no_grad():
        out = net(x=x, timesteps=t, context=context, spacing_tensor=spacing)
        expected = refv2.reference_forward(reference, x, t, context, spacing)
        # the condition reaches the output (negative control, far above the bound)
        other = net(x=x, timesteps=t, context=context.flip(0), spacing_tensor=spacing)
    assert out.shape == x.shape
    assert (out - expected).abs().max() <= 1e-5
    assert (other - out).abs().max() > 1e-2


def test_condition_embedding_reads_two_and_three_dimensional_contexts():
    net = maisi_unet(TINY)
    x = torch.zeros((2, 4, 4, 4, 4))
    c = torch.rand((2, 19))
    with torch.no_grad():
        two = net.condition_embedding(x, c)
        three = net.condition_embedding(x, torch.stack([c, c], dim=1))
        none = net.condition_embedding(x, None)
        unset = net.condition_embedding(x, torch.full((2, 19), -1.0))
    assert torch.allclose(two, three, atol=1e-6) and torch.equal(none, unset)
    with pytest.raises(ValueError, match="context has 10 values per token, the network takes 19"):
        net.condition_embedding(x, torch.zeros((2, 1, 10)))


def test_adagn_fields_default_like_the_official_module():
    """Without ``adagn_*`` the condition width is ``cross_attention_dim`` and the embedding width 4 x the first
    channel count; with neither width known the build is refused."""
    net = maisi_unet(dataclasses.replace(TINY, adagn_condition_dim=None, adagn_context_embed_dim=None))
    assert (net.adagn_condition_dim, net.adagn_context_embed_dim) == (19, 128)
    bad = dataclasses.replace(
        TINY, adagn_condition_dim=None, cross_attention_dim=None, with_conditioning=False
    )
    with pytest.raises(
        ValueError, match="adagn_condition_dim is required when cross_attention_dim is not set"
    ):
        maisi_unet(bad)


def test_maisi_checkpoint_round_trip_and_gradients(tmp_path):
    """The network is rebuilt from its component folder alone (config + safetensors) with equal outputs, and
    trains: every parameter, the condition embedding included, gets a gradient."""
    from maisi.networks.checkpoint import load_component, save_component

    net = reference_unet(TINY)
    saved = maisi_unet(TINY, net.state_dict())
    folder = save_component(tmp_path / "mask_unet_v2", saved, TINY, component="mask_unet_v2")
    loaded = load_component(folder).model
    x, t, context, spacing = _inputs()
    with torch.no_grad():
        a = saved(x=x, timesteps=t, context=context, spacing_tensor=spacing)
        b = loaded(x=x, timesteps=t, context=context, spacing_tensor=spacing)
    assert torch.equal(a, b)
    loaded.train()
    loaded(x=x, timesteps=t, context=context, spacing_tensor=spacing).square().mean().backward()
    missing = [n for n, p in loaded.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
