"""``maisi generate`` and ``maisi masks index`` as real subprocesses and in-process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from maisi import cli
from test_generation_common import DATA, session_weights


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return session_weights(tmp_path_factory)


def _maisi(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the micro networks are latency-bound
    return subprocess.run(
        [sys.executable, "-m", "maisi", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_generate_subprocess_writes_the_sample_set(weights, tmp_path):
    out = tmp_path / "out"
    proc = _maisi(
        "generate",
        "--preset",
        "tiny",
        "--weights",
        str(weights),
        "--output-size",
        "64",
        "64",
        "32",
        "--spacing",
        "3",
        "3",
        "3",
        "--mask-source",
        "phantom",
        "--body-region",
        "abdomen",
        "--steps",
        "2",
        "--seed",
        "3",
        "--no-qc",
        "--output-dir",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"sample 0: {out / 'sample_00000_image.nii.gz'}" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "sample_00000.json",
        "sample_00000_image.nii.gz",
        "sample_00000_label.nii.gz",
        "sample_00000_preview.png",
    ]
    img = nib.load(out / "sample_00000_image.nii.gz")
    assert (
        img.shape == (64, 64, 32) and img.get_data_dtype() == np.int16 and img.header.get_zooms() == (3, 3, 3)
    )
    meta = json.loads((out / "sample_00000.json").read_text())
    assert meta["seed"] == 3 and meta["request"]["steps"] == 2 and meta["qc"]["enabled"] is False
    assert meta["mask"]["source"] == "phantom" and meta["warnings"][0].startswith(
        "in-plane field of view 192 x 192 mm"
    )


def test_masks_index_command(tmp_path, capsys):
    folder = tmp_path / "db"
    folder.mkdir()
    shutil.copy(DATA / "example_seg.nii.gz", folder / "case1.nii.gz")
    (folder / "notes.nii").write_text("not a volume")
    assert cli.main(["masks", "index", str(folder)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{folder / 'masks_index.json'}: 1 masks indexed, 1 skipped"
    assert out[1].startswith("  skipped notes.nii: ")
    index = json.loads((folder / "masks_index.json").read_text())
    assert index["masks"][0]["label_list"][:3] == [1, 3, 4] and index["masks"][0]["spacing"] == [
        3.0,
        3.0,
        3.0,
    ]
    assert cli.main(["masks", "index", str(folder)]) == 2  # never overwritten without --overwrite
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["masks", "index", str(folder), "--overwrite"]) == 0


def test_initial_noise_and_device_flags(capsys):
    argv = [
        "generate",
        "--preset",
        "tiny",
        "--initial-noise",
        "noise.npy",
        "--device",
        "cpu",
        "--dtype",
        "bfloat16",
        "--num-samples",
        "4",
        "--guidance",
        "1.5",
        "--keep-only",
        "liver",
        "--dry-run",
    ]
    assert cli.main(argv) == 0
    gen = json.loads(capsys.readouterr().out)["generate"]
    assert gen["initial_noise"] == "noise.npy" and gen["dtype"] == "bfloat16" and gen["num_samples"] == 4
    assert gen["guidance"] == 1.5 and gen["keep_only"] == ["liver"] and gen["device"] == "cpu"
