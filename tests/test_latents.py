"""LatentCodec: tiled decode equals MONAI's SlidingWindowInferer (the official MAISI decode), approximates the
untiled decode, tiled encode approximates whole-volume encode, and decode memory does not grow with the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from monai.data.utils import dense_patch_slices
from monai.inferers.utils import _get_scan_interval

from maisi.config import VAEConfig, preset
from maisi.errors import DataError
from maisi.latents import LatentCodec, gaussian_weight, tile_plan, window_starts
from maisi.networks import build_vae

# a real MONAI AutoencoderKlMaisi (4x downsampling, res blocks, group norms), small enough for CPU tests
TEST_VAE = VAEConfig(num_channels=(4, 8, 8), num_res_blocks=(1, 1, 1), norm_num_groups=4, num_splits=1)
SCALE = 1.7


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return build_vae(TEST_VAE).eval()


def _codec(vae, **options) -> LatentCodec:
    return LatentCodec(vae=vae, scale_factor=SCALE, **options)


def _randn(*shape, seed=0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "size, window, overlap",
    [((20, 17, 9), (8, 8, 8), 0.6666), ((20, 17, 9), (8, 8, 8), 0.25), ((64, 48, 32), (48, 48, 48), 0.6666),
     ((5, 30, 13), (6, 7, 5), 0.0), ((128, 128, 64), (48, 48, 48), 0.6666)],
)  # fmt: skip
def test_tile_plan_is_monais(size, window, overlap):
    roi = [min(w, s) for w, s in zip(window, size)]
    expected = dense_patch_slices(size, roi, _get_scan_interval(size, roi, 3, (overlap,) * 3))
    assert tile_plan(size, window, overlap) == expected


def test_window_starts_match_monai_exhaustively():
    for size in range(1, 41):
        for window in range(1, 14):
            for overlap in (0.0, 0.25, 0.5, 0.6666, 0.9):
                roi = (min(window, size),)
                expected = [
                    s[0].start
                    for s in dense_patch_slices((size,), roi, _get_scan_interval((size,), roi, 1, (overlap,)))
                ]
                assert window_starts(size, window, overlap) == expected, (size, window, overlap)


def test_tile_plan_counts():
    # official window on a 512x512x256 image (latent 128x128x64): 6x6x2 windows; overlap 0.25: 4x4x2
    assert len(tile_plan((128, 128, 64), (48, 48, 48), 0.6666)) == 72
    assert len(tile_plan((128, 128, 64), (48, 48, 48), 0.25)) == 32


def test_gaussian_weight_shape_and_peak():
    w = gaussian_weight((6, 8, 5))
    assert w.shape == (6, 8, 5) and w.dtype == torch.float32
    assert float(w[2:4, 3:5, 2].min()) == float(w.max()) > float(w[1, 3, 2])  # peak at the centre
    assert float(w.min()) == pytest.approx(1e-3)  # MONAI's floor


@pytest.mark.parametrize("overlap, shape", [(0.6666, (1, 4, 8, 7, 6)), (0.25, (1, 4, 9, 7, 5))])
def test_decode_matches_monai_sliding_window(vae, overlap, shape):
    codec = _codec(vae, decode_window=(6, 6, 6), decode_overlap=overlap)
    latent = _randn(*shape)
    ours = codec.decode(latent)
    reference = codec.decode_reference(latent)
    assert ours.shape == (shape[0], 1, *(4 * s for s in shape[2:]))
    assert float((ours - reference).abs().max()) <= 1e-5
    # into a preallocated buffer (stale contents are overwritten)
    out = torch.full_like(ours, 7.0)
    assert codec.decode(latent, out=out) is out
    assert float((out - reference).abs().max()) <= 1e-5
    # a float16 buffer (how the 125-channel mask decode keeps large volumes in memory)
    half = codec.decode(latent, out=torch.empty(ours.shape, dtype=torch.float16))
    assert half.dtype == torch.float16 and float((half.float() - reference).abs().max()) <= 1e-2


def test_batch_equals_one_by_one(vae):
    codec = _codec(vae, decode_window=(6, 6, 6), decode_overlap=0.25)
    latent = _randn(2, 4, 9, 6, 6, seed=3)
    both = codec.decode(latent)
    for b in range(2):
        assert torch.allclose(both[b : b + 1], codec.decode(latent[b : b + 1]), atol=1e-6)
    assert not both.is_inference()  # callers may post-process in place


def test_one_window_equals_direct_decode(vae):
    codec = _codec(vae, decode_window=(6, 5, 4))
    latent = _randn(1, 4, 6, 5, 4, seed=1)
    with torch.inference_mode():
        direct = vae.decode(latent / SCALE)
    assert torch.equal(codec.decode(latent), direct)  # default: whole-volume path, as the official rule
    # forced tiling of one window: its weight cancels in the normalisation
    assert float((codec.decode(latent, tiled=True) - direct).abs().max()) <= 1e-6


def test_tiled_decode_approximates_untiled(vae):
    # Tiling is an approximation: a window sees zero padding within the decoder's receptive field of its
    # border, and group norms take statistics per window. With this random-weight VAE (output std 0.75) on a
    # 12^3 latent, overlap 0.5, we measured mean |tiled - untiled| 0.38 (window 6) and 0.23 (window 8); 0.15
    # for window 10. The error shrinks as windows grow (and is nil for one window, see the test above).
    latent = _randn(1, 4, 12, 12, 8, seed=2)
    untiled = _codec(vae).decode(latent, tiled=False)
    errors = {}
    for window in (6, 8):
        tiled = _codec(vae, decode_window=(window, window, 8), decode_overlap=0.5).decode(latent, tiled=True)
        errors[window] = float((tiled - untiled).abs().mean())
    assert float(untiled.std()) == pytest.approx(0.75, abs=0.1)
    assert errors[8] < 0.8 * errors[6]
    assert errors[6] <= 0.45 and errors[8] <= 0.3, errors


def test_encode_tiled_approximates_whole(vae):
    # measured (latent std 0.41): mean |tiled - whole| 0.051 with 32^3 windows, ~0.1 with 24^3 windows
    image = torch.rand((1, 1, 48, 40, 32), generator=torch.Generator().manual_seed(4))
    whole_mean, whole_logvar = _codec(vae).encode_posterior(image, tiled=False)
    errors = {}
    for window in (24, 32):
        codec = _codec(vae, encode_window=(window,) * 3, encode_overlap=0.25)
        mean, logvar = codec.encode_posterior(image)
        assert mean.shape == logvar.shape == (1, 4, 12, 10, 8)
        errors[window] = float((mean - whole_mean).abs().mean()), float((logvar - whole_logvar).abs().mean())
    assert errors[32][0] <= 0.075 and errors[32][1] <= 0.065, errors
    assert errors[32][0] < 0.8 * errors[24][0] and errors[32][1] < 0.8 * errors[24][1], errors
    # posterior from MONAI's (mu, sigma) with sigma = exp(logvar / 2)
    with torch.inference_mode():
        mu, sigma = vae.encode(image)
    assert torch.allclose(whole_mean, mu, atol=1e-6)
    assert torch.allclose(whole_logvar, 2 * torch.log(sigma), atol=1e-5)


def test_encode_scales_and_samples(vae):
    codec = _codec(vae, encode_window=(16, 16, 16))
    image = torch.rand((1, 1, 16, 16, 16), generator=torch.Generator().manual_seed(5))
    mean, logvar = codec.encode_posterior(image)
    assert torch.allclose(codec.encode(image), mean * SCALE)
    a = codec.encode(image, sample=True, generator=torch.Generator().manual_seed(9))
    b = codec.encode(image, sample=True, generator=torch.Generator().manual_seed(9))
    c = codec.encode(image, sample=True, generator=torch.Generator().manual_seed(10))
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = (a / SCALE - mean) / torch.exp(0.5 * logvar)
    assert float(noise.std()) == pytest.approx(1.0, abs=0.15)


def test_validation(vae):
    with pytest.raises(ValueError, match="encode_window"):
        _codec(vae, encode_window=(30, 32, 32))
    with pytest.raises(ValueError, match="decode_overlap"):
        _codec(vae, decode_overlap=1.0)
    with pytest.raises(ValueError, match="scale_factor"):
        LatentCodec(vae=vae, scale_factor=0.0)
    codec = _codec(vae)
    with pytest.raises(DataError, match="multiple of the VAE downsampling 4"):
        codec.encode(torch.zeros(1, 1, 16, 18, 16))
    with pytest.raises(ValueError, match="out must be"):
        codec.decode(torch.zeros(1, 4, 4, 4, 4), out=torch.zeros(1, 1, 8, 8, 8))


def test_from_config_takes_scale_factor_and_windows(vae):
    cfg = preset("tiny")
    cfg.model.vae.scale_factor = 0.8
    codec = LatentCodec.from_config(cfg, vae=vae)
    assert codec.scale_factor == 0.8 and codec.downsample == 4
    # no decode settings in the request (the memory plan's to choose): the codec's own, the official 48^3 / 0.6666
    assert (codec.decode_window, codec.decode_overlap) == ((48, 48, 48), 0.6666)
    cfg.generate.decode_window, cfg.generate.decode_overlap = (16, 16, 8), 0.25
    codec = LatentCodec.from_config(cfg, vae=vae)
    assert (codec.decode_window, codec.decode_overlap) == ((16, 16, 8), 0.25)
    assert codec.encode_window == tuple(cfg.data.encode_window)
    assert codec.latent_channels == 4


_MEMORY_PROBE = textwrap.dedent(
    """
    import json, re, sys, torch
    from maisi.config import VAEConfig
    from maisi.latents import LatentCodec
    from maisi.networks import build_vae

    def status(key):
        return 1024 * int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))

    torch.manual_seed(0)
    vae = build_vae(VAEConfig(num_channels=(8, 8, 8), num_res_blocks=(0, 0, 0), norm_num_groups=4, num_splits=1))
    codec = LatentCodec(vae=vae, scale_factor=1.0, decode_window=(16, 16, 16), decode_overlap=0.0)
    codec.decode(torch.zeros(1, 4, 16, 16, 16), tiled=True)  # warm up allocator and kernels
    result = {}
    for size in (16, 48):
        latent = torch.randn(1, 4, size, size, size)
        out = torch.zeros(1, 1, 4 * size, 4 * size, 4 * size)
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS to the current RSS
        before = status("VmRSS")
        codec.decode(latent, out=out, tiled=True)
        result[4 * size] = status("VmHWM") - before
        del latent, out
    print(json.dumps(result))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self peak RSS")
def test_decode_working_memory_does_not_grow_with_output():
    # 64^3 (1 window) and 192^3 (27 windows) outputs: working memory beyond the preallocated output is the
    # same window's, within 20%. MALLOC_MMAP_THRESHOLD_ makes freed tensors leave the RSS at once.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peaks = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    small, large = peaks[64], peaks[192]
    assert small > 4 * 64**3  # a real measurement: at least one 64^3 float32 activation
    assert abs(large - small) <= 0.2 * small, peaks
