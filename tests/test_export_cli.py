"""``maisi export``: in-process for each outcome, once through a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

from maisi.cli import main
from test_export_common import tree, write_run


def test_export_nnunet_in_process(tmp_path, capsys):
    run = write_run(tmp_path / "run", 2)
    args = ["export", "nnunet", str(run), "--dataset-id", "501", "--dataset-name", "SynthLiver"]
    code = main([*args, "--output", str(tmp_path / "raw"), "--keep-only", "liver", "spleen"])
    assert code == 0
    folder = tmp_path / "raw" / "Dataset501_SynthLiver"
    assert capsys.readouterr().out.strip() == f"nnunet: {folder} (2 added, 0 already there; 2 training cases)"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2} and meta["numTraining"] == 2


def test_export_errors_are_one_line_with_exit_2_and_write_nothing(tmp_path, capsys):
    run = write_run(tmp_path / "run", 1)
    before = tree(tmp_path)
    cases = [
        (
            ["nnunet", str(run), "--dataset-id", "501", "--dataset-name", "Synth Liver"],
            "must be 1-100 letters",
        ),
        (["nnunet", str(run), "--dataset-id", "1000", "--dataset-name", "A"], "integer in 1-999, got 1000"),
        (["nnunet", str(run)], "needs a dataset id and name (--dataset-id, --dataset-name)"),
        (["monai", str(run), "--keep-only", "liver"], "keep-only: only for the nnunet format, not monai"),
        (["dicom", str(tmp_path / "missing")], "missing: run folder not found"),
    ]
    for args, message in cases:
        assert main(["export", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("maisi export: error: ") and message in err and err.count("\n") == 1, err
    assert tree(tmp_path) == before


def test_export_monai_as_a_subprocess(tmp_path):
    run = write_run(tmp_path / "run", 1)
    result = subprocess.run(
        [sys.executable, "-m", "maisi", "export", "monai", str(run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.strip()
        == f"monai: {run / 'datalist.json'} (1 added, 0 already there; 1 training cases)"
    )


def test_dicom_without_highdicom_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_highdicom(name, *args, **kwargs):
        if name == "highdicom":
            raise ImportError("no highdicom", name="highdicom")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_highdicom)
    run = write_run(tmp_path / "run", 1)
    assert main(["export", "dicom", str(run)]) == 2
    err = capsys.readouterr().err
    assert "highdicom missing" in err and "pip install 'maisi[dicom]'" in err
    assert not (run / "dicom").exists()
