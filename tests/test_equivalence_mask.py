"""maisi's mask-generation model equals the official path: size vector -> DDPM latent (mask UNet with the vector as
cross-attention context) -> latent / mask scale factor -> mask VAE -> argmax over 125 channels -> MAISI ids.

Both sides get the same official-layout weights, size vector, initial latent and DDPM step noise. The official
post-processing (``general_mask_generation_post_process``: hole filling, largest components) is deliberately not
run by maisi, so the comparison is on the decoded map; no tumour is requested, so maisi applies no rule of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from test_equivalence_common import (
    OFFICIAL_OVERLAP,
    OFFICIAL_WINDOW,
    SEED,
    SHORT_DDPM_T,
    TOL_UNIT,
    load_maisi_model_set,
    max_abs,
    official_weights,
    tiny_config,
)

#: a full size vector (every slot given, so no completion from real vectors is involved), no tumour
SIZES = {
    "gallbladder": 0.3,
    "liver": 0.7,
    "stomach": 0.4,
    "pancreas": 0.55,
    "colon": 0.45,
    "lung tumor": -1.0,
    "pancreatic tumor": -1.0,
    "hepatic tumor": -1.0,
    "colon cancer primaries": -1.0,
    "bone lesion": -1.0,
}
#: logit gap under which the official argmax is a numerical tie (either class is the official result)
TIE_GAP = 1e-4
#: a sliding-window decode of the 16 x 16 x 8 mask latent (3 windows along z)
TILED_WINDOW, TILED_OVERLAP = (16, 16, 4), 0.5


@dataclass
class MaskRun:
    source: Any
    latent: torch.Tensor
    reference_latent: torch.Tensor
    label: np.ndarray
    reference_logits: torch.Tensor
    reference_label: np.ndarray


def _source(tmp_path_factory, sizes=SIZES, **decode):
    from maisi.generation.masks.model import ModelMaskSource

    weights, _ = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    model_set = load_maisi_model_set(weights, cfg, components=["mask_vae", "mask_unet"])
    shape = tuple(int(s) * 4 for s in cfg.model.mask_latent_shape[1:])
    return ModelMaskSource(
        model_set,
        size=shape,
        spacing=(1.5, 1.5, 1.5),
        seed=SEED,
        organ_sizes=sizes,
        steps=SHORT_DDPM_T,
        **decode,
    )


@pytest.fixture(scope="module")
def reference_latent(tmp_path_factory) -> torch.Tensor:
    from maisi.generation.seeds import derive_seed, torch_generator

    _, nets = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    noise = torch.randn(
        (1, *cfg.model.mask_latent_shape), generator=torch_generator(derive_seed(SEED, 0, 0, stream="mask"))
    )
    scheduler = ref.official_scheduler(
        "config_network_rflow.json", key="mask_generation_noise_scheduler", num_train_timesteps=SHORT_DDPM_T
    )
    size_vector = [SIZES[name] for name in ref.OFFICIAL_SIZE_SLOTS]
    return ref.reference_mask_latent(
        nets,
        scheduler,
        size_vector,
        noise,
        num_inference_steps=SHORT_DDPM_T,
        step_seed=derive_seed(SEED, 0, 0, stream="mask_sampler"),
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((OFFICIAL_WINDOW, OFFICIAL_OVERLAP), id="whole"),
        # sliding-window decode is also tested (fast) on the image VAE in test_equivalence_optimisations.py
        pytest.param((TILED_WINDOW, TILED_OVERLAP), id="tiled", marks=pytest.mark.slow),
    ],
)
def run(request, tmp_path_factory, reference_latent) -> MaskRun:
    window, overlap = request.param
    _, nets = official_weights(tmp_path_factory, "rflow")
    source = _source(tmp_path_factory, decode_window=window, decode_overlap=overlap)
    sample = source(0)  # the public path: latent, decode, ids, fitted onto the requested (= native) grid
    logits, label = ref.reference_mask_decode(
        nets, reference_latent, decode_window=window, decode_overlap=overlap
    )
    return MaskRun(
        source=source,
        latent=source.sample_latent(0),
        reference_latent=reference_latent,
        label=sample.label,
        reference_logits=logits,
        reference_label=label,
    )


def test_mask_latent_matches_official(run):
    assert max_abs(run.latent, run.reference_latent) <= TOL_UNIT


def test_mask_label_map_matches_official(run):
    """Equal ids everywhere except where the official argmax is a numerical tie (top-2 logit gap < 1e-4)."""
    from maisi import labels

    top2 = torch.topk(run.reference_logits[0], 2, dim=0).values
    tie = (top2[0] - top2[1]).numpy() < TIE_GAP
    differ = run.label != run.reference_label
    assert run.label.shape == run.reference_label.shape
    assert not np.any(differ & ~tie), f"{int(np.sum(differ & ~tie))} voxels differ outside numerical ties"
    assert np.mean(tie) < 1e-3
    ids = set(np.unique(run.label).tolist())  # a real label map: many valid MAISI ids
    assert len(ids) > 20
    assert ids <= set(labels.VALID_IDS) | {0}


def test_mask_logits_match_official(run):
    """The decode itself (whole or sliding-window) on the reference latent."""
    logits = run.source.codec.decode(run.reference_latent)
    assert max_abs(logits, run.reference_logits) <= TOL_UNIT


def test_size_vector_order_is_official():
    from maisi import labels

    assert tuple(labels.SIZE_SLOTS) == ref.OFFICIAL_SIZE_SLOTS
    assert labels.size_vector(SIZES) == [SIZES[n] for n in ref.OFFICIAL_SIZE_SLOTS]


def test_channel_to_id_table_is_official():
    from maisi import labels

    assert labels.MASK_CHANNEL_TO_ID == ref.channel_to_id_table()


def test_mask_model_reads_the_size_vector(tmp_path_factory, reference_latent):
    """Negative control: another size vector gives another latent (the context reaches the UNet), by far more
    than the bound."""
    other = _source(tmp_path_factory, sizes={**SIZES, "liver": 0.1}).sample_latent(0)
    assert max_abs(other, reference_latent) > 100 * TOL_UNIT


def test_mask_scale_factor_is_the_official_constant(tmp_path_factory):
    """maisi divides the mask latent by ``model.mask_vae.scale_factor``, the official network JSON's
    ``mask_generation_scale_factor``."""
    cfg = tiny_config("rflow")
    weights, nets = official_weights(tmp_path_factory, "rflow")
    model_set = load_maisi_model_set(weights, cfg, components=["mask_vae", "mask_unet"])
    official = ref.official_json("config_network_rflow.json")["mask_generation_scale_factor"]
    assert model_set.config.mask_vae.scale_factor == pytest.approx(official)
    assert nets.mask_scale_factor == pytest.approx(official)
