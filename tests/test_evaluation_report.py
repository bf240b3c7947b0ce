"""The report renders from a folder of phantoms and a folder of generated pairs; ``maisi evaluate`` commands."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from maisi.cli import main
from maisi.data.nifti import load_nifti, save_nifti
from maisi.data.phantom import write_phantoms
from maisi.evaluation.report import SECTION_IDS, build_report


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Real: 2 phantoms. Generated: 2 pairs made in the test (a phantom with noise and one shifted phantom)
    with generation-style sidecars."""
    root = tmp_path_factory.mktemp("report")
    real = root / "real"
    write_phantoms(num=2, output_dir=real, size=(32, 32, 24), spacing=(8.0, 8.0, 8.0), seed=0)
    gen = root / "gen"
    gen.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        image = load_nifti(real / f"phantom_{i:04d}_image.nii.gz")
        label = load_nifti(real / f"phantom_{i:04d}_label.nii.gz", kind="label")
        synth = image.array + rng.normal(0, 30, image.shape).astype(np.float32)
        lab = label.array if i == 0 else np.roll(label.array, 2, axis=0)
        synth = synth if i == 0 else np.roll(synth, 2, axis=0)
        save_nifti(gen / f"sample_{i:05d}_image.nii.gz", synth, image.affine)
        save_nifti(gen / f"sample_{i:05d}_label.nii.gz", lab, label.affine)
        liver_ml = float((lab == 1).sum()) * 0.512
        sidecar = {
            "index": i,
            "output": {"label_ids": "MAISI"},
            "organ_sizes": {"liver": {"requested": 0.3 + 0.4 * i, "requested_ml": liver_ml * 1.1}},
        }
        (gen / f"sample_{i:05d}.json").write_text(json.dumps(sidecar))
    return real, gen, root


def test_report_renders_every_section(folders):
    real, gen, root = folders
    out = root / "eval"
    written = build_report(out, real=real, synthetic=gen, examples=2)
    for name in (
        "html",
        "markdown",
        "fid_planes.png",
        "qc_pass_rate.png",
        "size_scatter.png",
        "memorization_hist.png",
        "examples.png",
    ):
        assert written[name].is_file() and written[name].stat().st_size > 200, name
    html = written["html"].read_text()
    for section in SECTION_IDS:
        assert f"<section id='{section}'>" in html, section
    # self-contained: every figure is embedded, nothing is linked
    assert html.count("src='data:image/png;base64,") == 5 and "report_files/" not in html
    assert "Not computed. Run: maisi evaluate recon" in html  # no weights given
    assert "Not computed. Run: maisi evaluate consistency" in html  # no segmenter given
    md = written["markdown"].read_text()
    for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    # results were saved beside the report and hold real numbers
    fid = json.loads((out / "fid.json").read_text())
    assert fid["fid_2p5d"] > 0 and fid["n_real"] == fid["n_synthetic"] == 2
    mem = json.loads((out / "memorization.json").read_text())
    assert {c["name"]: c["nearest"] for c in mem["cases"]} == {
        "sample_00000": "phantom_0000",
        "sample_00001": "phantom_0001",
    }
    size = json.loads((out / "size.json").read_text())
    assert size["anatomy"]["liver"]["relative_error"]["mean"] == pytest.approx(1 / 1.1 - 1, abs=1e-3)
    qc = json.loads((out / "qc.json").read_text())
    # phantom HU with 30 HU noise: every organ median inside the official range (liver ~96 HU, lung ~-869 HU)
    assert qc["n_checked"] == 2 and qc["pass_rate"] == 1.0
    assert qc["organs"]["liver"]["median_hu"]["mean"] == pytest.approx(95.5, abs=3)
    assert qc["organs"]["lung"]["median_hu"]["mean"] == pytest.approx(-868.5, abs=5)
    # re-rendering reuses the saved results and refuses to overwrite the report unless asked
    from maisi.io import OutputExistsError

    with pytest.raises(OutputExistsError):
        build_report(out, real=real, synthetic=gen, compute=False)
    again = build_report(out, real=real, synthetic=gen, compute=False, overwrite=True)
    assert again["html"].read_text().count("<section id=") == len(SECTION_IDS)


def test_cli_commands_in_process(folders, capsys):
    real, gen, root = folders
    out = root / "cli"
    assert main(["evaluate", "qc", "--pairs", str(gen), "--out", str(out / "qc.json")]) == 0
    assert json.loads((out / "qc.json").read_text())["n"] == 2
    assert json.loads(capsys.readouterr().out)["n_checked"] == 2
    assert main(["evaluate", "size", "--pairs", str(gen)]) == 0
    assert "liver" in json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "evaluate",
                "fid",
                "--real",
                str(real),
                "--synthetic",
                str(real),
                "--center-slice-ratio",
                "0.5",
                "--out",
                str(out / "fid.json"),
            ]
        )
        == 0
    )
    fid = json.loads((out / "fid.json").read_text())
    assert fid["fid_2p5d"] < 1e-9 and fid["options"]["center_slice_ratio"] == 0.5
    assert fid["n_slices"]["real"]["axial"] == 2 * 12
    capsys.readouterr()
    args = ["evaluate", "fid", "--real", str(real), "--synthetic", str(gen), "--slice-step", "3", "--dry-run"]
    assert main(args) == 0  # the dry run prints the typed config: evaluate.* and evaluate.fid.*
    printed = json.loads(capsys.readouterr().out)["evaluate"]
    assert printed["what"] == "fid" and printed["real"] == str(real) and printed["synthetic"] == str(gen)
    assert printed["fid"]["extractor"] == "random" and printed["fid"]["slice_step"] == 3
    assert (
        main(
            [
                "evaluate",
                "report",
                str(out / "rep"),
                "--real",
                str(real),
                "--synthetic",
                str(gen),
                "--no-compute",
                "--examples",
                "1",
            ]
        )
        == 0
    )
    assert (out / "rep" / "report.html").is_file()


def test_cli_errors_are_one_line(folders, capsys, tmp_path):
    real, gen, root = folders
    assert main(["evaluate", "qc", "--pairs", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing" in err[0] and err[0].startswith("maisi evaluate: error:")
    assert (
        main(["evaluate", "fid", "--real", str(real), "--synthetic", str(gen), "--extractor", "radimagenet"])
        == 2
    )
    assert "--extractor-weights" in capsys.readouterr().err


def test_cli_subprocess_memorization(folders):
    real, gen, root = folders
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "maisi",
            "evaluate",
            "memorization",
            "--synthetic",
            str(real),
            "--training",
            str(real),
            "--grid",
            "8",
            "8",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_flagged"] == 2  # each phantom is its own nearest copy


def test_cli_train_segmenter_then_consistency(folders, capsys):
    real, gen, root = folders
    run = root / "segrun"
    args = ["evaluate", "train-segmenter", "--data", str(real), "--run-dir", str(run), "--steps", "1"]
    assert main([*args, "--roi-size", "16", "16", "16", "--labels", "1", "3"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[0].startswith("final: step=1 val_loss=")  # the generic training loop's last line
    assert printed[-1] == f"segmenter: {run / 'model' / 'segmenter'}"
    args = ["evaluate", "consistency", "--pairs", str(gen), "--segmenter", str(run), "--out", str(root / "c.json")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    full = json.loads((root / "c.json").read_text())
    assert set(out["labels"]) == {"liver", "spleen"} and set(full["labels"]) == {"1", "3"}
    # the printed summary is the result: per label the mean over the 2 pairs, and their mean
    assert out["labels"]["liver"] == pytest.approx(np.mean([c["dice"]["1"] for c in full["cases"]]))
    assert out["mean_dice"] == pytest.approx(np.mean(list(out["labels"].values()))) == full["mean_dice"]


def test_cli_train_group_segmenter(folders, capsys):
    real, gen, root = folders
    run = root / "grouprun"
    args = ["evaluate", "train-segmenter", "--data", str(real), "--run-dir", str(run), "--steps", "1"]
    assert main([*args, "--roi-size", "16", "16", "16", "--groups", "large-organs"]) == 0
    capsys.readouterr()
    assert main(["evaluate", "consistency", "--pairs", str(gen), "--segmenter", str(run)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["labels"] == {} and set(out["groups"]) == {"liver", "spleen", "kidneys", "lungs", "vertebrae"}
    assert out["group_mean_dice"] == pytest.approx(np.mean(list(out["groups"].values())))


def test_report_shows_every_size_sweep_beside_it(folders):
    """``size_<name>.json`` files (one per mask source of a size sweep) each get rows, a per-request table in
    request order and their own scatter plot."""
    from maisi.evaluation.size import evaluate_size

    _, gen, root = folders
    out = root / "eval_sweeps"
    out.mkdir()
    evaluate_size(gen, out=out / "size_sweep.json")
    written = build_report(out, synthetic=gen, compute=False, examples=0)
    md = written["markdown"].read_text()
    assert "| sweep | liver | 2 |" in md
    rows = re.findall(r"^\| sweep \| liver \| (0\.\d+) \| ([\d.]+) \| ([\d.]+) \|$", md, flags=re.M)
    assert [float(r[0]) for r in rows] == [0.3, 0.7]
    for requested, realised in ((float(r[1]), float(r[2])) for r in rows):
        assert realised == pytest.approx(requested / 1.1, rel=1e-3)
    assert written["size_scatter_sweep.png"].stat().st_size > 200
    assert "mean Dice" not in md  # no consistency result: no empty summary rows
