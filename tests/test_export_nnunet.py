"""nnU-Net v2 export: layout and dataset.json, label renumbering, appending, concurrent writers, bad requests.

The default selection checks the layout with nnU-Net's rules written out here; the slow test runs nnU-Net's own
``verify_dataset_integrity`` (``pip install maisi[nnunet]``).
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maisi import labels
from maisi.errors import DataError, RequestError
from maisi.export import Sample, export_run, open_exporter, read_run
from maisi.export.nnunet import NnunetDataset
from test_export_common import IDS, affine_of, sample_arrays, sidecar_of, tree, write_run


def _export(run, out, **kwargs):
    return export_run(
        run, "nnunet", output=out, **{"dataset_id": 501, "dataset_name": "SynthLiver", **kwargs}
    )


def check_nnunet_layout(folder: Path) -> dict:
    """What nnU-Net v2 checks of a raw dataset: keys, consecutive labels, one image per case and channel, the
    label files' values within the labels, numTraining, image and label on the same grid."""
    meta = json.loads((folder / "dataset.json").read_text())
    assert {"channel_names", "labels", "numTraining", "file_ending"} <= set(meta)
    assert (
        sorted(meta["labels"].values()) == list(range(len(meta["labels"])))
        and meta["labels"]["background"] == 0
    )
    ending = meta["file_ending"]
    cases = sorted(p.name[: -len(ending)] for p in (folder / "labelsTr").iterdir())
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    assert images == [f"{c}_0000{ending}" for c in cases] and len(cases) == meta["numTraining"]
    for case in cases:
        label = nib.load(folder / "labelsTr" / f"{case}{ending}")
        image = nib.load(folder / "imagesTr" / f"{case}_0000{ending}")
        assert set(np.unique(np.asarray(label.dataobj))) <= set(meta["labels"].values())
        assert image.shape == label.shape and np.allclose(image.affine, label.affine)
    return meta


def test_run_exports_as_nnunet_dataset_with_the_whole_vocabulary(tmp_path):
    run = write_run(tmp_path / "run")
    summary = _export(run, tmp_path / "raw")
    folder = tmp_path / "raw" / "Dataset501_SynthLiver"
    assert summary == {
        "format": "nnunet",
        "path": str(folder),
        "numTraining": 3,
        "labels": 125,
        "added": 3,
        "skipped": 0,
    }
    meta = check_nnunet_layout(folder)
    assert meta["channel_names"] == {"0": "CT"} and meta["file_ending"] == ".nii.gz"
    assert meta["labels"]["liver"] == 1 and meta["labels"]["spleen"] == 2 and meta["labels"]["body"] == 125
    assert meta["maisi_label_ids"]["spleen"] == 3 and meta["maisi_label_ids"]["body"] == 200
    assert "dummy1" not in meta["labels"] and sorted(meta["maisi_cases"]) == [
        "case_0000",
        "case_0001",
        "case_0002",
    ]
    # the image is the run's file byte for byte; the label is renumbered voxel for voxel
    assert (folder / "imagesTr/case_0001_0000.nii.gz").read_bytes() == (
        run / "sample_00001_image.nii.gz"
    ).read_bytes()
    label = np.asarray(nib.load(folder / "labelsTr/case_0001.nii.gz").dataobj)
    source = sample_arrays(1)[1]
    for maisi_id in IDS:
        assert np.all(label[source == maisi_id] == meta["labels"][labels.name_of(maisi_id)])


def test_keep_only_renumbers_consecutively_and_records_maisi_ids(tmp_path):
    run = write_run(tmp_path / "run")
    _export(run, tmp_path / "raw", keep_only=["hepatic tumor", "Liver"])
    folder = tmp_path / "raw" / "Dataset501_SynthLiver"
    meta = check_nnunet_layout(folder)
    assert meta["labels"] == {"background": 0, "liver": 1, "hepatic tumor": 2}
    assert meta["maisi_label_ids"] == {"background": 0, "liver": 1, "hepatic tumor": 26}
    label = np.asarray(nib.load(folder / "labelsTr/case_0000.nii.gz").dataobj)
    source = sample_arrays(0)[1]
    assert np.array_equal(label, np.select([source == 1, source == 26], [1, 2], 0))


def test_the_runs_own_keep_only_is_the_default_label_set(tmp_path):
    run = write_run(tmp_path / "run", keep_only=["spleen", "liver"])
    _export(run, tmp_path / "raw")
    meta = json.loads((tmp_path / "raw/Dataset501_SynthLiver/dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}


def test_rerun_skips_and_a_second_run_appends_with_its_first_case(tmp_path):
    _export(write_run(tmp_path / "a"), tmp_path / "raw")
    folder = tmp_path / "raw" / "Dataset501_SynthLiver"
    before = tree(folder)
    assert _export(tmp_path / "a", tmp_path / "raw")["skipped"] == 3 and tree(folder) == before
    second = write_run(tmp_path / "b", 2, run="run-b")
    with pytest.raises(
        RequestError, match=r"case_0000 already holds sample 0 of another run; .* first case 3"
    ):
        _export(second, tmp_path / "raw")
    assert tree(folder) == before
    assert _export(second, tmp_path / "raw", first_case=3)["numTraining"] == 5
    meta = check_nnunet_layout(folder)
    assert meta["maisi_cases"]["case_0004"] == {"sample": 1, "seed": 7, "key": "run-b-7-1"}


def test_samples_added_one_at_a_time_from_arrays(tmp_path):
    dataset = open_exporter("nnunet", tmp_path, dataset_id=7, dataset_name="Synth-1", keep_only=["liver"])
    for index in (4, 2):
        image, label = sample_arrays(index)
        paths = dataset.add(Sample.from_arrays(image, label, affine_of(), sidecar_of(index)))
    assert paths["label"] == tmp_path / "Dataset007_Synth-1/labelsTr/case_0002.nii.gz"
    check_nnunet_layout(tmp_path / "Dataset007_Synth-1")
    image = nib.load(paths["image"])
    assert image.get_data_dtype() == np.int16 and np.allclose(image.affine, affine_of())
    assert np.array_equal(np.asarray(image.dataobj), sample_arrays(2)[0])
    assert dataset.finish()["numTraining"] == 2


def _add_in_process(args):
    root, run, indices = args
    dataset = NnunetDataset(root, dataset_id=501, name="SynthLiver")
    samples = {s.index: s for s in read_run(run)}
    for index in indices:
        dataset.add(samples[index])


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method"
)
def test_concurrent_processes_add_to_one_dataset_without_losing_cases(tmp_path):
    run = write_run(tmp_path / "run", 8)
    jobs = [(tmp_path / "raw", run, [i, i + 4]) for i in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.map(_add_in_process, jobs)
    meta = check_nnunet_layout(tmp_path / "raw" / "Dataset501_SynthLiver")
    assert meta["numTraining"] == 8 and len(meta["maisi_cases"]) == 8
    assert not list((tmp_path / "raw" / "Dataset501_SynthLiver").rglob("*.tmp*"))


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"dataset_id": 0}, RequestError, "dataset id must be an integer in 1-999, got 0"),
        ({"dataset_id": 1000}, RequestError, "dataset id must be an integer in 1-999, got 1000"),
        ({"dataset_name": "Synth Liver"}, RequestError, "name 'Synth Liver' must be 1-100 letters, digits"),
        ({"dataset_name": "../up"}, RequestError, "name '../up' must be"),
        (
            {"keep_only": ["livr"]},
            RequestError,
            "keep_only: unknown anatomy name 'livr'; did you mean 'liver'",
        ),
        (
            {"keep_only": ["spleen"]},
            DataError,
            "existing dataset has a different label set .*requested but absent",
        ),
        ({"dataset_name": "Other"}, RequestError, "dataset id 501 is already used by Dataset501_SynthLiver"),
    ],
)
def test_bad_requests_fail_with_one_line_and_change_nothing(tmp_path, options, error, message):
    run = write_run(tmp_path / "run", 1)
    _export(run, tmp_path / "raw", keep_only=["liver"])
    before = tree(tmp_path)
    with pytest.raises(error, match=message) as info:
        _export(run, tmp_path / "raw", **options)
    assert "\n" not in str(info.value)
    assert tree(tmp_path) == before


def test_refuses_a_dataset_json_not_written_by_maisi(tmp_path):
    folder = tmp_path / "Dataset010_Real"
    folder.mkdir()
    (folder / "dataset.json").write_text(
        json.dumps({"labels": {"background": 0, "liver": 1}, "numTraining": 0})
    )
    with pytest.raises(DataError, match="not a dataset written by maisi"):
        NnunetDataset(tmp_path, dataset_id=10, name="Real")


@pytest.mark.slow
def test_nnunet_verify_dataset_integrity_accepts_the_export(tmp_path):
    pytest.importorskip("nnunetv2", reason="nnU-Net v2 not installed (pip install maisi[nnunet])")
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    run = write_run(tmp_path / "run", 3)
    _export(run, tmp_path / "raw")
    _export(
        run,
        tmp_path / "raw",
        dataset_id=502,
        dataset_name="SynthLiverTumor",
        keep_only=["liver", "hepatic tumor"],
    )
    for name in ("Dataset501_SynthLiver", "Dataset502_SynthLiverTumor"):
        verify_dataset_integrity(str(tmp_path / "raw" / name), num_processes=1)  # raises on any problem
