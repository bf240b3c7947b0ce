"""The v2 mask path (AdaGN UNet, rectified flow with classifier-free guidance, mask-VAE decode, argmax, channel ->
MAISI id) equals the official loop re-stated on MONAI's classes (:mod:`reference_adagn`).

Random weights, fp32 on the CPU, three steps, two latent shapes. Both sides get the same weights (the reference's
state dict, loaded strictly by maisi), condition, spacing and initial noise (rounded to fp16 as the official
``initialize_noise_latents`` makes it). Bound of the issue: max |Δ| <= 1e-4 on the decoded probabilities,
identical label maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

import reference_adagn as refv2
import reference_pipeline as ref
from maisi.config import preset
from maisi.generation.masks.conditions_v2 import build_condition_v2
from test_adagn import TINY, maisi_unet, reference_unet

TOL = 1e-4
STEPS = 3
GUIDANCE = 2.0
#: official decode settings (``config_infer.json``): windows of 48^3 latent voxels, overlap 0.6666
WINDOW, OVERLAP = (48, 48, 48), 0.6666
#: the mask VAE's latent scale factor of the 2026 network file
MASK_SCALE_FACTOR = 1.0055984258651733
#: (latent shape, anatomy, demographics, spacing): two shapes, an organ and a tumour target
#: the smallest latent the tiny UNet takes (two downsamplings), for the cheap checks
SMALL = (4, 4, 4, 4)
CASES = {
    "flat": ((4, 8, 8, 4), {"liver": 0.7}, {"age": 63, "sex": "F", "weight": 70}, (1.5, 1.5, 1.5)),
    "tall": ((4, 4, 8, 12), {"bone lesion": 0.4}, {"sex": "M", "bmi": 27.5}, (1.2, 1.2, 2.0)),
}


@dataclass
class Nets:
    reference_unet: torch.nn.Module
    reference_vae: torch.nn.Module
    unet: torch.nn.Module
    codec: object
    lut: np.ndarray


@pytest.fixture(scope="module")
def nets() -> Nets:
    from maisi import labels
    from maisi.latents import LatentCodec
    from maisi.networks.builders import build_vae
    from maisi.networks.checkpoint import load_state_strict

    vae_cfg = preset("tiny").model.mask_vae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        reference_vae = ref._monai_class("mask_vae")(**ref.monai_kwargs("mask_vae", vae_cfg))
    ref.randomize_(reference_vae, generator=torch.Generator().manual_seed(4)).eval()
    vae = build_vae(vae_cfg)
    load_state_strict(vae, reference_vae.state_dict(), source="reference mask VAE")
    r_unet = reference_unet(TINY)
    codec = LatentCodec(
        vae=vae, scale_factor=MASK_SCALE_FACTOR, decode_window=WINDOW, decode_overlap=OVERLAP, downsample=4
    )
    lut = np.zeros(max(labels.MASK_CHANNEL_TO_ID) + 1, dtype=np.int64)
    for ch, i in labels.MASK_CHANNEL_TO_ID.items():
        lut[ch] = i
    return Nets(r_unet, reference_vae, maisi_unet(TINY, r_unet.state_dict()), codec, lut)


def _noise(shape, seed: int = 9) -> torch.Tensor:
    from maisi.diffusion import randn

    return randn((1, *shape), generator=torch.Generator().manual_seed(seed)).half().float()


def _mask_scheduler():
    from maisi.config.loading import load_config
    from test_adagn import RESOURCES

    return load_config(files=[RESOURCES / "config_network_rflow.json"]).model.mask_scheduler_v2


def _maisi_latent(nets: Nets, condition, noise, *, guidance=GUIDANCE, spacing=(1.5, 1.5, 1.5), steps=STEPS):
    from maisi.generation.masks.sample_v2 import sample_mask_latent_v2

    return sample_mask_latent_v2(
        nets.unet, _mask_scheduler(), condition, noise, steps=steps, guidance=guidance, spacing=spacing
    )


@dataclass
class Run:
    latent: torch.Tensor
    reference_latent: torch.Tensor
    probabilities: torch.Tensor
    reference_probabilities: torch.Tensor
    label: np.ndarray
    reference_label: np.ndarray


@pytest.fixture(scope="module", params=sorted(CASES))
def run(request, nets) -> Run:
    shape, anatomy, demographics, spacing = CASES[request.param]
    condition = build_condition_v2(anatomy, demographics)
    noise = _noise(shape)
    latent = _maisi_latent(nets, condition, noise, spacing=spacing)
    reference_latent = refv2.reference_mask_latent_v2(
        nets.reference_unet,
        refv2.official_condition(list(anatomy.items()), list(demographics.items())),
        noise,
        num_inference_steps=STEPS,
        guidance=GUIDANCE,
        spacing=spacing,
    )
    with torch.no_grad():
        logits = nets.codec.decode(latent)
    probabilities, reference_label = refv2.reference_mask_decode_v2(
        nets.reference_vae, reference_latent, MASK_SCALE_FACTOR, window=WINDOW, overlap=OVERLAP
    )
    return Run(
        latent=latent,
        reference_latent=reference_latent,
        probabilities=torch.softmax(logits, dim=1),
        reference_probabilities=probabilities,
        label=nets.lut[logits[0].argmax(dim=0).numpy()],
        reference_label=reference_label,
    )


def test_v2_mask_latent_matches_the_reference_loop(run):
    assert run.latent.shape == run.reference_latent.shape
    assert (run.latent - run.reference_latent).abs().max() <= TOL


def test_v2_mask_probabilities_match_the_reference_loop(run):
    assert run.probabilities.shape == run.reference_probabilities.shape
    assert run.probabilities.shape[1] == 125
    assert (run.probabilities - run.reference_probabilities).abs().max() <= TOL


def test_v2_mask_label_map_equals_the_reference_loop(run):
    from maisi import labels

    assert run.label.shape == run.reference_label.shape
    assert np.array_equal(run.label, run.reference_label)
    ids = set(np.unique(run.label).tolist())
    assert len(ids) > 5 and ids <= set(labels.VALID_IDS) | {0}  # a non-trivial map in MAISI ids


def test_condition_and_guidance_reach_the_latent(nets):
    """Negative controls, far above the bound: another condition, or no guidance, gives another latent; guidance 0
    equals the reference's single conditional pass."""
    noise = _noise(SMALL)
    base = build_condition_v2({"liver": 0.7}, {"age": 63})
    latent = _maisi_latent(nets, base, noise, steps=2)
    other = _maisi_latent(nets, build_condition_v2({"liver": 0.2}, {"age": 63}), noise, steps=2)
    unguided = _maisi_latent(nets, base, noise, guidance=0.0, steps=2)
    assert (other - latent).abs().max() > 100 * TOL
    assert (unguided - latent).abs().max() > 100 * TOL
    reference = refv2.reference_mask_latent_v2(
        nets.reference_unet, list(base.vector), noise, num_inference_steps=2, guidance=0.0, spacing=(1.5,) * 3
    )
    assert (unguided - reference).abs().max() <= TOL


def test_a_batch_equals_its_samples_one_by_one(nets):
    conditions = [build_condition_v2({"spleen": 0.3}), build_condition_v2(None, {"sex": "M"})]
    noises = [_noise(SMALL, seed=1), _noise(SMALL, seed=2)]
    batch = _maisi_latent(nets, torch.tensor([c.vector for c in conditions]), torch.cat(noises), steps=2)
    for i, (c, n) in enumerate(zip(conditions, noises)):
        assert (batch[i : i + 1] - _maisi_latent(nets, c, n, steps=2)).abs().max() <= 1e-5


def test_last_step_is_monai_s_step_without_a_next_time():
    """The official loop's last ``RFlowScheduler.step`` has no next time and advances by ``1 / steps``; the others
    go to the next time. A constant model output of 1 makes each step's size visible."""
    from maisi.diffusion import scheduler_from_config
    from maisi.generation.masks.sample_v2 import OfficialLastStep

    steps, numel = 5, 64**3
    ours = OfficialLastStep(scheduler_from_config(_mask_scheduler()), steps)
    monai = refv2.official_mask_scheduler()
    monai.set_timesteps(num_inference_steps=steps, input_img_size_numel=numel)
    times = ours.timesteps(steps, spatial_numel=numel)
    x, y = torch.zeros(1), torch.zeros(1)
    for i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        x = ours.step(torch.ones(1), t, t_next, x)
        next_t = monai.timesteps[i + 1] if i + 1 < steps else None
        y = monai.step(torch.ones(1), monai.timesteps[i], y, next_timestep=next_t)[0]
        assert float(x) == pytest.approx(float(y), abs=1e-6)
    assert float(times[-2]) > 1000 / steps  # the shifted last time: the last step leaves noise behind
    # MONAI truncates each next time to an integer: up to (steps - 1) / T more in all
    assert float(x) == pytest.approx(1 - (float(times[-2]) - 1000 / steps) / 1000, abs=(steps - 1) / 1000)
