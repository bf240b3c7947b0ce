"""``maisi.generation`` against the official MAISI inference loop written out by hand on MONAI's reference classes.

The oracle: MONAI's ``AutoencoderKlMaisi`` / ``DiffusionModelUNetMaisi`` / ``ControlNetMaisi`` holding the same
random weights (built here directly, not through maisi's builders), MONAI's ``RFlowScheduler`` /
``DDPMScheduler``, the official conditioning (8 bit planes, spacing x 100, modality class or body region x 100),
``SlidingWindowInferer`` decoding of ``z / scale_factor`` and the official post-processing. Same weights, same mask,
same initial noise (and, for DDPM, the same generator for the step noise): the images must agree to 1e-4 in [0, 1]
units (fp32, CPU; ``norm_float16`` is off because fp16 group norm does not run on CPU).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from maisi.config import SchedulerConfig
from maisi.generation import generate
from maisi.generation.seeds import derive_seed, torch_generator
from test_generation_common import build_model_set, micro_config, one_thread, request  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
WINDOW, OVERLAP = (12, 12, 8), 0.6666  # latent windows smaller than the latent: a 64 x 64 decode is tiled


def _ddpm_config():
    cfg = micro_config()
    m = cfg.model
    unet = dataclasses.replace(
        m.unet,
        include_top_region_index_input=True,
        include_bottom_region_index_input=True,
        num_class_embeds=None,
        resblock_updown=False,
        include_fc=False,
    )
    controlnet = dataclasses.replace(
        m.controlnet, num_class_embeds=None, resblock_updown=False, include_fc=False
    )
    # 10 training steps so that sampling walks every step, as the official DDPM pipeline does with 1000
    scheduler = SchedulerConfig(kind="ddpm", num_train_timesteps=10)
    cfg.model = dataclasses.replace(
        m, unet=unet, controlnet=controlnet, scheduler=scheduler, include_body_region=True
    )
    return cfg


@pytest.fixture(scope="module")
def weight_sets(tmp_path_factory):
    rflow = build_model_set(tmp_path_factory.mktemp("rflow"), micro_config(), seed=1, mask=False)
    ddpm = build_model_set(tmp_path_factory.mktemp("ddpm"), _ddpm_config(), seed=2, mask=False)
    return {"rflow": rflow, "ddpm": ddpm}


def _monai_networks(directory):
    """The official classes with the weights of a maisi model set."""
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    from maisi.networks.model_set import load_model_set

    ms = load_model_set(directory, components=["vae", "unet", "controlnet"])
    vae_kw = dataclasses.asdict(ms.config.vae)
    scale = vae_kw.pop("scale_factor")
    vae = AutoencoderKlMaisi(**{**vae_kw, "norm_float16": False, "use_flash_attention": False})
    unet_kw = dataclasses.asdict(ms.config.unet)
    unet_kw.pop("variant"), unet_kw.pop("adagn_condition_dim"), unet_kw.pop("adagn_context_embed_dim")
    unet = DiffusionModelUNetMaisi(
        **{**unet_kw, "num_head_channels": list(unet_kw["num_head_channels"]), "use_flash_attention": False}
    )
    cn_kw = dataclasses.asdict(ms.config.controlnet)
    controlnet = ControlNetMaisi(
        **{**cn_kw, "num_head_channels": list(cn_kw["num_head_channels"]), "use_flash_attention": False}
    )
    for net, name in ((vae, "vae"), (unet, "unet"), (controlnet, "controlnet")):
        net.load_state_dict(ms[name].state_dict())
        net.eval()
    return vae, unet, controlnet, scale, ms.config


def _official_regions(label: np.ndarray) -> tuple[list[float], list[float]]:
    markers = [[22, 120], [28, 29, 30, 31, 32], [1, 2, 3, 4, 5, 14], [93, 94]]
    present = set(np.unique(label).tolist())
    found = [i for i, m in enumerate(markers) if present.intersection(m)]
    eye = np.eye(4)
    return eye[min(found)].tolist(), eye[max(found)].tolist()


@torch.inference_mode()
def _official_image(directory, label: np.ndarray, noise: torch.Tensor, *, spacing, steps, seed=0):
    """The official ``ldm_conditional_sample_one_image`` loop, step by step, in fp32 on the CPU."""
    from monai.inferers import SlidingWindowInferer
    from monai.networks.schedulers import DDPMScheduler, RFlowScheduler

    vae, unet, controlnet, scale, mcfg = _monai_networks(directory)
    combine_label = torch.from_numpy(label.astype(np.int64))[None, None]
    bits = 2 ** torch.arange(8)
    cond = (
        combine_label.unsqueeze(-1).bitwise_and(bits).ne(0).byte().squeeze(1).permute(0, 4, 1, 2, 3).float()
    )
    spacing_tensor = torch.FloatTensor(spacing)[None] * 1e2
    modality = torch.ones((1,), dtype=torch.long)
    include_body_region = unet.include_top_region_index_input
    include_modality = unet.num_class_embeds is not None
    s = mcfg.scheduler
    if s.kind == "rflow":
        scheduler = RFlowScheduler(
            num_train_timesteps=s.num_train_timesteps,
            use_discrete_timesteps=s.use_discrete_timesteps,
            sample_method=s.sample_method,
            scale=s.scale,
            use_timestep_transform=s.use_timestep_transform,
            base_img_size_numel=s.base_img_size_numel,
        )
        scheduler.set_timesteps(
            num_inference_steps=steps, input_img_size_numel=torch.prod(torch.tensor(noise.shape[2:]))
        )
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=s.num_train_timesteps,
            schedule=s.schedule,
            beta_start=s.beta_start,
            beta_end=s.beta_end,
            clip_sample=s.clip_sample,
        )
        scheduler.set_timesteps(num_inference_steps=steps)
    top, bottom = _official_regions(label)
    top_t, bottom_t = torch.FloatTensor(top)[None] * 1e2, torch.FloatTensor(bottom)[None] * 1e2
    generator = torch_generator(derive_seed(seed, 0, 0, stream="sampler"))
    latents = noise.clone()
    all_t = scheduler.timesteps
    next_t = torch.cat((all_t[1:], torch.tensor([0], dtype=all_t.dtype)))
    for t, nt in zip(all_t, next_t):
        cn_in = {"x": latents, "timesteps": torch.Tensor((t,)), "controlnet_cond": cond}
        un_in = {"x": latents, "timesteps": torch.Tensor((t,)), "spacing_tensor": spacing_tensor}
        if include_modality:
            cn_in["class_labels"] = modality
            un_in["class_labels"] = modality
        if include_body_region:
            un_in.update(top_region_index_tensor=top_t, bottom_region_index_tensor=bottom_t)
        down, mid = controlnet(**cn_in)
        out = unet(**un_in, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if isinstance(scheduler, RFlowScheduler):
            latents, _ = scheduler.step(out, t, latents, nt)
        else:
            latents, _ = scheduler.step(out, t, latents, generator=generator)

    def recon(z):
        return vae.decode_stage_2_outputs(z / scale)

    if math.prod(latents.shape[2:]) <= math.prod(WINDOW):
        image = recon(latents)
    else:
        roi = [min(w, n) for w, n in zip(WINDOW, latents.shape[2:])]
        inferer = SlidingWindowInferer(
            roi_size=roi, sw_batch_size=1, mode="gaussian", overlap=OVERLAP, sw_device="cpu", device="cpu"
        )
        image = inferer(latents, recon)
    image = torch.clip(image, 0.0, 1.0) * 2000 - 1000
    image[combine_label == 0] = -1000
    return image[0, 0].numpy()


@pytest.mark.parametrize(
    "kind, size, steps",
    [("rflow", (64, 64, 32), 3), ("rflow", (32, 32, 32), 2), ("ddpm", (64, 32, 32), 10)],
    ids=["rflow-64x64x32", "rflow-32^3", "ddpm-64x32x32"],
)
def test_matches_the_official_loop(weight_sets, tmp_path, kind, size, steps):
    latent = (4, *(s // 4 for s in size))
    noise = torch.randn((1, *latent), generator=torch.Generator().manual_seed(11))
    cfg = request(
        weight_sets[kind],
        tmp_path,
        output_size=size,
        spacing=(3.0, 3.0, 3.0),
        mask_source="phantom",
        body_region=("abdomen",),
        steps=steps,
        decode_window=WINDOW,
        decode_overlap=OVERLAP,
    )
    sample = generate(cfg, initial_noise=noise, write=False, return_unit=True)[0]
    reference = _official_image(
        weight_sets[kind], sample.condition, noise, spacing=(3.0, 3.0, 3.0), steps=steps
    )
    diff = np.abs(sample.unit - (reference + 1000) / 2000).max()
    assert diff <= 1e-4, diff
    assert np.abs(sample.image.astype(np.float64) - reference).max() <= 0.5 + 0.2  # rounding to whole HU
    assert np.array_equal(sample.label, sample.condition)  # the label written is the conditioning mask
    assert (reference > -1000).mean() > 0.05  # the comparison is not between two blank images
