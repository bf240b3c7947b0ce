"""The network inputs maisi derives from a label map equal the official ones: ControlNet bit planes, spacing x 100,
ddpm-ct body-region one-hots, the tumour-free unconditional mask of guidance, and the scheduler loop itself.

Each official rule is re-stated in :mod:`reference_pipeline` and compared with maisi's on small label maps; the
loops run the full official chains on a cheap stand-in network, and the hand-written reference loop is checked
against MONAI's own ``DiffusionInferer``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from maisi import conditioning


def test_control_bits_equal_official_for_every_id():
    ids = torch.arange(256).reshape(1, 1, 4, 8, 8)
    ours = conditioning.binarize_labels(ids)
    theirs = ref.binarize_labels(ids)
    assert ours.shape == theirs.shape == (1, 8, 4, 8, 8)
    assert torch.equal(ours, theirs)
    # each id is recovered from its planes: the encoding is the id's binary expansion
    weights = (2 ** torch.arange(8)).reshape(1, 8, 1, 1, 1).float()
    assert torch.equal((ours * weights).sum(1, keepdim=True).long(), ids)


def test_spacing_input_is_spacing_times_100():
    got = conditioning.spacing_input((1.5, 0.75, 2.5), batch=2)
    assert got.dtype == torch.float32
    assert torch.equal(got, torch.tensor([[150.0, 75.0, 250.0]] * 2))


def _label(*ids: int) -> np.ndarray:
    label = np.full((8, 8, 8), 200, np.uint8)
    for k, i in enumerate(ids):
        label[k, :, :] = i
    return label


def _maisi_one_hots(label: np.ndarray) -> tuple[list[int], list[int]]:
    top, bottom = conditioning.regions_for(label, requested=[1])
    t = conditioning.region_input(top)[0] / conditioning.INPUT_SCALE
    b = conditioning.region_input(bottom)[0] / conditioning.INPUT_SCALE
    return t.long().tolist(), b.long().tolist()


@pytest.mark.parametrize(
    "ids",
    [
        (28, 1),  # lungs + liver: thorax -> abdomen
        (22, 29, 5, 93),  # brain, lung, kidney, femur: head -> lower body
        (120,),  # skull only
        (31, 32),  # lungs only
        (4, 14),  # pancreas + left kidney
        (94, 1),  # femur + liver
        (28, 36),  # lung + lumbar vertebra: vertebrae are no markers, bottom = thorax
        (50, 28),  # cervical vertebra + lung: top = thorax
        (2, 28),  # id 2 is an abdomen marker of the official rule
    ],
)
def test_body_regions_equal_official_rule(ids):
    assert _maisi_one_hots(_label(*ids)) == ref.official_body_regions(_label(*ids))


def _tumor_map(tumor: int, host: int) -> np.ndarray:
    label = np.full((12, 12, 12), 200, np.uint8)
    label[2:10, 2:10, 2:10] = host
    label[5:7, 5:7, 5:7] = tumor
    return label


@pytest.mark.parametrize("tumor, host", [(26, 1), (24, 4), (27, 62), (23, 28), (23, 31)])
def test_unconditional_mask_equals_official_remove_tumors(tumor, host):
    label = _tumor_map(tumor, host)
    ours = conditioning.without_tumors(label)
    theirs = ref.official_remove_tumors(torch.from_numpy(label).long()).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert not np.any(ours == tumor)


@pytest.mark.parametrize("tumor, host", [(128, 33), (116, 14), (117, 5)])
def test_unconditional_mask_official_rule_for_lesions_and_cysts(tumor, host):
    label = _tumor_map(tumor, host)
    ours = conditioning.without_tumors(label)
    theirs = ref.official_remove_tumors(torch.from_numpy(label).long()).numpy()
    np.testing.assert_array_equal(ours, theirs)


# ----------------------------------------------------------------------------------------------------------------
# the scheduler loops on a cheap stand-in network: the full official chains (1000 DDPM steps, 30 rflow steps)


def _toy_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A fixed non-linear function of (x, t), standing in for UNet + ControlNet."""
    return torch.tanh(0.7 * x + torch.sin(t.reshape(-1, 1, 1, 1, 1) / 97.0)) - 0.1 * x


def _official_loop(scheduler, noise: torch.Tensor, steps: int, generator=None) -> torch.Tensor:
    ref._set_timesteps(scheduler, steps, noise)
    x = noise.clone()
    ts = scheduler.timesteps
    for t, next_t in zip(ts, torch.cat((ts[1:], torch.tensor([0], dtype=ts.dtype)))):
        out = _toy_denoiser(x, torch.Tensor((t,)))
        x = ref._scheduler_step(scheduler, out, t, next_t, x, generator)
    return x


@pytest.mark.parametrize(
    "network_json, steps, spatial",
    [
        ("config_network_rflow.json", 30, (64, 64, 32)),  # official default 30 steps, shifted for 256x256x128
        ("config_network_rflow.json", 7, (5, 6, 7)),  # latent smaller than the base size: shift < 1
        ("config_network_ddpm.json", 1000, (3, 4, 5)),  # the official ddpm chain: every training step
    ],
)
def test_full_sampling_chain_equals_official(network_json, steps, spatial):
    from maisi.config import preset
    from maisi.diffusion import sample, scheduler_from_config

    kind = "rflow" if "rflow" in network_json else "ddpm"
    cfg = preset(f"{kind}-ct").model.scheduler
    noise = torch.randn((1, 4, *spatial), generator=torch.Generator().manual_seed(3))
    ours = sample(
        _toy_denoiser,
        scheduler_from_config(cfg),
        noise,
        num_steps=steps,
        progress=False,
        generator=[torch.Generator().manual_seed(5)],
    )
    theirs = _official_loop(
        ref.official_scheduler(network_json), noise, steps, generator=torch.Generator().manual_seed(5)
    )
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize(
    "network_json, steps", [("config_network_rflow.json", 30), ("config_network_ddpm.json", 1000)]
)
def test_reference_loop_equals_monai_diffusion_inferer(network_json, steps):
    """Self-test of the oracle: the hand-written official loop of :mod:`reference_pipeline` equals MONAI's own
    ``DiffusionInferer.sample`` (``t, next_t`` pairing, network time, scheduler calls, DDPM noise draws)."""
    from monai.inferers import DiffusionInferer

    noise = torch.randn((1, 4, 4, 4, 4), generator=torch.Generator().manual_seed(8))
    ours = _official_loop(
        ref.official_scheduler(network_json), noise, steps, generator=torch.Generator().manual_seed(9)
    )
    scheduler = ref.official_scheduler(network_json)
    ref._set_timesteps(scheduler, steps, noise)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        theirs = DiffusionInferer(scheduler).sample(
            input_noise=noise,
            diffusion_model=lambda x, timesteps, context: _toy_denoiser(x, timesteps),
            scheduler=scheduler,
            verbose=False,
        )
    assert torch.equal(ours, theirs)
