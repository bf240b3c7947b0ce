"""encode_dataset: posterior mean/log-variance files with sidecars, resume by re-running, rank splitting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maisi.config import VAEConfig
from maisi.data.datalist import read_datalist, write_datalist
from maisi.data.encode import INDEX_NAME, encode_dataset, latent_name, load_latent
from maisi.data.intensity import ct_to_unit, mri_to_unit
from maisi.data.nifti import save_nifti
from maisi.errors import DataError
from maisi.latents import LatentCodec
from maisi.networks import build_vae

TEST_VAE = VAEConfig(num_channels=(4, 8, 8), num_res_blocks=(1, 1, 1), norm_num_groups=4, num_splits=1)
SPACING = (1.5, 1.5, 2.0)
CHEST = [0, 1, 0, 0]
ABDOMEN = [0, 0, 1, 0]


@pytest.fixture(scope="module")
def codec():
    torch.manual_seed(0)
    return LatentCodec(vae=build_vae(TEST_VAE), scale_factor=1.3, encode_window=(32, 32, 32))


def _ct(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.uniform(-1200.0, 1500.0, size=shape).astype(np.float32)


@pytest.fixture
def dataset(tmp_path):
    """Three CT cases (one with a label and region indices) in a MAISI datalist."""
    rng = np.random.default_rng(0)
    affine = np.diag([*SPACING, 1.0])
    entries = []
    for i, shape in enumerate([(32, 24, 16), (16, 16, 20), (24, 16, 16)]):
        image = save_nifti(tmp_path / "data" / f"case{i}_image.nii.gz", _ct(rng, shape), affine)
        entries.append({"image": str(image)})
    label = save_nifti(tmp_path / "data" / "case0_label.nii.gz", np.ones((32, 24, 16), np.uint8), affine)
    entries[0].update(label=str(label), top_region_index=CHEST, bottom_region_index=ABDOMEN)
    return write_datalist(tmp_path / "data" / "datalist.json", entries), tmp_path / "latents"


def _count_calls(codec, monkeypatch) -> list:
    calls = []
    original = codec.encode_posterior

    def counting(image, **kw):
        calls.append(tuple(image.shape))
        return original(image, **kw)

    monkeypatch.setattr(codec, "encode_posterior", counting)
    return calls


def test_writes_posterior_sidecar_and_index(codec, dataset):
    datalist, out = dataset
    paths = encode_dataset(datalist=datalist, codec=codec, output_dir=out, progress=False)
    assert [p.name for p in paths] == [f"case{i}_latent.safetensors" for i in range(3)]

    entry = read_datalist(datalist)[0]
    from maisi.data.nifti import load_nifti

    unit = torch.from_numpy(ct_to_unit(load_nifti(entry["image"]).array))[None, None]
    expected_mean, expected_logvar = codec.encode_posterior(unit)
    mean, logvar, meta = load_latent(paths[0])
    assert mean.shape == logvar.shape == (4, 8, 6, 4)
    # the posterior mean and log-variance, not a sample
    assert torch.equal(mean, expected_mean[0]) and torch.equal(logvar, expected_logvar[0])
    assert meta["format"] == "maisi-latent-v1" and meta["scaled"] == "false" and meta["modality"] == "ct"

    sidecar = json.loads((out / "case0_latent.json").read_text())
    assert sidecar["dim"] == [32, 24, 16] and sidecar["spacing"] == list(SPACING)
    assert sidecar["latent_shape"] == [4, 8, 6, 4]
    assert sidecar["top_region_index"] == CHEST and sidecar["bottom_region_index"] == ABDOMEN
    assert sidecar["modality"] == "ct"
    assert sidecar["intensity"] == {"kind": "ct", "min_hu": -1000.0, "max_hu": 1000.0}
    assert sidecar["image"] == entry["image"] and sidecar["label"] == entry["label"]
    assert "top_region_index" not in json.loads((out / "case1_latent.json").read_text())

    index = read_datalist(out / INDEX_NAME)
    assert [e["latent"] for e in index] == [p.name for p in paths]
    assert index[2]["dim"] == [24, 16, 16] and index[2]["latent_shape"] == [4, 6, 4, 4]
    assert index[0]["image"] == entry["image"] and index[0]["scale_factor"] == pytest.approx(1.3)
    assert not list(out.glob("*.tmp*"))


def test_rerun_skips_complete_entries(codec, dataset, monkeypatch):
    datalist, out = dataset
    encode_dataset(datalist=datalist, codec=codec, output_dir=out, progress=False)
    before = (out / "case2_latent.safetensors").stat().st_mtime_ns
    (out / "case1_latent.json").unlink()  # an interrupted entry: latent written, sidecar not
    calls = _count_calls(codec, monkeypatch)
    encode_dataset(datalist=datalist, codec=codec, output_dir=out, progress=False)
    assert calls == [(1, 1, 16, 16, 20)]
    assert (out / "case1_latent.json").is_file()
    assert (out / "case2_latent.safetensors").stat().st_mtime_ns == before
    encode_dataset(datalist=datalist, codec=codec, output_dir=out, progress=False, overwrite=True)
    assert len(calls) == 4


def test_ranks_split_entries(codec, dataset, monkeypatch):
    datalist, out = dataset
    calls = _count_calls(codec, monkeypatch)
    run = dict(datalist=datalist, codec=codec, output_dir=out, progress=False)
    paths = encode_dataset(**run, rank=1, world_size=2)
    assert [p.name for p in paths] == ["case1_latent.safetensors"]
    assert calls == [(1, 1, 16, 16, 20)] and not (out / INDEX_NAME).exists()  # only rank 0 writes the index
    with pytest.warns(UserWarning, match="1 entries are not encoded yet"):
        encode_dataset(**run, rank=0, world_size=3)
    assert len(read_datalist(out / INDEX_NAME)) == 2  # case0 (rank 0 of 3) and case1; case2 belongs to rank 2
    paths = encode_dataset(**run, rank=0, world_size=2)
    assert [p.name for p in paths] == ["case0_latent.safetensors", "case2_latent.safetensors"]
    assert len(calls) == 3 and len(read_datalist(out / INDEX_NAME)) == 3
    with pytest.raises(ValueError, match="rank"):
        encode_dataset(datalist=datalist, codec=codec, output_dir=out, rank=2, world_size=2)


def test_mri_uses_percentile_scaling(codec, tmp_path):
    rng = np.random.default_rng(1)
    array = rng.gamma(2.0, 150.0, size=(16, 16, 16)).astype(np.float32)
    image = save_nifti(tmp_path / "mr.nii.gz", array, np.eye(4))
    datalist = write_datalist(tmp_path / "datalist.json", [{"image": str(image), "modality": "mri_t1"}])
    (path,) = encode_dataset(datalist=datalist, codec=codec, output_dir=tmp_path / "out", progress=False)
    unit, (low, high) = mri_to_unit(array)
    assert unit.max() > 1.0  # the official MR transform does not clip: the brightest 0.5 % stay above 1
    expected, _ = codec.encode_posterior(torch.from_numpy(unit)[None, None])
    assert torch.equal(load_latent(path)[0], expected[0])
    sidecar = json.loads((tmp_path / "out" / "mr_latent.json").read_text())
    assert sidecar["modality"] == "mri_t1" and sidecar["intensity"]["kind"] == "mri"
    assert sidecar["intensity"]["low"] == pytest.approx(low)
    assert sidecar["intensity"]["high"] == pytest.approx(high)


def test_errors_name_the_file(codec, tmp_path):
    odd = save_nifti(tmp_path / "odd.nii.gz", np.zeros((16, 18, 16), np.float32), np.eye(4))
    datalist = write_datalist(tmp_path / "odd.json", [{"image": str(odd)}])
    with pytest.raises(DataError, match=r"odd\.nii\.gz: image size \(16, 18, 16\) is not a multiple"):
        encode_dataset(datalist=datalist, codec=codec, output_dir=tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="modality 'pet' has no intensity mapping"):
        encode_dataset(datalist=datalist, codec=codec, output_dir=tmp_path / "out", modality="pet")
    twin = save_nifti(tmp_path / "sub" / "odd_image.nii.gz", np.zeros((16, 16, 16), np.float32), np.eye(4))
    datalist = write_datalist(tmp_path / "twins.json", [{"image": str(odd)}, {"image": str(twin)}])
    with pytest.raises(DataError, match="both map to latent 'odd'"):
        encode_dataset(datalist=datalist, codec=codec, output_dir=tmp_path / "out", progress=False)
    junk = tmp_path / "junk_latent.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a maisi latent file"):
        load_latent(junk)


def test_latent_name():
    assert latent_name("/a/b/case7_image.nii.gz") == "case7"
    assert latent_name("scan.nii") == "scan"
    assert latent_name("_image.nii.gz") == "_image"
