"""``maisi generate --format nnunet|monai``: each sample is added to the training set as it is written; a bad
dataset request fails before anything is made."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from maisi import cli
from test_generation_common import one_thread, session_weights  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return session_weights(tmp_path_factory)


def _args(weights, out):
    args = ["generate", "--preset", "tiny", "--weights", str(weights), "--output-dir", str(out)]
    args += ["--output-size", "64", "64", "32", "--spacing", "3", "3", "3", "--mask-source", "phantom"]
    return args + ["--body-region", "abdomen", "--steps", "1", "--no-qc", "--no-preview", "--num-samples", "2"]


def test_generate_writes_an_nnunet_dataset_as_it_goes(weights, tmp_path, capsys):
    raw = tmp_path / "raw"
    fmt = ["--format", "nnunet", "--export-dir", str(raw), "--dataset-id", "501", "--dataset-name", "Synth"]
    assert cli.main([*_args(weights, tmp_path / "out"), *fmt, "--keep-only", "liver", "spleen"]) == 0
    assert "nnunet: {" in capsys.readouterr().out
    ds = raw / "Dataset501_Synth"
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == 2 and meta["labels"] == {"background": 0, "liver": 1, "spleen": 2}
    for i in range(2):
        written = np.asarray(nib.load(tmp_path / "out" / f"sample_{i:05d}_label.nii.gz").dataobj)
        case = np.asarray(nib.load(ds / "labelsTr" / f"case_{i:04d}.nii.gz").dataobj)
        assert np.array_equal(case, np.select([written == 1, written == 3], [1, 2], 0))  # renumbered 1..K
        assert (ds / "imagesTr" / f"case_{i:04d}_0000.nii.gz").is_file()


@pytest.mark.parametrize(
    "fmt,message",
    [
        (["--format", "nnunet", "--dataset-id", "1000", "--dataset-name", "Synth"], "1000"),
        (["--format", "nnunet", "--dataset-id", "7", "--dataset-name", "has space"], "has space"),
        (["--format", "nnunet", "--dataset-name", "Synth"], "needs a dataset id and name"),
        (["--format", "monai", "--dataset-id", "7"], "dataset id: only for the nnunet format"),
    ],
)
def test_bad_dataset_requests_fail_before_any_sample(weights, tmp_path, capsys, fmt, message):
    assert cli.main([*_args(weights, tmp_path / "out"), *fmt, "--export-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
