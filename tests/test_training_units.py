"""Unit tests of the training building blocks: schedule, EMA, batch order, conditioning, checkpoints, slices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from maisi import labels as L
from maisi.conditioning import (
    SIZE_REFERENCE_ML,
    ids_to_mask_channels,
    mask_channels_to_ids,
    size_vector_from_label,
    tumor_mask,
)
from maisi.errors import CheckpointError
from maisi.io import read_torch_file
from maisi.training import checkpointing as ck
from maisi.training.datasets import BatchPlan, Case, rank_slots, sample_generator, split_cases
from maisi.training.ema import EMA
from maisi.training.logging import orthogonal_slices
from maisi.training.optim import enable_grad_checkpointing, lr_factor, set_grad_checkpointing
from maisi.training.tasks.base import estimate_scale_factor, kl_divergence, random_patch
from maisi.training.tasks.mask_diffusion import center_fit
from maisi.training.tasks.mask_vae import segmentation_loss


@pytest.mark.parametrize(
    ("step", "schedule", "expected"),
    [
        (0, "cosine", 0.25),  # warm-up: (step + 1) / warmup
        (3, "cosine", 1.0),
        (4, "cosine", 1.0),  # decay starts at the end of warm-up
        (9, "cosine", 0.5),  # half-way through the decay
        (14, "cosine", 0.0),
        (9, "linear", 0.5),
        (9, "constant", 1.0),
        (99, "linear", 0.0),  # past the end: clamped
    ],
)
def test_lr_factor(step, schedule, expected):
    assert lr_factor(step, warmup=4, total=14, schedule=schedule) == pytest.approx(expected, abs=1e-12)


def test_ema_follows_weights_with_warmup():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay min(0.9, 1/10) = 0.1
    assert float(ema.model.weight[0, 0]) == pytest.approx(0.9)
    ema.update(model)  # decay min(0.9, 2/11)
    assert float(ema.model.weight[0, 0]) == pytest.approx(1 - 0.1 * 2 / 11)
    state = ema.state_dict()
    other = EMA(nn.Linear(2, 1, bias=False), decay=0.9)
    other.load_state_dict(state)
    assert other.updates == 2 and torch.equal(other.model.weight, ema.model.weight)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_batch_plan_is_seeded_bucketed_and_padded():
    keys = [(8, 8, 8)] * 5 + [(8, 8, 12)] * 2
    plan = BatchPlan(keys, global_batch=2, seed=3)
    assert plan.per_epoch == 3 + 1
    for n in range(3 * plan.per_epoch):
        batch = plan.batch(n)
        assert len(batch) == 2 and len({keys[i] for i in batch}) == 1  # one shape per batch
    epoch0 = [i for n in range(plan.per_epoch) for i in plan.batch(n)]
    assert set(epoch0) == set(range(7))  # every case once per epoch (the short bucket padded by cycling)
    again = BatchPlan(keys, global_batch=2, seed=3)
    assert [again.batch(n) for n in range(8)] == [plan.batch(n) for n in range(8)]
    other = BatchPlan(keys, global_batch=2, seed=4)
    assert [other.batch(n) for n in range(8)] != [plan.batch(n) for n in range(8)]


def test_rank_slots_partition_the_global_batch():
    slots = [list(rank_slots(6, r, 3)) for r in range(3)]
    assert slots == [[0, 1], [2, 3], [4, 5]]


def test_sample_generators_are_distinct_and_reproducible():
    a = torch.rand(3, generator=sample_generator(0, 0, 5, 1))
    assert torch.equal(a, torch.rand(3, generator=sample_generator(0, 0, 5, 1)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(0, 0, 5, 2)))
    assert not torch.equal(a, torch.rand(3, generator=sample_generator(0, 1, 5, 1)))


def test_split_cases_by_fold_or_tail():
    cases = [Case(name=f"c{i}", fold=i % 3) for i in range(6)]
    train, val = split_cases(cases)
    assert [c.name for c in val] == ["c0", "c3"] and len(train) == 4
    same_fold = [Case(name=f"c{i}", fold=0) for i in range(6)]
    train, val = split_cases(same_fold)
    assert [c.name for c in val] == ["c5"] and [c.name for c in train] == ["c0", "c1", "c2", "c3", "c4"]


def test_random_patch_pads_and_crops():
    vol = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    g = torch.Generator().manual_seed(0)
    p = random_patch(vol, (3, 8, 6), g)
    assert p.shape == (1, 3, 8, 6)
    assert torch.all(p[:, :, 5:] == 0)  # padded beyond the volume's Y size
    x0 = int(p[0, 0, 0, 0]) // 30
    assert torch.equal(p[:, :, :5], vol[:, x0 : x0 + 3])


def test_kl_divergence_is_zero_for_the_prior():
    mu, sigma = torch.zeros(2, 4, 3, 3, 3), torch.ones(2, 4, 3, 3, 3)
    assert float(kl_divergence(mu, sigma)) == pytest.approx(0.0, abs=1e-7)
    # one channel-voxel with mu = 1: KL = 0.5
    mu[:, 0, 0, 0, 0] = 1.0
    assert float(kl_divergence(mu, sigma)) == pytest.approx(0.5)


def test_scale_factor_pools_many_latents():
    g = torch.Generator().manual_seed(0)
    posteriors = [
        (torch.randn(4, 6, 6, 6, generator=g) * 2.0, torch.full((4, 6, 6, 6), -30.0)) for _ in range(20)
    ]
    sf = estimate_scale_factor(posteriors, generator=torch.Generator().manual_seed(1))
    assert sf == pytest.approx(0.5, rel=0.03)


def test_binary_label_encoding_is_lsb_first_and_loses_no_id():
    """The ControlNet's 8 bit planes (one function, :func:`maisi.conditioning.binarize_labels`, for training and
    generation): bit k of the id in channel k, and every id 0..255 recovered from its planes."""
    from maisi.conditioning import binarize_labels

    label = torch.tensor([0, 1, 200, 23]).reshape(1, 1, 1, 1, 4)  # (B, 1, X, Y, Z)
    bits = binarize_labels(label)
    assert bits.shape == (1, 8, 1, 1, 4)
    assert bits[0, :, 0, 0, 2].tolist() == [0, 0, 0, 1, 0, 0, 1, 1]  # 200 = 0b11001000, LSB first
    assert bits[0, :, 0, 0, 3].tolist() == [1, 1, 1, 0, 1, 0, 0, 0]  # 23 = 0b00010111
    every = torch.arange(256).reshape(1, 1, 256, 1, 1)
    planes = binarize_labels(every)
    weights = (2 ** torch.arange(8)).reshape(1, 8, 1, 1, 1).float()
    assert torch.equal((planes * weights).sum(1).long(), every[:, 0])  # no two ids share their planes


def test_size_vector_from_label():
    spacing = (2.0, 2.0, 2.5)  # 10 mm^3 = 0.01 mL per voxel
    label = np.zeros((20, 20, 20), dtype=np.uint8)
    label[:10, :10, :10] = L.id_of("liver")  # 1000 voxels = 10 mL
    label[0, 0, :3] = L.id_of("hepatic tumor")  # 3 voxels
    v = size_vector_from_label(label, spacing)
    assert len(v) == len(L.SIZE_SLOTS) == 10
    assert v[L.SIZE_SLOTS.index("liver")] == pytest.approx((1000 - 3) * 0.01 / SIZE_REFERENCE_ML["liver"])
    assert v[L.SIZE_SLOTS.index("hepatic tumor")] == pytest.approx(
        3 * 0.01 / SIZE_REFERENCE_ML["hepatic tumor"]
    )
    assert v[L.SIZE_SLOTS.index("stomach")] == L.ABSENT_SIZE == -1.0


def test_mask_channel_maps_round_trip():
    ids = torch.tensor(sorted(L.MASK_CHANNEL_TO_ID.values()))
    assert torch.equal(mask_channels_to_ids(ids_to_mask_channels(ids)), ids)
    cyst = torch.tensor([L.id_of("left kidney cyst"), 2])  # cyst -> its kidney, unused id -> background
    assert mask_channels_to_ids(ids_to_mask_channels(cyst)).tolist() == [L.id_of("left kidney"), 0]
    assert tumor_mask(torch.tensor([23, 1, 128, 0])).tolist() == [1.0, 0.0, 1.0, 0.0]


def test_segmentation_loss_is_low_for_confident_correct_logits():
    target = torch.randint(0, 5, (2, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    good = torch.nn.functional.one_hot(target, 5).permute(0, 4, 1, 2, 3).float() * 20
    loss, parts = segmentation_loss(good, target)
    assert float(loss) < 1e-3
    bad, _ = segmentation_loss(torch.zeros_like(good), target)
    # uniform 1/5 over classes of ~equal frequency: CE = log 5, Dice = 2 * 0.2 n / (n + n) = 0.2
    assert float(bad) == pytest.approx(math.log(5) + 0.8, rel=0.02)


def test_center_fit_crops_and_pads():
    x = torch.arange(6 * 3 * 4).reshape(6, 3, 4)
    y = center_fit(x, (4, 5, 4))
    assert y.shape == (4, 5, 4)
    assert torch.equal(y[:, 1:4, :], x[1:5])
    assert torch.all(y[:, 0] == 0) and torch.all(y[:, 4] == 0)


def test_orthogonal_slices_orientation():
    vol = np.zeros((4, 6, 8), dtype=np.float32)
    vol[:, :, -1] = 1.0  # the most superior slice
    s = orthogonal_slices(vol)
    assert s["axial"].shape == (6, 4) and s["coronal"].shape == (8, 4) and s["sagittal"].shape == (8, 6)
    assert np.all(s["coronal"][0] == 1.0)  # superior at the top of the image


def test_grad_checkpointing_keeps_results(tiny_config):
    from maisi.networks import build

    torch.manual_seed(0)
    unet = build("unet", tiny_config.model)
    x = torch.randn(1, 4, 8, 8, 8)
    kwargs = dict(
        timesteps=torch.tensor([10.0]),
        class_labels=torch.tensor([1]),
        spacing_tensor=torch.tensor([[300.0] * 3]),
    )
    unet(x=x, **kwargs).square().mean().backward()
    ref = [p.grad.clone() for p in unet.parameters()]
    unet.zero_grad()
    names = set(unet.state_dict())
    enable_grad_checkpointing(unet)
    assert set(unet.state_dict()) == names
    unet(x=x, **kwargs).square().mean().backward()
    for a, p in zip(ref, unet.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)


def test_set_grad_checkpointing_switches_monai_flags(tiny_config):
    """train.grad_checkpointing: False turns the ControlNet's own embedding checkpointing off, True on; the tiny
    (and demo) presets train without it."""
    import dataclasses

    from maisi.networks import build

    cfg = dataclasses.replace(tiny_config.model.controlnet, use_checkpointing=True)
    net = build("controlnet", dataclasses.replace(tiny_config.model, controlnet=cfg))
    assert net.use_checkpointing is True
    assert set_grad_checkpointing(net, False).use_checkpointing is False
    assert set_grad_checkpointing(net, True).use_checkpointing is True
    assert tiny_config.train.grad_checkpointing is False
    from maisi.config import preset

    assert (
        preset("rflow-ct").train.grad_checkpointing is None
    )  # the official networks keep their own switches


# ---------------------------------------------------------------------------------------------------- checkpoints


def _state(step: int) -> dict:
    opt = torch.optim.AdamW(nn.Linear(2, 2).parameters())
    return {"step": step, "optimizers": {"g": opt.state_dict()}, "rng": ck.rng_state(torch.device("cpu"))}


def test_checkpoint_round_trip_loads_weights_only(tmp_path, tiny_config):
    from maisi.networks import build

    disc = build("discriminator", tiny_config.model)
    path = ck.save_checkpoint(
        tmp_path,
        5,
        models={"discriminator": (disc, tiny_config.model.discriminator)},
        state=_state(5),
        keep_last=2,
    )
    assert path.name == "step_000005"
    state = read_torch_file(path / ck.STATE_NAME)  # weights_only=True
    assert state["step"] == 5
    ckpt = ck.latest_checkpoint(tmp_path)
    assert ckpt.step == 5
    for k, v in disc.state_dict().items():
        assert torch.equal(ckpt.weights["discriminator"][k], v)


def test_keep_last_removes_old_checkpoints(tmp_path):
    for step in (1, 2, 3, 4):
        ck.save_checkpoint(tmp_path, step, models={}, state=_state(step), keep_last=2)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [3, 4]


def test_interrupted_checkpoint_write_leaves_the_previous_one(tmp_path, monkeypatch):
    ck.save_checkpoint(tmp_path, 2, models={}, state=_state(2), keep_last=3)
    real_save = torch.save

    def dying_save(obj, f, *a, **k):  # writes half a file, then the process "dies"
        real_save(obj, f, *a, **k)
        with open(f, "r+b") as fh:
            fh.truncate(fh.seek(0, 2) // 2)
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(tmp_path, 4, models={}, state=_state(4), keep_last=3)
    monkeypatch.setattr(torch, "save", real_save)
    assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [2]
    assert ck.latest_checkpoint(tmp_path).state["step"] == 2
    # a crash that left a hidden temporary folder behind: ignored, then cleaned by the next write
    stale = tmp_path / ck.CHECKPOINTS / ".step_000006.abc.tmp"
    stale.mkdir()
    (stale / ck.STATE_NAME).write_bytes(b"garbage")
    assert ck.latest_checkpoint(tmp_path).step == 2
    ck.save_checkpoint(tmp_path, 6, models={}, state=_state(6), keep_last=3)
    assert not stale.exists() and ck.latest_checkpoint(tmp_path).step == 6


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, models={}, state=_state(1), keep_last=1)
    (path / ck.STATE_NAME).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        ck.load_checkpoint(path)
