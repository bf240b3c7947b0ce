"""Native CPU kernels (:mod:`maisi.kernels`): Winograd F(4, 3) convolutions equal ``F.conv3d`` within float rounding,
the accelerate switch routes only what it should, and a missing compiler only turns the kernels off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from maisi.kernels import build, winograd
from maisi.performance import PLAIN, Speedups, accelerate, winograd_convolutions, winograd_eligible

pytestmark = pytest.mark.skipif(not winograd.available(), reason="no C compiler: the Winograd kernel is off")

#: largest error of one Winograd convolution relative to the output's largest magnitude (direct float32: ~3e-7)
WINOGRAD_TOL = 3e-5


def _case(c_in, c_out, shape, *, batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, *shape, generator=g) * 0.5 + 0.2
    w = torch.randn(c_out, c_in, 3, 3, 3, generator=g) / (27 * c_in) ** 0.5
    b = torch.randn(c_out, generator=g)
    exact = F.conv3d(x.double(), w.double(), b.double(), padding=1)
    return x, w, b, exact


def _rel(y, exact):
    return float((y.double() - exact).abs().max() / exact.abs().max())


@pytest.mark.parametrize(
    "c_in, c_out, shape, batch",
    [
        (8, 16, (13, 14, 15), 1),  # no axis a multiple of the 4-voxel tile
        (40, 24, (8, 8, 8), 2),
        (70, 90, (5, 9, 4), 1),  # channels past one 64-channel block; 90 outputs: no fused path
        (24, 40, (17, 6, 9), 1),  # 40 outputs: the fused micro-kernel's 16- and 8-column parts
    ],
)
@pytest.mark.parametrize("last", [True, False])
@pytest.mark.parametrize("fused", [True, False])
def test_winograd_equals_conv3d(c_in, c_out, shape, batch, last, fused):
    x, w, b, exact = _case(c_in, c_out, shape, batch=batch)
    if last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = winograd.conv3d(x, winograd.transform_weight(w), b, fused=fused)
    assert y.shape == exact.shape and y.dtype == torch.float32
    assert _rel(y, exact) < WINOGRAD_TOL
    assert y.is_contiguous(memory_format=torch.channels_last_3d if last else torch.contiguous_format)
    direct = F.conv3d(x, w, b, padding=1)
    assert not torch.equal(y, direct)  # really another algorithm


def test_winograd_without_bias_and_small_chunks():
    x, w, _, _ = _case(16, 32, (9, 10, 11))
    exact = F.conv3d(x.double(), w.double(), padding=1)
    y = winograd.conv3d(x, winograd.transform_weight(w), None, chunk_bytes=1)  # one tile per chunk
    assert _rel(y, exact) < WINOGRAD_TOL


@pytest.mark.parametrize("fused", [True, False])
def test_winograd_threads_give_the_same_result(fused):
    x, w, b, _ = _case(32, 32, (12, 12, 40))  # 90 tiles: three blocks of the fused path, the last one partial
    u = winograd.transform_weight(w)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = winograd.conv3d(x, u, b, fused=fused)
        torch.set_num_threads(3)
        three = winograd.conv3d(x, u, b, fused=fused)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, three)  # tiles are independent: no reduction order changes


def test_transform_weight_shape_and_checks():
    w = torch.randn(5, 3, 3, 3, 3)
    u = winograd.transform_weight(w)
    assert u.shape == (216, 3, 5) and u.dtype == torch.float32 and u.is_contiguous()
    # the (0, 0, 0) position of G g G^T is g[0, 0, 0] (G's first row is [1, 0, 0])
    assert torch.allclose(u[0], w[:, :, 0, 0, 0].T)
    with pytest.raises(ValueError, match="weight must be"):
        winograd.transform_weight(torch.randn(5, 3, 1, 1, 1))
    with pytest.raises(ValueError, match="x must be a 5D float32 CPU tensor"):
        winograd.conv3d(torch.randn(1, 3, 4, 4, 4, dtype=torch.float64), u)
    with pytest.raises(ValueError, match="u must be"):
        winograd.conv3d(torch.randn(1, 4, 4, 4, 4), u)


def test_eligibility():
    assert winograd_eligible(torch.nn.Conv3d(32, 64, 3, padding=1))
    assert winograd_eligible(torch.nn.Conv3d(256, 256, 3, padding=1))
    assert not winograd_eligible(torch.nn.Conv3d(16, 64, 3, padding=1))  # too few channels to pay
    assert not winograd_eligible(torch.nn.Conv3d(512, 256, 3, padding=1))  # transformed kernel too large
    assert not winograd_eligible(torch.nn.Conv3d(64, 64, 3, padding=1, stride=2))
    assert not winograd_eligible(torch.nn.Conv3d(64, 64, 1))
    assert not winograd_eligible(torch.nn.Conv3d(64, 64, 3, padding=1, groups=2))


def test_winograd_convolutions_route_and_fall_back():
    net = torch.nn.Sequential(
        torch.nn.Conv3d(32, 32, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv3d(32, 8, 3, padding=1)
    ).eval()
    x = torch.randn(1, 32, 16, 16, 16)
    with torch.no_grad():
        plain = net(x)
    with winograd_convolutions(net) as forwards:
        assert len(forwards) == 1  # the 32 -> 8 convolution is not eligible
        with torch.no_grad():
            fast = net(x)
            net(torch.randn(1, 32, 12, 12, 12))  # 27 tiles: falls back
        assert forwards[0].calls == 1
        assert (fast - plain).abs().max() / plain.abs().max() < WINOGRAD_TOL
        y = net(x.requires_grad_())  # autograd: the plain path
        y.sum().backward()
        assert x.grad is not None and forwards[0].calls == 1
        with torch.no_grad():  # a weight changed in place is transformed again
            net[0].weight.mul_(2.0)
            expect = F.conv3d(x, net[0].weight, net[0].bias, padding=1)
            assert (net[0](x) - expect).abs().max() / expect.abs().max() < WINOGRAD_TOL
    assert not any("forward" in m.__dict__ for m in net.modules())


def test_accelerate_winograd_switch_counts(monkeypatch):
    net = torch.nn.Sequential(torch.nn.Conv3d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 32, 16, 16, 16)
    calls: list[int] = []
    real = winograd.conv3d
    monkeypatch.setattr(winograd, "conv3d", lambda *a, **k: calls.append(1) or real(*a, **k))
    for speedups, expect in ((Speedups(), 1), (Speedups(winograd=False), 0), (PLAIN, 0)):
        calls.clear()
        with accelerate([net], speedups, device="cpu"), torch.no_grad():
            net(x)
        assert len(calls) == expect, speedups


def test_missing_compiler_turns_the_kernel_off(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("MAISI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "_reasons", {})
    assert build.load("winograd3d") is None
    assert "no C compiler" in build.unavailable_reason("winograd3d")
    assert not (tmp_path / "home").exists()


def test_kernel_builds_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MAISI_HOME", str(tmp_path))
    monkeypatch.setattr(build, "_loaded", {})
    assert build.load("winograd3d") is not None
    built = list((tmp_path / "kernels").glob("winograd3d-*.so"))
    assert len(built) == 1 and not list((tmp_path / "kernels").glob(".*tmp"))  # no temporary left behind
    stamp = built[0].stat().st_mtime_ns
    monkeypatch.setattr(build, "_loaded", {})
    assert build.load("winograd3d") is not None
    assert built[0].stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_nested_accelerate_keeps_the_outer_setup(monkeypatch):
    net = torch.nn.Sequential(torch.nn.Conv3d(32, 32, 3, padding=1)).eval()
    x = torch.randn(1, 32, 16, 16, 16)
    transforms: list[int] = []
    real = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight", lambda w: transforms.append(1) or real(w))
    with accelerate([net], Speedups(), device="cpu"), torch.no_grad():
        outer = net[0].forward
        for _ in range(3):
            with accelerate([net], Speedups(), device="cpu"):
                assert net[0].forward is outer
                net(x)
    assert len(transforms) == 1  # the kernel was transformed once for the three calls
    assert not any("forward" in m.__dict__ for m in net.modules())
    assert net[0].weight.is_contiguous()


def test_generate_transforms_kernels_once_per_run(monkeypatch, tmp_path):
    """``generate`` holds one speed-up block over all its samples."""
    import dataclasses

    from maisi.config import preset
    from maisi.generation import generate

    transforms: list[int] = []
    real = winograd.transform_weight
    monkeypatch.setattr(winograd, "transform_weight", lambda w: transforms.append(1) or real(w))
    counts = []
    for n in (1, 3):
        cfg = preset("demo")  # the shipped weights
        cfg.generate = dataclasses.replace(
            cfg.generate,
            steps=2,
            qc=False,
            num_samples=n,
            mask_source="phantom",
            preview=False,
            output_size=(32, 32, 32),
            weights="demo",
            output_dir=str(tmp_path / f"n{n}"),
        )
        transforms.clear()
        generate(cfg, write=False)
        counts.append(len(transforms))
    assert counts[0] > 0 and counts[1] == counts[0]


@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_kernel_equals_torch_and_stays_precise(silu):
    from maisi.kernels import group_norm as kgn

    g = torch.Generator().manual_seed(0)
    # a large offset against a small spread: PyTorch's channels-last CPU kernel loses precision here
    x = (torch.randn(2, 32, 9, 10, 11, generator=g) * 0.1 + 10.0).contiguous(
        memory_format=torch.channels_last_3d
    )
    w, b = torch.rand(32, generator=g) + 0.5, torch.randn(32, generator=g)
    exact = F.group_norm(x.double().contiguous(), 8, w.double(), b.double(), 1e-6)
    if silu:
        exact = F.silu(exact)
    y = kgn.group_norm(x, 8, w, b, 1e-6, silu=silu)
    assert y.is_contiguous(memory_format=torch.channels_last_3d) and y.shape == x.shape
    assert (y.double() - exact).abs().max() < 2e-6 * exact.abs().max()
    with pytest.raises(ValueError, match="num_groups must divide"):
        kgn.group_norm(x, 5, w, b)
    with pytest.raises(ValueError, match="channels-last"):
        kgn.group_norm(x.contiguous(), 8, w, b)


def test_silu_of_extreme_values():
    from maisi.kernels import group_norm as kgn

    x = torch.tensor([-1e4, -100.0, -88.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4] * 4).view(
        1, 40, 1, 1, 1
    )
    x = x.contiguous(memory_format=torch.channels_last_3d)
    # one voxel: group norm with weight 0 and bias = x gives y = x, then SiLU
    y = kgn.group_norm(x, 40, torch.zeros(40), x.flatten(), silu=True)
    assert torch.isfinite(y).all()
    assert torch.allclose(y.flatten(), F.silu(x.flatten()), rtol=3e-7, atol=1e-30)


def test_silu_over_a_dense_range():
    from maisi.kernels import group_norm as kgn

    t = (
        torch.linspace(-40.0, 40.0, 8 * 4001)
        .view(1, 8, 4001, 1, 1)
        .contiguous(memory_format=torch.channels_last_3d)
    )
    # weight 0 and bias 0 would lose the values: normalise, then compare with torch on the normalised values
    y = kgn.group_norm(t, 8, silu=True)
    ref = F.silu(F.group_norm(t.double().contiguous(), 8))
    assert ((y.double() - ref).abs() / (1.0 + ref.abs())).max() < 2e-6


def test_a_compiler_without_march_native_still_builds(monkeypatch, tmp_path):
    """Some compilers (Apple clang on arm64) refuse -march=native: the build retries without it."""
    import shutil

    real = shutil.which("cc")
    fake = tmp_path / "cc"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -march=native ] && echo "error: unknown option -march=native" >&2 && exit 1; done\n'
        f'exec {real} "$@"\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("MAISI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(build, "_loaded", {})
    kernel = build.load("group_norm")
    assert kernel is not None and build.unavailable_reason("group_norm") in (None, "")
    # the kernel built without -march=native computes the group norm
    from maisi.kernels import group_norm as kgn

    t = torch.randn(1, 8, 6, 5, 4, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last_3d
    )
    ref = F.group_norm(t.double().contiguous(), 4)
    assert (kgn.group_norm(t, 4).double() - ref).abs().max() < 1e-5


def test_a_real_compiler_error_is_reported_after_one_try(monkeypatch, tmp_path):
    """Only a failure about -march=native is retried without it; any other error is reported at once."""
    calls = tmp_path / "calls"
    fake = tmp_path / "cc"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "group_norm.c:1: error: expected ;" >&2\nexit 1\n')
    fake.chmod(0o755)
    monkeypatch.setenv("CC", str(fake))
    monkeypatch.setenv("MAISI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(build, "_loaded", {})
    assert build.load("group_norm") is None
    assert "expected ;" in build.unavailable_reason("group_norm")
    compiles = [line for line in calls.read_text().splitlines() if " -o " in line]  # not the version query
    assert len(compiles) == 1 and "-march=native" in compiles[0]
