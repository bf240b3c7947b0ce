"""MONAI datalist export: read by ``load_decathlon_datalist`` and a ``LoadImaged`` pipeline, and by maisi."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maisi.data.datalist import read_datalist
from maisi.errors import DataError, RequestError
from maisi.export import export_run
from test_export_common import SPACING, sample_arrays, tree, write_run


def test_datalist_loads_with_monai_and_a_loadimaged_pipeline(tmp_path):
    from monai.data import load_decathlon_datalist
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    run = write_run(tmp_path / "run")
    summary = export_run(run, "monai")
    assert summary == {
        "format": "monai",
        "path": str(run / "datalist.json"),
        "numTraining": 3,
        "labels": 4,
        "added": 3,
        "skipped": 0,
    }
    meta = json.loads((run / "datalist.json").read_text())
    assert meta["labels"] == {
        "0": "background",
        "1": "liver",
        "3": "spleen",
        "26": "hepatic tumor",
        "200": "body",
    }
    assert (
        meta["training"][1]["spacing"] == list(SPACING)
        and meta["training"][1]["image"] == "sample_00001_image.nii.gz"
    )
    items = load_decathlon_datalist(
        str(run / "datalist.json"), is_segmentation=True, data_list_key="training"
    )
    load = Compose(
        [
            LoadImaged(keys=["image", "label"]),
            EnsureChannelFirstd(keys=["image", "label"]),
            Orientationd(keys=["image", "label"], axcodes="RAS"),
        ]
    )
    for index, item in enumerate(items):
        data = load(item)
        image, label = sample_arrays(index)
        assert np.array_equal(data["image"][0].numpy(), image) and np.array_equal(
            data["label"][0].numpy(), label
        )
        assert np.allclose(data["image"].pixdim.numpy(), SPACING)


def test_datalist_elsewhere_has_relative_paths_and_is_a_maisi_datalist(tmp_path):
    run = write_run(tmp_path / "run", 2)
    export_run(run, "monai", output=tmp_path / "lists")
    meta = json.loads((tmp_path / "lists/datalist.json").read_text())
    assert meta["training"][0]["label"] == "../run/sample_00000_label.nii.gz"
    entries = read_datalist(tmp_path / "lists/datalist.json")
    assert [e["image"] for e in entries] == [
        str((run / f"sample_0000{i}_image.nii.gz").resolve()) for i in (0, 1)
    ]
    assert entries[0]["modality"] == "ct" and entries[0]["dim"] == [24, 20, 12]


def test_rerun_skips_and_more_samples_append(tmp_path):
    run = write_run(tmp_path / "run", 2, unfinished=False)
    export_run(run, "monai")
    before = (run / "datalist.json").read_bytes()
    assert export_run(run, "monai")["skipped"] == 2 and (run / "datalist.json").read_bytes() == before
    write_run(run, 2, first=2)  # the run went on: samples 2 and 3
    summary = export_run(run, "monai")
    assert summary["added"] == 2 and summary["numTraining"] == 4


def test_monai_refuses_nnunet_options_and_foreign_datalists(tmp_path):
    run = write_run(tmp_path / "run", 1)
    before = tree(tmp_path)
    with pytest.raises(RequestError, match="keep-only: only for the nnunet format, not monai"):
        export_run(run, "monai", keep_only=["liver"])
    with pytest.raises(RequestError, match="dataset id: only for the nnunet format"):
        export_run(run, "monai", dataset_id=3)
    (run / "datalist.json").write_text(json.dumps({"training": []}))
    with pytest.raises(DataError, match="not a datalist written by maisi export"):
        export_run(run, "monai")
    assert tree(tmp_path) == {**before, "run/datalist.json": b'{"training": []}'}
