"""Dice with known answers, consistency over a pairs folder, and the small segmenter (train, save, load, run)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maisi.data.nifti import Volume, save_nifti
from maisi.errors import CheckpointError, ConfigError, DataError
from maisi.evaluation.consistency import dice, dice_per_group, dice_per_label, evaluate_consistency
from maisi.evaluation.segmenter import Segmenter
from maisi.training.tasks.segmenter import train_segmenter

AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
TINY_NET = {
    "name": "UNet",
    "kwargs": {"spatial_dims": 3, "in_channels": 1, "channels": [4, 8], "strides": [2], "num_res_units": 0},
}


def cube(shape=(24, 24, 24), corner=(4, 4, 4), size=10, value=1):
    m = np.zeros(shape, dtype=np.uint8)
    x, y, z = corner
    m[x : x + size, y : y + size, z : z + size] = value
    return m


def test_dice_of_a_mask_with_itself_is_one():
    m = cube()
    assert dice(m, m) == 1.0
    assert dice_per_label(m * 5, m * 5) == {5: 1.0}


def test_dice_of_a_shifted_cube_has_the_exact_value():
    a = cube(corner=(4, 4, 4))
    b = cube(corner=(6, 4, 4))  # 10^3 cube moved 2 voxels: overlap 8 x 10 x 10
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)  # 0.8
    c = cube(corner=(6, 7, 4))  # moved 2 and 3 voxels: overlap 8 x 7 x 10
    assert dice(a, c) == pytest.approx(2 * 560 / 2000)
    assert dice(a, np.zeros_like(a)) == 0.0
    assert np.isnan(dice(np.zeros_like(a), np.zeros_like(a)))


def test_dice_per_label_and_group():
    ref = cube(corner=(2, 2, 2), size=6, value=1) + cube(corner=(12, 12, 12), size=6, value=3)
    pred = ref.copy()
    pred[pred == 3] = 0
    pred += cube(corner=(14, 12, 12), size=6, value=3)  # spleen shifted by 2: overlap 4 x 6 x 6
    assert dice_per_label(pred, ref) == {1: 1.0, 3: pytest.approx(2 * 144 / 432)}
    assert dice_per_label(pred, ref, label_ids=[1, 7]) == {1: 1.0}  # 7 absent in both: skipped
    groups = dice_per_group(pred, ref)
    assert groups == {"liver": 1.0, "spleen": pytest.approx(2 * 144 / 432)}


def _write_cases(folder, n, organs, shape=(24, 24, 24)):
    """``n`` pairs of a body (0 HU) in air (-1000 HU) holding cubes: ``organs`` is ``[(id, corner(i), size, HU)]``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = cube(shape, corner=(2, 2, 2), size=20, value=200)
        image = np.full(shape, -1000.0, np.float32)
        image[label == 200] = 0.0
        for organ, corner, size, hu in organs:
            inside = cube(shape, corner=corner(i), size=size) > 0
            label[inside], image[inside] = organ, hu
        save_nifti(folder / f"s{i}_image.nii.gz", image, AFFINE)
        save_nifti(folder / f"s{i}_label.nii.gz", label, AFFINE)
        # the sidecar of a maisi-made sample: its label map holds MAISI ids
        (folder / f"s{i}.json").write_text(json.dumps({"index": i, "output": {"label_ids": "MAISI"}}))
    return folder


def write_pairs(folder, n=2):
    """Pairs with a liver cube (60 HU) and a spleen cube (120 HU)."""
    return _write_cases(
        folder, n, [(1, lambda i: (4 + i, 4, 4), 8, 60.0), (3, lambda i: (13, 13, 12 - i), 6, 120.0)]
    )


def test_consistency_with_a_known_segmenter(tmp_path):
    pairs = write_pairs(tmp_path / "gen")

    def shifted(volume: Volume) -> np.ndarray:
        # a "segmenter" that labels the organs by intensity, one voxel off along X
        label = np.zeros(volume.shape, np.uint8)
        label[volume.array == 60.0] = 1
        label[volume.array == 120.0] = 3
        return np.roll(label, 1, axis=0)

    shifted.labels = (1, 3)
    r = evaluate_consistency(pairs, shifted, out=tmp_path / "c.json")
    assert [c["name"] for c in r["cases"]] == ["s0", "s1"]
    # 8^3 cube moved by 1: overlap 7 x 8 x 8; 6^3 cube: 5 x 6 x 6
    assert r["labels"]["1"]["mean"] == pytest.approx(2 * 448 / 1024)
    assert r["labels"]["3"]["mean"] == pytest.approx(2 * 180 / 432)
    assert r["mean_dice"] == pytest.approx((2 * 448 / 1024 + 2 * 180 / 432) / 2)
    assert "200" not in r["labels"]  # the body envelope is not scored
    assert json.loads((tmp_path / "c.json").read_text())["mean_dice"] == pytest.approx(r["mean_dice"])


def test_train_segmenter_save_load_and_evaluate(tmp_path, capsys):
    """The segmenter trains in the generic loop (a ``segmenter`` component of the run's model set), loads from its
    folder or its run folder, segments, and a second run of the same seed gives the same weights."""
    pairs = write_pairs(tmp_path / "train")
    folder = train_segmenter(
        pairs, tmp_path / "run", steps=2, seed=3, roi_size=(16, 16, 16), network=TINY_NET
    )
    assert folder == tmp_path / "run" / "model" / "segmenter"
    config = Segmenter.load(folder).config
    assert config.labels == (1, 3) and config.spacing == (4.0, 4.0, 4.0) and config.roi_size == (16, 16, 16)
    final = (tmp_path / "run" / "final.txt").read_text().split()
    assert final[:2] == ["final:", "step=2"] and np.isfinite(float(final[2].split("=")[1]))
    seg = Segmenter.load(tmp_path / "run")  # a run folder resolves to its model/segmenter/
    from maisi.data.nifti import load_nifti

    out = seg(load_nifti(pairs / "s0_image.nii.gz"))
    assert out.shape == (24, 24, 24) and out.dtype == np.uint8
    assert set(np.unique(out)) <= {0, 1, 3}
    r = evaluate_consistency(pairs, tmp_path / "run")
    assert set(r["labels"]) == {"1", "3"} and 0.0 <= r["mean_dice"] <= 1.0
    # same seed, same weights
    again = train_segmenter(  # the progress bar changes nothing but stderr
        pairs, tmp_path / "run2", steps=2, seed=3, roi_size=(16, 16, 16), network=TINY_NET, progress=True
    )
    a, b = Segmenter.load(folder).model.state_dict(), Segmenter.load(again).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "train segmenter" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="already holds a segmenter"):
        train_segmenter(pairs, tmp_path / "run", steps=1, roi_size=(16, 16, 16), network=TINY_NET)


def test_interrupted_segmenter_training_resumes_to_the_same_weights(tmp_path):
    """A run stopped after its step-2 checkpoint and re-run to 4 steps equals an uninterrupted 4-step run (the
    resume the generic loop gives every task)."""
    pairs = write_pairs(tmp_path / "train")
    kw = dict(seed=1, roi_size=(16, 16, 16), network=TINY_NET)
    whole = train_segmenter(pairs, tmp_path / "whole", steps=4, **kw)
    train_segmenter(pairs, tmp_path / "part", steps=2, **kw)
    import shutil

    shutil.rmtree(tmp_path / "part" / "model")  # keep the checkpoint only, as after an interruption
    resumed = train_segmenter(pairs, tmp_path / "part", steps=4, **kw)
    a, b = Segmenter.load(whole).model.state_dict(), Segmenter.load(resumed).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    first = train_segmenter(pairs, tmp_path / "other", steps=2, **{**kw, "seed": 2})
    c = Segmenter.load(first).model.state_dict()
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters


@pytest.mark.slow
def test_segmenter_learns_an_intensity_task(tmp_path):
    pairs = write_pairs(tmp_path / "train", n=2)
    # 400 steps: trained by the generic loop since dc2978c, the tiny net reaches Dice 0.79 / 0.86 at 200 steps
    # and 0.91 / 0.91 at 400
    folder = train_segmenter(
        pairs, tmp_path / "run", steps=400, seed=0, roi_size=(16, 16, 16), lr=1e-2, network=TINY_NET
    )
    r = evaluate_consistency(pairs, folder)
    assert r["labels"]["1"]["mean"] > 0.85 and r["labels"]["3"]["mean"] > 0.85


def test_segmenter_config_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a segmenter folder"):
        Segmenter.load(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"format": "maisi-segmenter", "labels": [1], "network": {"name": "os.system"}})
    )
    with pytest.raises(ConfigError, match="not a class of monai.networks.nets"):
        Segmenter.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "maisi-segmenter", "labels": [999]}))
    with pytest.raises(DataError, match=r"config\.json: label ids not in the MAISI vocabulary: \[999\]"):
        Segmenter.load(tmp_path)


def write_kidney_pairs(folder, n=2):
    """Pairs with a liver cube (60 HU) and two kidney cubes (right 5, left 14; both 150 HU)."""
    return _write_cases(
        folder,
        n,
        [
            (1, lambda i: (4 + i, 4, 4), 8, 60.0),
            (5, lambda i: (14, 4, 14), 5, 150.0),
            (14, lambda i: (14, 14, 14 - i), 5, 150.0),
        ],
    )


def test_consistency_of_a_group_segmenter_is_scored_per_group(tmp_path):
    pairs = write_kidney_pairs(tmp_path / "gen")

    def grouped(volume: Volume) -> np.ndarray:
        # both kidneys come out as the group's first id (5); the liver is one voxel off along X
        label = np.zeros(volume.shape, np.uint8)
        label[volume.array == 150.0] = 5
        label[np.roll(volume.array == 60.0, 1, axis=0)] = 1
        return label

    grouped.labels = (1, 5)
    grouped.groups = {"liver": (1,), "kidneys": (5, 14)}
    r = evaluate_consistency(pairs, grouped)
    assert r["labels"] == {} and r["mean_dice"] is None  # no per-id scores: 14 is never output
    assert r["groups"]["kidneys"]["mean"] == pytest.approx(1.0)
    assert r["groups"]["liver"]["mean"] == pytest.approx(2 * 448 / 1024)
    assert r["group_mean_dice"] == pytest.approx((1.0 + 2 * 448 / 1024) / 2)
    plain = evaluate_consistency(pairs, lambda v: grouped(v))  # an id segmenter: kidney 14 scored 0
    assert plain["labels"]["14"]["mean"] == 0.0 and plain["groups"]["kidneys"]["mean"] == pytest.approx(1.0)


def test_train_segmenter_on_groups(tmp_path):
    pairs = write_kidney_pairs(tmp_path / "train")
    groups = {"liver": [1], "kidneys": [5, 14]}
    folder = train_segmenter(
        pairs, tmp_path / "run", steps=2, seed=0, roi_size=(16, 16, 16), network=TINY_NET, groups=groups
    )
    seg = Segmenter.load(folder)
    assert seg.labels == (1, 5) and seg.groups == {"liver": (1,), "kidneys": (5, 14)}
    assert seg.model.out_channels == 3  # background + two groups
    r = evaluate_consistency(pairs, folder)
    assert set(r["groups"]) == {"liver", "kidneys"} and r["labels"] == {}
    with pytest.raises(ConfigError, match="labels or groups"):
        train_segmenter(pairs, tmp_path / "x", steps=1, labels=[1], groups=groups)
    with pytest.raises(ConfigError, match="id 5 is in two groups, 'kidneys' and 'left'"):
        train_segmenter(pairs, tmp_path / "x", steps=1, groups={"kidneys": [5, 14], "left": [5]})


def test_hand_written_segmenter_folder(tmp_path):
    """A ``maisi-segmenter`` folder written by hand for another MONAI network: loaded strictly; its groups must
    list the output labels first."""
    from safetensors.torch import save_file

    from maisi.config.schema import SegmenterConfig
    from maisi.networks.builders import build_segmenter

    net = build_segmenter(SegmenterConfig(network_kwargs=TINY_NET["kwargs"], labels=(1, 5)))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    raw = {
        "format": "maisi-segmenter",
        "network": TINY_NET,
        "labels": [1, 5],
        "groups": {"liver": [1], "kidneys": [5, 14]},
        "roi_size": [16, 16, 16],
        "weights": "weights.safetensors",
    }
    (tmp_path / "config.json").write_text(json.dumps(raw))
    seg = Segmenter.load(tmp_path)
    assert seg.groups == {"liver": (1,), "kidneys": (5, 14)} and seg.config.roi_size == (16, 16, 16)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in seg.model.state_dict().items())
    raw["groups"] = {"kidneys": [14, 5], "liver": [1]}  # first ids must be the output labels, in order
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="'groups' must map"):
        Segmenter.load(tmp_path)
