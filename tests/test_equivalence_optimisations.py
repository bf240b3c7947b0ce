"""Every speed/memory optimisation maisi applies stays within a stated, tested tolerance of the official numerics.

=====================================  ==========================================  ===============================
optimisation                           compared with                               tolerance ([0, 1] image units)
=====================================  ==========================================  ===============================
fused VAE (nn.GroupNorm, unsplit conv)  MONAI AutoencoderKlMaisi, num_splits=4,     1e-4 (decode), 1e-4 (latent)
                                       looped MaisiGroupNorm3D
fused attention (SDPA)                 MONAI's explicit attention                  inside the 1e-4 end-to-end bound
                                                                                   (test_equivalence_image.py)
tiled decode (own tiling, in-place     MONAI SlidingWindowInferer, gaussian,       1e-4
Gaussian blending)                     same window and overlap
bf16 autocast (``dtype=bfloat16``)     the fp32 official loop                      max 0.05, mean 0.003 (slow)
fp16 autocast (``dtype=float16``)      the fp32 official loop                      max 0.01, mean 5e-4 (slow)
=====================================  ==========================================  ===============================

Channels-last and ``torch.compile`` do not exist in maisi (nothing to test). Reduced precision runs slowly on CPUs
without bf16/fp16 convolution kernels (about 100 s per case here), so those tests are marked ``slow``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from test_equivalence_common import (
    TOL_UNIT,
    load_maisi_model_set,
    max_abs,
    official_weights,
    run_case,
    tiny_config,
)


def test_fused_vae_equals_monai_split_vae():
    """maisi's VAE (fused group norm, whole-tensor convolutions) vs MONAI's with the official rflow-ct memory
    settings (``num_splits=4``, looped group norm; fp32 norms on the CPU), same weights."""
    from maisi.networks import build_vae

    cfg = dataclasses.replace(tiny_config().model.vae, num_splits=4, dim_split=1)
    monai_vae = ref._monai_class("vae")(**ref.monai_kwargs("vae", cfg)).eval()
    ref.randomize_(monai_vae, generator=torch.Generator().manual_seed(1))
    ref.center_image_output_(monai_vae)
    ours = build_vae(cfg).eval()
    ours.load_state_dict(monai_vae.state_dict())
    g = torch.Generator().manual_seed(2)
    z = torch.randn((1, 4, 16, 16, 8), generator=g)
    x = torch.rand((1, 1, 64, 64, 32), generator=g)
    with torch.no_grad():
        assert max_abs(ours.decode_stage_2_outputs(z), monai_vae.decode_stage_2_outputs(z)) <= TOL_UNIT
        mu_ours, sigma_ours = ours.encode(x)
        mu_ref, sigma_ref = monai_vae.encode(x)
    assert max_abs(mu_ours, mu_ref) <= TOL_UNIT
    assert max_abs(sigma_ours, sigma_ref) <= TOL_UNIT


def test_loaded_networks_use_fused_attention(tmp_path_factory):
    """The end-to-end equivalence runs with maisi's SDPA attention (MONAI's explicit attention in the reference),
    so the 1e-4 bound of test_equivalence_image.py covers it."""
    weights, nets = official_weights(tmp_path_factory, "rflow")
    model_set = load_maisi_model_set(weights, tiny_config("rflow"), components=["unet", "controlnet"])
    for name in ("unet", "controlnet"):
        flags = [
            m.use_flash_attention for m in model_set[name].modules() if hasattr(m, "use_flash_attention")
        ]
        assert flags and all(flags), name
    ref_flags = [
        m.use_flash_attention for m in nets.diffusion_unet.modules() if hasattr(m, "use_flash_attention")
    ]
    assert ref_flags and not any(ref_flags)


@pytest.mark.parametrize(
    "window, overlap",
    [
        ((8, 16, 8), 0.6666),  # the official overlap: 5 windows along x
        ((16, 8, 4), 0.25),  # maisi's cheaper overlap, windows on two axes
    ],
)
def test_tiled_decode_equals_official_sliding_window(tmp_path_factory, window, overlap):
    from maisi.latents import LatentCodec

    weights, nets = official_weights(tmp_path_factory, "rflow")
    model_set = load_maisi_model_set(weights, tiny_config("rflow"))  # the scale factor is in the UNet file
    codec = LatentCodec(
        vae=model_set["vae"],
        scale_factor=model_set.config.vae.scale_factor,
        decode_window=window,
        decode_overlap=overlap,
    )
    latent = torch.randn((1, 4, 16, 16, 8), generator=torch.Generator().manual_seed(4))
    ours = codec.decode(latent)
    theirs = ref.decode(nets.autoencoder, latent, nets.scale_factor, window=window, overlap=overlap)
    assert ours.shape == theirs.shape == (1, 1, 64, 64, 32)
    assert max_abs(ours, theirs) <= TOL_UNIT
    whole = ref.decode(nets.autoencoder, latent, nets.scale_factor, window=(16, 16, 8), overlap=overlap)
    assert max_abs(theirs, whole) > 100 * TOL_UNIT  # tiling really happened (seams of a random VAE)


#: stated tolerances of reduced precision against the fp32 official loop, [0, 1] units (max, mean)
PRECISION_TOLERANCE = {"bfloat16": (0.05, 0.003), "float16": (0.01, 5e-4)}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", sorted(PRECISION_TOLERANCE))
@pytest.mark.parametrize("kind", ["rflow", "ddpm"])
def test_reduced_precision_within_stated_tolerance(tmp_path_factory, kind, dtype):
    c = run_case(tmp_path_factory, kind, (64, 64, 32), (1.5, 1.5, 2.0), dtype=dtype)
    diff = np.abs(c.sample.unit.astype(np.float64) - c.reference.unit.numpy())
    tol_max, tol_mean = PRECISION_TOLERANCE[dtype]
    assert diff.max() <= tol_max
    assert diff.mean() <= tol_mean
    assert diff.max() > TOL_UNIT  # it did run in reduced precision


def test_plain_and_default_speedups_equal_official_loop(tmp_path_factory):
    """``generate`` runs with ``Speedups()`` by default (ControlNet embedding cached, oneDNN convolutions, overlapped
    writes: what test_equivalence_image.py checks); with every switch off (``PLAIN``) it equals the official loop
    too."""
    from maisi.generation import generate
    from maisi.performance import PLAIN
    from test_equivalence_common import initial_noise

    shape = (64, 64, 32)
    c = run_case(tmp_path_factory, "rflow", shape, (1.5, 1.5, 2.0))
    cfg = c.cfg
    cfg.generate = dataclasses.replace(cfg.generate, output_dir=str(tmp_path_factory.mktemp("plain")))
    (plain,) = generate(
        cfg, initial_noise=initial_noise(shape), return_unit=True, write=False, speedups=PLAIN
    )
    assert max_abs(plain.unit, c.reference.unit) <= TOL_UNIT
    assert max_abs(c.sample.unit, c.reference.unit) <= TOL_UNIT
