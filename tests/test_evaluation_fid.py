"""FID 2.5D: Fréchet distance numerics, self-FID, monotone growth with an intensity shift, caching, sharding,
extractors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from maisi.data.nifti import save_nifti
from maisi.errors import CheckpointError, ConfigError
from maisi.evaluation import fid as fid_mod
from maisi.evaluation.extractors import (
    RandomConvFeatures,
    ResNet50Features,
    load_extractor,
    resnet50_backbone,
)
from maisi.evaluation.fid import (
    PLANES,
    FIDOptions,
    compute_fid,
    frechet_distance,
    set_features,
    volume_features,
    volume_slices,
)
from maisi.evaluation.volumes import find_cases, shard

SHAPE = (20, 16, 12)


def ct_volume(seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(r.standard_normal(SHAPE), 1.5)
    return np.clip(v / v.std() * 300.0, -1000, 1000).astype(np.float32)


def write_set(folder, seeds, shift=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        save_nifti(folder / f"case{s:02d}_image.nii.gz", ct_volume(s) + shift, np.diag([2.0, 2.0, 3.0, 1.0]))
    return folder


def test_frechet_distance_closed_form():
    # diagonal covariances: FID = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-10)
    # a rotated pair of covariances gives the same value (the distance is basis-free)
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))
    got = frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, abs=1e-9)


def test_fid_of_a_set_against_itself_is_zero_even_when_rank_deficient():
    f = np.random.default_rng(1).standard_normal((20, 64))  # fewer samples than features
    cov = np.cov(f, rowvar=False)
    value = frechet_distance(f.mean(0), cov, f.mean(0), cov)
    assert value < 1e-6 * np.trace(cov)


def test_volume_slices_planes_ratio_and_step():
    v = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    opts = FIDOptions()
    assert tuple(volume_slices(v, "axial", opts).shape) == (12, 1, 20, 16)
    assert tuple(volume_slices(v, "coronal", opts).shape) == (16, 1, 20, 12)
    assert tuple(volume_slices(v, "sagittal", opts).shape) == (20, 1, 16, 12)
    half = volume_slices(v, "axial", FIDOptions(center_slice_ratio=0.5, slice_step=2))
    assert half.shape[0] == 3  # central 6 of 12 slices (3..8), every 2nd
    assert torch.equal(half[0, 0], torch.from_numpy(v[:, :, 3]))
    assert torch.equal(half[1, 0], torch.from_numpy(v[:, :, 5]))


def test_fid_self_zero_and_monotone_in_shift(tmp_path):
    real = write_set(tmp_path / "real", range(3))
    self_fid = compute_fid(real, real, cache_dir=tmp_path / "cache")
    values = []
    for shift in (40.0, 80.0, 160.0):
        shifted = write_set(tmp_path / f"shift{int(shift)}", range(3), shift=shift)
        values.append(compute_fid(real, shifted, cache_dir=tmp_path / "cache")["fid_2p5d"])
    assert self_fid["fid_2p5d"] < 1e-6 * values[0]
    assert 0 < values[0] < values[1] < values[2]
    # the features respond smoothly: FID grows about quadratically with a small mean shift
    assert 2.5 < values[1] / values[0] < 5.5
    assert self_fid["n_slices"]["real"] == {"axial": 36, "coronal": 48, "sagittal": 60}
    assert self_fid["comparable_to_published"] is False


def test_fid_of_other_volumes_is_positive_and_written(tmp_path):
    real = write_set(tmp_path / "real", range(3))
    other = write_set(tmp_path / "other", range(10, 13))
    out = tmp_path / "fid.json"
    r = compute_fid(real, other, out=out)
    saved = json.loads(out.read_text())
    assert saved["fid_2p5d"] == pytest.approx(r["fid_2p5d"]) and r["fid_2p5d"] > 0
    assert set(saved["planes"]) == set(PLANES)
    assert saved["fid_2p5d"] == pytest.approx(np.mean([saved["planes"][p] for p in PLANES]))


def test_feature_cache_is_used(tmp_path, monkeypatch):
    folder = write_set(tmp_path / "real", [0])
    ext = RandomConvFeatures(seed=0)
    first = volume_features(folder / "case00_image.nii.gz", ext, FIDOptions(), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 1

    def boom(*a, **k):
        raise AssertionError("volume was read again instead of using the cache")

    monkeypatch.setattr(fid_mod, "prepare_volume", boom)
    again = volume_features(folder / "case00_image.nii.gz", ext, FIDOptions(), cache_dir=tmp_path / "cache")
    for plane in PLANES:
        np.testing.assert_array_equal(first[plane], again[plane])
    # other options are a different cache entry
    with pytest.raises(AssertionError, match="read again"):
        volume_features(
            folder / "case00_image.nii.gz", ext, FIDOptions(slice_step=2), cache_dir=tmp_path / "cache"
        )


def test_shard_covers_every_item_once():
    items = list(range(11))
    parts = [shard(items, r, 3) for r in range(3)]
    assert sorted(sum(parts, [])) == items
    assert parts[1] == [1, 4, 7, 10]
    with pytest.raises(ValueError):
        shard(items, 3, 3)


class Incomplete(Exception):
    pass


class FakeDist:
    """Stands in for torch.distributed over 2 ranks run one after the other: all_gather_object records each rank's
    features and returns every rank's once all have been recorded."""

    def __init__(self):
        self.parts = {}
        self.rank = 0

    def all_gather_object(self, gathered, local):
        self.parts[self.rank] = local
        if len(self.parts) < len(gathered):
            raise Incomplete
        for r in range(len(gathered)):
            gathered[r] = self.parts[r]


def test_features_sharded_over_ranks_and_merged(tmp_path, monkeypatch):
    folder = write_set(tmp_path / "real", range(3))
    cases = find_cases(folder)
    ext, opts = RandomConvFeatures(seed=0), FIDOptions()
    fake = FakeDist()
    fake.rank = 1
    monkeypatch.setattr(fid_mod, "_distributed", lambda: (1, 2, fake))
    with pytest.raises(Incomplete):
        set_features(cases, ext, opts)
    fake.rank = 0
    monkeypatch.setattr(fid_mod, "_distributed", lambda: (0, 2, fake))
    merged = set_features(cases, ext, opts)
    assert sorted(fake.parts[0]) == ["case00", "case02"] and sorted(fake.parts[1]) == ["case01"]
    monkeypatch.setattr(fid_mod, "_distributed", lambda: (0, 1, None))
    single = set_features(cases, ext, opts)
    assert list(merged) == list(single)
    for name in single:
        for p in PLANES:
            np.testing.assert_array_equal(merged[name][p], single[name][p])


def _gather_worker(rank, world, init_file, folder, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        feats = set_features(find_cases(folder), RandomConvFeatures(seed=0), FIDOptions())
        if rank == 0:
            np.savez(out, **{f"{n}:{p}": f[p] for n, f in feats.items() for p in PLANES})
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_features_gathered_over_two_gloo_processes(tmp_path):
    folder = write_set(tmp_path / "real", range(3))
    out = tmp_path / "gathered.npz"
    torch.multiprocessing.spawn(
        _gather_worker, args=(2, str(tmp_path / "init"), str(folder), str(out)), nprocs=2
    )
    single = set_features(find_cases(folder), RandomConvFeatures(seed=0), FIDOptions())
    with np.load(out) as got:
        assert sorted(got.files) == sorted(f"{n}:{p}" for n in single for p in PLANES)
        for n, f in single.items():
            for p in PLANES:
                np.testing.assert_allclose(got[f"{n}:{p}"], f[p], rtol=1e-6)


def test_random_extractor_is_deterministic_and_seed_dependent():
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    a, b, c = RandomConvFeatures(seed=0), RandomConvFeatures(seed=0), RandomConvFeatures(seed=1)
    assert torch.equal(a(x), b(x))
    assert not torch.allclose(a(x), c(x))
    assert a(x).shape == (3, a.feature_dim) == (3, 224)


@pytest.mark.parametrize(
    ("layout", "params", "stride_conv"),
    [("torchvision", 23_508_032, "conv2"), ("radimagenet", 23_508_032 + 26_560, "conv1")],
)
def test_resnet50_layouts(layout, params, stride_conv):
    with torch.device("meta"):  # layout only: no memory, no initialisation cost
        net = resnet50_backbone(layout)
    state = net.state_dict()
    # torchvision resnet50 has 320 state entries, 318 without fc; the Keras port adds a bias to all 53 convs
    assert len(state) == (318 if layout == "torchvision" else 318 + 53)
    # torchvision: 25,557,032 minus fc's 2,049,000; Keras port: + one bias per conv output channel (26,560)
    assert sum(p.numel() for p in net.parameters()) == params
    assert net.conv1.stride == (2, 2) and getattr(net.layer2[0], stride_conv).stride == (2, 2)
    assert ("layer1.0.conv1.bias" in state) is (layout == "radimagenet")
    assert tuple(state["layer4.2.conv3.weight"].shape) == (2048, 512, 1, 1)


def test_resnet50_trunk_forward_shape():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = resnet50_backbone("radimagenet").eval()
    with torch.inference_mode():
        assert net(torch.rand(2, 3, 32, 32)).shape == (2, 2048)


@pytest.mark.slow
@pytest.mark.parametrize("preprocess", ["imagenet", "radimagenet"])
def test_resnet50_loads_weights_files(tmp_path, preprocess):
    from safetensors.torch import save_file

    state = resnet50_backbone("radimagenet" if preprocess == "radimagenet" else "torchvision").state_dict()
    # a torchvision-style file: classifier kept, "module." prefix from DataParallel, no BatchNorm counters
    saved = {f"module.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    saved["module.fc.weight"] = torch.zeros(1000, 2048)
    saved["module.fc.bias"] = torch.zeros(1000)
    path = tmp_path / "resnet50.safetensors"
    save_file(saved, str(path))
    ext = ResNet50Features(weights=path, preprocess=preprocess)
    assert ext(torch.rand(2, 1, 64, 64)).shape == (2, 2048)
    assert ext.ident.startswith(f"resnet50-{preprocess}-")
    bad = tmp_path / "bad.safetensors"
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(bad))
    with pytest.raises(CheckpointError, match="missing keys"):
        ResNet50Features(weights=bad, preprocess=preprocess)


def test_official_minmax_intensity_and_pad_crop_options():
    v = np.linspace(-500, 300, 10 * 8 * 6, dtype=np.float32).reshape(10, 8, 6)
    from maisi.data.intensity import ct_to_unit

    unit = ct_to_unit(v)
    sl = volume_slices(unit, "axial", FIDOptions(intensity="ct-minmax"))
    assert float(sl.min()) == 0.0 and float(sl.max()) == pytest.approx(1.0, abs=1e-6)
    sl_fixed = volume_slices(unit, "axial", FIDOptions(intensity="ct"))
    assert float(sl_fixed.min()) == pytest.approx(0.25) and float(sl_fixed.max()) == pytest.approx(0.65)
    from maisi.evaluation.fid import pad_or_crop

    assert pad_or_crop(unit, (12, 4, 6), value=0.0).shape == (12, 4, 6)
    assert pad_or_crop(unit, (12, 4, 6), value=0.0, pad=False).shape == (10, 4, 6)
    assert pad_or_crop(unit, (12, 4, 6), value=0.0, crop=False).shape == (12, 8, 6)


def test_extractor_errors():
    with pytest.raises(ConfigError, match="unknown feature extractor"):
        load_extractor("inception")
    with pytest.raises(ConfigError, match="needs --extractor-weights"):
        load_extractor("radimagenet")
    with pytest.raises(CheckpointError, match="not found"):
        load_extractor("resnet50", weights="/nonexistent/w.pt")
    with pytest.raises(ConfigError, match="center_slice_ratio"):
        FIDOptions(center_slice_ratio=0.0)
