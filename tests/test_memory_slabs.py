"""Slab decoding equals the decoder's own forward, and its memory model equals the traced allocations."""

from __future__ import annotations

import pytest
import torch

from maisi.config import VAEConfig, preset
from maisi.latents import LatentCodec
from maisi.memory import decoding_in_slabs
from maisi.memory.slabs import decoder_peak, group_moments, row_ranges
from maisi.memory.trace import trace_peak
from maisi.networks import build_vae
from maisi.performance import Speedups, accelerate

SMALL = VAEConfig(
    num_channels=(8, 16, 16), num_res_blocks=(1, 2, 1), norm_num_groups=4, num_splits=1, out_channels=3
)
CONFIGS = {
    "tiny": preset("tiny").model.vae,
    "tiny-mask": preset("tiny").model.mask_vae,  # transposed-convolution upsampling, 125 outputs
    "small": SMALL,  # a channel change inside a level, 3 outputs
}


@pytest.fixture(scope="module")
def vaes():
    torch.manual_seed(0)
    return {name: build_vae(cfg).eval() for name, cfg in CONFIGS.items()}


@pytest.fixture(autouse=True)
def one_thread():
    # small convolutions: a second thread only waits on a busy machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_row_ranges_cover_every_row_once():
    for rows in (1, 5, 16, 37):
        for slabs in (1, 2, 3, 7, 64):
            ranges = row_ranges(rows, slabs)
            assert ranges[0][0] == 0 and ranges[-1][1] == rows
            assert all(a < b for a, b in ranges) and all(r[1] == n[0] for r, n in zip(ranges, ranges[1:]))
            assert len(ranges) == min(slabs, rows)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last_3d])  # torch's; the CPU kernel's
def test_group_moments_merge_slabs_exactly(fmt):
    x = (_randn(1, 8, 9, 5, 4) * 3 + 100).contiguous(memory_format=fmt)  # a large mean against the spread
    mean, var = group_moments(x, 4, row_ranges(9, 4))
    groups = x.double().reshape(4, -1)
    expected_mean = groups.mean(1).repeat_interleave(2)
    expected_var = groups.var(1, unbiased=False).repeat_interleave(2)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(var.double(), expected_var, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "name, splits, batch",
    [("tiny", 1, 1), ("tiny", 64, 2), ("tiny-mask", 3, 1), ("small", 5, 1),
     pytest.param("tiny-mask", 64, 2, marks=pytest.mark.slow), pytest.param("small", 2, 2, marks=pytest.mark.slow)],
)  # fmt: skip
def test_slab_decode_equals_the_decoder(vaes, name, splits, batch):
    vae = vaes[name]
    z = _randn(batch, 4, 7, 5, 4)  # odd sizes; a batch is decoded one sample after another
    with torch.no_grad():
        expected = vae.decode(z)
        with decoding_in_slabs(vae, splits) as runner:
            got = vae.decode(z)
    assert runner is not None and vae.decoder.forward is not runner  # restored
    scale = float(expected.abs().max())
    assert float((got - expected).abs().max()) <= 5e-6 * scale


def test_slab_decode_under_cpu_speedups(vaes):
    vae = vaes["tiny"]
    z = _randn(1, 4, 8, 6, 5, seed=1)
    with torch.no_grad():
        expected = vae.decode(z)
        with accelerate([vae], Speedups(), device="cpu"), decoding_in_slabs(vae, 4):
            got = vae.decode(z)
    assert float((got - expected).abs().max()) <= 1e-5 * float(expected.abs().max())


def test_codec_decode_in_slabs_is_the_whole_volume_decode(vaes):
    vae = vaes["tiny"]
    codec = LatentCodec(vae=vae, scale_factor=1.3, decode_window=(8, 8, 8))
    z = _randn(1, 4, 8, 8, 8, seed=2)
    expected = codec.decode(z)  # one window: the official whole-volume decode
    with decoding_in_slabs(vae, 6):
        got = codec.decode(z)
    assert float((got - expected).abs().max()) <= 5e-6 * float(expected.abs().max())


def test_bf16_decode_output_is_not_quantised(vaes):
    """The output layer runs in float32: the image is not on the bf16 grid (2^-8 steps, ~7.8 HU)."""
    vae = vaes["tiny"]
    z = _randn(1, 4, 6, 6, 6, seed=3)
    fp32 = LatentCodec(vae=vae, scale_factor=1.0).decode(z)
    for splits in (1, 4):
        with decoding_in_slabs(vae, splits):
            bf16 = LatentCodec(vae=vae, scale_factor=1.0, dtype=torch.bfloat16).decode(z)
        on_grid = (bf16 == bf16.bfloat16().float()).float().mean()
        assert bf16.dtype == torch.float32 and float(on_grid) < 0.01
        assert float((bf16 - fp32).abs().max()) <= 0.05 * float(fp32.abs().max())
    assert vae.decoder.blocks[-1].__dict__.get("forward") is None  # restored


@pytest.mark.parametrize(
    "name, latent, splits",
    [("tiny", (9, 7, 6), 1), ("tiny", (16, 12, 20), 5), ("tiny-mask", (9, 7, 6), 2), ("tiny-mask", (16, 12, 20), 16),
     ("small", (16, 12, 20), 1), ("small", (9, 7, 6), 16)],
)  # fmt: skip
def test_memory_model_equals_the_traced_schedule(name, latent, splits):
    cfg = CONFIGS[name]
    with torch.device("meta"):
        vae = build_vae(cfg).eval()
    z = torch.empty(1, cfg.latent_channels, *latent, device="meta")
    with decoding_in_slabs(vae, splits):
        traced = trace_peak(vae.decoder, z).peak
    modelled = decoder_peak(cfg, latent, splits)
    # the model leaves out the group-norm statistics (a few (C,) vectors)
    assert 0 <= traced - modelled <= 4096


def test_official_vae_peak_per_voxel():
    """The official VAE's decoder: 1.5 KB per output voxel whole (MONAI keeps ~5 full activations), down to under
    0.9 KB in 16 slabs (its 128-channel block input and 64-channel output, 768 B, plus one slab)."""
    cfg = preset("rflow-ct").model.vae
    voxels = (4 * 48) ** 3
    with torch.device("meta"):
        vae = build_vae(cfg).eval()
    whole = trace_peak(vae.decoder, torch.empty(1, 4, 48, 48, 48, device="meta")).peak
    assert 1.2 * 2**10 < whole / voxels < 1.6 * 2**10
    assert decoder_peak(cfg, (48, 48, 48), 16) / voxels < 0.9 * 2**10
