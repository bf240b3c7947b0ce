"""The sampler loop, denoiser composition (ControlNet, classifier-free guidance) and losses."""

from __future__ import annotations

import pytest
import torch
from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.schedulers.ddpm import DDPMScheduler
from monai.networks.schedulers.rectified_flow import RFlowScheduler

from maisi.diffusion import DDPM, RectifiedFlow, diffusion_loss, make_denoiser, randn, region_weight, sample

LATENT = (4, 8, 8, 8)
OFFICIAL_RFLOW = dict(
    num_train_timesteps=1000,
    use_discrete_timesteps=False,
    use_timestep_transform=True,
    sample_method="uniform",
    scale=1.4,
)
OFFICIAL_DDPM = dict(
    num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    # MONAI zero-initialises the UNet's output conv and the ControlNet's residual convs; random weights make the
    # composition tests able to fail
    g = _gen(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return module.eval()


_TINY = dict(
    spatial_dims=3,
    in_channels=4,
    num_channels=(8, 16),
    attention_levels=(False, False),
    num_res_blocks=1,
    norm_num_groups=8,
    num_head_channels=8,
)


@pytest.fixture(scope="module")
def rflow_nets():
    """Tiny rflow-ct-like pair: modality class embedding + spacing input."""
    unet = DiffusionModelUNetMaisi(out_channels=4, num_class_embeds=4, include_spacing_input=True, **_TINY)
    controlnet = ControlNetMaisi(
        num_class_embeds=4,
        conditioning_embedding_in_channels=8,
        conditioning_embedding_num_channels=(8, 16),
        use_checkpointing=False,
        **_TINY,
    )
    return _randomise(unet, 0), _randomise(controlnet, 1)


@pytest.fixture(scope="module")
def ddpm_unet():
    """Tiny ddpm-ct-like UNet: spacing + top/bottom body region, no class embedding."""
    unet = DiffusionModelUNetMaisi(
        out_channels=4,
        include_spacing_input=True,
        include_top_region_index_input=True,
        include_bottom_region_index_input=True,
        **_TINY,
    )
    return _randomise(unet, 2)


def _inputs(batch=2, seed=3):
    g = _gen(seed)
    x = torch.randn(batch, *LATENT, generator=g)
    control = (torch.rand(batch, 8, 16, 16, 16, generator=g) > 0.5).float()
    spacing = torch.tensor([[150.0, 150.0, 200.0]]).expand(batch, 3)
    t = torch.full((batch,), 640.0)
    return x, t, control, spacing


# -- the loop --------------------------------------------------------------------------------------------------


def test_rflow_full_loop_pinned_and_equal_to_monai_loop():
    x_T = randn((1, *LATENT), generator=_gen(0))
    out = sample(lambda x, t: 0.1 * x, RectifiedFlow(**OFFICIAL_RFLOW), x_T, num_steps=30, progress=False)
    assert out.sum().item() == pytest.approx(30.01120376586914, rel=1e-6)
    assert out.abs().sum().item() == pytest.approx(1823.942626953125, rel=1e-6)
    # the official loop: set_timesteps with the latent numel, next times padded with 0, step(out, t, x, t_next)
    monai_rf = RFlowScheduler(**OFFICIAL_RFLOW)
    monai_rf.set_timesteps(30, input_img_size_numel=torch.prod(torch.tensor(LATENT[1:])))
    nexts = torch.cat((monai_rf.timesteps[1:], torch.tensor([0], dtype=monai_rf.timesteps.dtype)))
    x = x_T
    for t, t_next in zip(monai_rf.timesteps, nexts):
        x, _ = monai_rf.step(0.1 * x, t, x, t_next)
    assert torch.equal(out, x)


def test_ddpm_full_loop_pinned_and_equal_to_monai_loop():
    x_T = randn((1, *LATENT), generator=_gen(0))
    out = sample(lambda x, t: 0.1 * x, DDPM(), x_T, num_steps=1000, generator=_gen(1), progress=False)
    assert out.sum().item() == pytest.approx(724.1123657226562, rel=1e-5)
    assert out.abs().sum().item() == pytest.approx(74371.84375, rel=1e-5)
    monai_ddpm = DDPMScheduler(**OFFICIAL_DDPM, clip_sample=False)
    monai_ddpm.set_timesteps(1000)
    g, x = _gen(1), x_T
    for t in monai_ddpm.timesteps:
        x, _ = monai_ddpm.step(0.1 * x, t, x, generator=g)
    assert torch.equal(out, x)


@pytest.mark.parametrize("scheduler", [RectifiedFlow(), DDPM()], ids=["rflow", "ddpm"])
def test_denoiser_receives_network_times(scheduler):
    seen = []

    def record(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    x_T = randn((3, *LATENT), generator=_gen(0))
    sample(record, scheduler, x_T, num_steps=4, generator=_gen(1), progress=False)
    expected = scheduler.timesteps(4, spatial_numel=8**3)[:-1].float()
    assert all(t.shape == (3,) and t.dtype == torch.float32 for t in seen)
    assert torch.equal(torch.stack([t[0] for t in seen]), expected)


@pytest.mark.parametrize("scheduler, steps", [(RectifiedFlow(), 3), (DDPM(), 3)], ids=["rflow", "ddpm"])
def test_batch_equals_samples_run_one_by_one(rflow_nets, scheduler, steps):
    unet, controlnet = rflow_nets
    seeds, modality = (10, 11), torch.tensor([1, 2])
    _, _, control, spacing = _inputs()

    def run(rows):
        gens = [_gen(seeds[i]) for i in rows]
        step_gens = [_gen(100 + seeds[i]) for i in rows]
        x_T = randn((len(rows), *LATENT), generator=gens)
        denoiser = make_denoiser(
            unet, controlnet=controlnet, control=control[rows], spacing=spacing[rows], modality=modality[rows]
        )
        return sample(denoiser, scheduler, x_T, num_steps=steps, generator=step_gens, progress=False)

    batch = run([0, 1])
    one_by_one = torch.cat([run([0]), run([1])])
    torch.testing.assert_close(batch, one_by_one, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)  # different seeds, different samples


# -- guidance and ControlNet composition -----------------------------------------------------------------------


def test_guidance_scale_zero_is_the_conditional_pass(rflow_nets):
    unet, _ = rflow_nets
    x, t, _, spacing = _inputs()
    with torch.no_grad():
        out = make_denoiser(unet, spacing=spacing, modality=1, guidance_scale=0.0)(x, t)
        expected = unet(x=x, timesteps=t, class_labels=torch.tensor([1, 1]), spacing_tensor=spacing)
    assert torch.equal(out, expected)


def test_guidance_mixes_conditional_and_unconditional_passes(rflow_nets):
    unet, _ = rflow_nets
    x, t, _, spacing = _inputs()
    with torch.no_grad():
        cond = unet(x=x, timesteps=t, class_labels=torch.tensor([1, 1]), spacing_tensor=spacing)
        uncond = unet(x=x, timesteps=t, class_labels=torch.tensor([0, 0]), spacing_tensor=spacing)
        guided = make_denoiser(unet, spacing=spacing, modality=1, guidance_scale=3.0)(x, t)
        unit = make_denoiser(unet, spacing=spacing, modality=1, guidance_scale=1.0)(x, t)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), rtol=0, atol=2e-5)
    torch.testing.assert_close(unit, cond, rtol=0, atol=2e-5)
    assert (guided - cond).abs().max() > 1e-3


def test_controlnet_composition_equals_calling_by_hand(rflow_nets):
    unet, controlnet = rflow_nets
    x, t, control, spacing = _inputs()
    labels = torch.tensor([1, 3])
    with torch.no_grad():
        down, mid = controlnet(
            x=x, timesteps=t, controlnet_cond=control, conditioning_scale=0.7, class_labels=labels
        )
        expected = unet(
            x=x,
            timesteps=t,
            class_labels=labels,
            spacing_tensor=spacing,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )
        without = unet(x=x, timesteps=t, class_labels=labels, spacing_tensor=spacing)
        denoiser = make_denoiser(
            unet,
            controlnet=controlnet,
            control=control,
            conditioning_scale=0.7,
            spacing=spacing[:1],
            modality=labels,
        )
        out = denoiser(x, t)
    assert torch.equal(out, expected)
    assert (out - without).abs().max() > 1e-2  # the residuals matter


def test_controlnet_guidance_with_unconditional_control(rflow_nets):
    unet, controlnet = rflow_nets
    x, t, control, spacing = _inputs()
    uncond_control = torch.zeros_like(control)

    def by_hand(ctrl, label):
        labels = torch.full((2,), label)
        down, mid = controlnet(
            x=x, timesteps=t, controlnet_cond=ctrl, conditioning_scale=1.0, class_labels=labels
        )
        return unet(
            x=x,
            timesteps=t,
            class_labels=labels,
            spacing_tensor=spacing,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
        )

    with torch.no_grad():
        cond, uncond = by_hand(control, 1), by_hand(uncond_control, 0)
        denoiser = make_denoiser(
            unet,
            controlnet=controlnet,
            control=control,
            spacing=spacing,
            modality=1,
            guidance_scale=2.0,
            uncond_control=uncond_control,
        )
        out = denoiser(x, t)
    torch.testing.assert_close(out, uncond + 2.0 * (cond - uncond), rtol=0, atol=2e-5)
    assert (out - cond).abs().max() > 1e-2


def test_ddpm_ct_unet_gets_body_region_and_no_class_labels(ddpm_unet):
    x, t, _, spacing = _inputs()
    top, bottom = torch.tensor([[0.0, 100.0, 0.0, 0.0]]), torch.tensor([[0.0, 0.0, 100.0, 0.0]])
    with torch.no_grad():
        out = make_denoiser(ddpm_unet, spacing=spacing, top_region=top, bottom_region=bottom)(x, t)
        expected = ddpm_unet(
            x=x,
            timesteps=t,
            spacing_tensor=spacing,
            top_region_index_tensor=top.expand(2, 4),
            bottom_region_index_tensor=bottom.expand(2, 4),
        )
    assert torch.equal(out, expected)


def test_denoiser_passes_only_the_given_conditioning():
    calls = []

    def unet(**kwargs):
        calls.append(sorted(kwargs))
        return torch.zeros_like(kwargs["x"])

    def controlnet(**kwargs):
        calls.append(sorted(kwargs))
        return [torch.zeros(1)], torch.zeros(1)

    x, t, control, spacing = _inputs()
    make_denoiser(unet, spacing=spacing, top_region=torch.zeros(1, 4), bottom_region=torch.zeros(1, 4))(x, t)
    assert calls.pop() == [
        "bottom_region_index_tensor",
        "spacing_tensor",
        "timesteps",
        "top_region_index_tensor",
        "x",
    ]
    make_denoiser(unet, controlnet=controlnet, control=control, modality=1)(x, t)
    assert calls.pop() == [
        "class_labels",
        "down_block_additional_residuals",
        "mid_block_additional_residual",
        "timesteps",
        "x",
    ]
    assert calls.pop() == ["class_labels", "conditioning_scale", "controlnet_cond", "timesteps", "x"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(control=torch.zeros(1)), "controlnet and control must be given together"),
        (dict(guidance_scale=2.0), "the unconditional pass would equal the conditional one"),
        (dict(modality=1, uncond_modality=None, guidance_scale=2.0), "would equal the conditional one"),
        (dict(modality=1, guidance_scale=-1.0), "guidance_scale must be >= 0"),
    ],
)
def test_make_denoiser_rejects_inconsistent_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_denoiser(torch.nn.Identity(), **kwargs)


def test_conditioning_with_wrong_batch_size_is_named():
    x, t, _, _ = _inputs()
    denoiser = make_denoiser(lambda **kw: kw["x"], spacing=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="spacing_tensor has batch size 3, expected 2 or 1"):
        denoiser(x, t)


# -- losses ----------------------------------------------------------------------------------------------------


def test_diffusion_loss_values():
    pred = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).reshape(1, 1, 2, 2)
    target = torch.zeros_like(pred)
    assert diffusion_loss(pred, target).item() == pytest.approx(11 / 4)
    assert diffusion_loss(pred, target, kind="mse").item() == pytest.approx(39 / 4)
    weight = torch.tensor([[1.0, 1.0], [1.0, 100.0]]).reshape(1, 1, 2, 2)
    assert diffusion_loss(pred, target, weight=weight).item() == pytest.approx((1 + 2 + 3 + 500) / 4)
    with pytest.raises(ValueError, match="kind must be one of"):
        diffusion_loss(pred, target, kind="huber")


def test_region_weight_marks_label_ids_at_latent_size():
    labels = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    labels[..., :4, :4, :4] = 23  # a "tumour" block in one octant
    labels[..., 4:, 4:, 4:] = 5
    weight = region_weight(labels, ids=[23], factor=100.0, size=(4, 4, 4))
    assert weight.shape == (1, 1, 4, 4, 4)
    assert weight.sum().item() == 56 + 8 * 100.0
    pred, target = torch.ones(1, 4, 4, 4, 4), torch.zeros(1, 4, 4, 4, 4)
    assert diffusion_loss(pred, target, weight=weight).item() == pytest.approx((56 + 800) / 64)
