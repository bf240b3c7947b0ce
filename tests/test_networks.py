"""Every preset builds and runs; parameter counts of the official presets; fused paths equal MONAI's."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from maisi.config import preset
from maisi.networks import build, build_vae, count_parameters, set_fused_attention

OFFICIAL_COUNTS = {  # parameters of NVIDIA's released networks (rflow-ct)
    "vae": 20_944_897,
    "unet": 180_500_868,
    "controlnet": 72_037_072,
    "mask_vae": 5_256_509,
    "mask_unet": 197_163_012,
}


def test_rflow_ct_parameter_counts_equal_official():
    m = preset("rflow-ct").model
    with torch.device("meta"):
        counts = {name: count_parameters(build(name, m)) for name in OFFICIAL_COUNTS}
    assert counts == OFFICIAL_COUNTS
    assert {k: round(v / 1e6, 1) for k, v in counts.items()} == {
        "vae": 20.9,
        "unet": 180.5,
        "controlnet": 72.0,
        "mask_vae": 5.3,
        "mask_unet": 197.2,
    }


def test_tiny_networks_are_small():
    m = preset("tiny").model
    for name in ("vae", "unet", "controlnet", "mask_vae", "mask_unet", "discriminator"):
        assert count_parameters(build(name, m)) < 3_000_000, name


def _unet_inputs(cfg, latent=(8, 8, 8), batch=1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.unet.in_channels, *latent, generator=g)
    kw = {"spacing_tensor": torch.tensor([[1.5, 1.5, 2.0]] * batch) * 100}
    if cfg.unet.num_class_embeds:
        kw["class_labels"] = torch.ones(batch, dtype=torch.long)
    if cfg.unet.include_top_region_index_input:
        kw["top_region_index_tensor"] = torch.tensor([[0.0, 1.0, 0.0, 0.0]] * batch)
        kw["bottom_region_index_tensor"] = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * batch)
    return x, torch.tensor([500.0] * batch), kw


def _perturb_zero_weights(model: torch.nn.Module, seed: int = 0) -> None:
    """MONAI zero-initialises the UNet's output and the ControlNet's residual projections (so a fresh ControlNet
    adds exactly 0): give those weights small values, as after training, so that dropping them is detectable."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("name", ["tiny", "rflow-ct", "ddpm-ct"])
def test_preset_networks_use_their_inputs_cpu_fp32(name):
    """Each network of a preset runs on CPU fp32 at the right shapes and its output depends on what it is given:
    the VAE reconstructs its input's latent, the UNet its conditioning, the ControlNet its label map."""
    torch.manual_seed(0)
    m = preset(name).model
    with torch.no_grad():
        vae = build("vae", m).eval()
        img = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
        mu, sigma = vae.encode(img)
        assert mu.shape == (1, 4, 8, 8, 8) and sigma.shape == mu.shape and bool((sigma > 0).all())
        decoded = vae.decode(mu)
        assert decoded.shape == (1, 1, 32, 32, 32)
        if name == "tiny":
            assert (decoded - vae.decode(mu + 1.0)).abs().mean() > 1e-4  # the decoder reads its latent
        unet = build("unet", m).eval()
        _perturb_zero_weights(unet)
        x, t, kw = _unet_inputs(m)
        out = unet(x, t, **kw)
        assert out.shape == x.shape and torch.isfinite(out).all()
        if name == "tiny":  # (the official-size networks take seconds a call: their wiring is MONAI's and equal)
            assert (unet(x, t * 0.5, **kw) - out).abs().mean() > 1e-4  # the time embedding reaches the output
            other = {**kw, "spacing_tensor": kw["spacing_tensor"] * 2}
            assert (unet(x, t, **other) - out).abs().mean() > 1e-6  # so does the spacing input
        control = build("controlnet", m).eval()
        _perturb_zero_weights(control, seed=1)
        cls = kw.get("class_labels")
        outs = []
        for seed in (2, 3) if name == "tiny" else (2,):  # two label maps
            cond = (torch.rand(1, 8, 32, 32, 32, generator=torch.Generator().manual_seed(seed)) > 0.5).float()
            down, mid = control(x=x, timesteps=t, controlnet_cond=cond, class_labels=cls)
            outs.append(
                unet(x, t, down_block_additional_residuals=down, mid_block_additional_residual=mid, **kw)
            )
        assert outs[0].shape == x.shape
        assert (outs[0] - out).abs().mean() > 1e-4  # the residuals are added
        if len(outs) == 2:
            assert (outs[0] - outs[1]).abs().mean() > 1e-5  # and depend on the label map


@pytest.mark.parametrize("name", ["tiny", "rflow-ct"])
def test_mask_models_use_their_inputs(name):
    torch.manual_seed(0)
    m = preset(name).model
    with torch.no_grad():
        mvae = build("mask_vae", m).eval()
        z = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(1))
        logits = mvae.decode(z)
        assert logits.shape == (1, 125, 32, 32, 32)
        assert mvae.encode(torch.rand(1, 8, 32, 32, 32))[0].shape == (1, 4, 8, 8, 8)
        munet = build("mask_unet", m).eval()
        _perturb_zero_weights(munet)
        out = munet(z, torch.tensor([10]), context=torch.full((1, 1, 10), 0.5))
        assert out.shape == z.shape
        if name == "tiny":  # the size vector conditions the output through cross-attention
            other = munet(z, torch.tensor([10]), context=torch.full((1, 1, 10), -1.0))
            assert (out - other).abs().mean() > 1e-5


def test_fused_vae_equals_monai_reference():
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    cfg = dataclasses.replace(preset("tiny").model.vae, num_splits=2)
    kw = dataclasses.asdict(cfg)
    kw.pop("scale_factor")
    kw["norm_float16"] = False
    torch.manual_seed(0)
    ref = AutoencoderKlMaisi(**kw).eval()
    ours = build_vae(cfg).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = ref.decode(ref.encode(x)[0])
        b = ours.decode(ours.encode(x)[0])
    assert (a - b).abs().max().item() <= 1e-5


def test_fused_control_embedding_equals_monai_reference():
    """The conditioning embedding with nn.SiLU and channels-last oneDNN convolutions computes MONAI's ControlNet:
    same state dict, outputs and parameter gradients within float rounding."""
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.networks.blocks.activation import Swish

    from maisi.conditioning import binarize_labels
    from maisi.networks.builders import ChannelsLastConv3d, build_controlnet

    cfg = preset("tiny").model.controlnet
    kw = dataclasses.asdict(cfg)
    kw["use_flash_attention"] = False
    torch.manual_seed(0)
    ref = ControlNetMaisi(**kw)
    ours = build_controlnet(cfg)
    assert set(ours.state_dict()) == set(ref.state_dict())
    with torch.no_grad():  # MONAI zero-inits the embedding's last convolution and the output blocks
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.load_state_dict(ref.state_dict())
    emb = ours.controlnet_cond_embedding
    assert sum(type(m) is ChannelsLastConv3d for m in emb.modules()) == 6  # conv_in, 4 blocks, conv_out
    assert not any(isinstance(m, Swish) for m in emb.modules())
    assert sum(type(m) is torch.nn.SiLU for m in emb.modules()) == 5

    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 8, 8, 8, generator=g)
    cond = binarize_labels(torch.randint(0, 133, (1, 1, 32, 32, 32), generator=g).float())
    kwargs = dict(timesteps=torch.tensor([10.0]), controlnet_cond=cond, class_labels=torch.tensor([1]))
    outs = []
    for net in (ref, ours):
        down, mid = net(x=x, **kwargs)
        (sum(d.square().mean() for d in down) + mid.square().mean()).backward()
        outs.append(
            ([d.detach() for d in down] + [mid.detach()], {k: p.grad for k, p in net.named_parameters()})
        )
    (a, ga), (b, gb) = outs
    assert max((u - v).abs().max().item() for u, v in zip(a, b)) <= 1e-5
    assert max(u.abs().max().item() for u in a) > 1e-2  # the embedding reaches the outputs
    for k in ga:
        torch.testing.assert_close(gb[k], ga[k], rtol=1e-4, atol=1e-6, msg=k)
    assert ga["controlnet_cond_embedding.conv_in.conv.weight"].abs().max() > 0


def test_fused_attention_equals_plain():
    torch.manual_seed(0)
    m = preset("tiny").model
    unet = build("unet", m).eval()
    x, t, kw = _unet_inputs(m)
    with torch.no_grad():
        fused = unet(x, t, **kw)
        plain = set_fused_attention(unet, False)(x, t, **kw)
    assert (fused - plain).abs().max().item() <= 1e-5


def test_unet_batch_equals_single():
    torch.manual_seed(0)
    m = preset("tiny").model
    unet = build("unet", m).eval()
    x, t, kw = _unet_inputs(m, batch=2)
    with torch.no_grad():
        both = unet(x, t, **kw)
        one = unet(x[:1], t[:1], **{k: v[:1] for k, v in kw.items()})
    assert (both[:1] - one).abs().max().item() <= 1e-5
