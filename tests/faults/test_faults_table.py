"""Every refused input, config, checkpoint and output of issue #27 in one table: the command, the one-line message
it must print (exit 2, no traceback) and where the refusal must come. Afterwards no input has changed and nothing
was written; an output problem is refused before any network is loaded, in well under one sampling step.

``{H}`` is the folder of hostile inputs (conftest ``hostile``), ``{W}`` the micro weights, ``{W:name}`` a broken copy
of them (conftest ``broken_weights``: ``missing`` lacks the ControlNet, ``shapes`` holds a tensor of the wrong shape),
and ``{OUT}`` a fresh output path. The faults met during a run are in test_faults_runs.py, signals, concurrent runs
and ``kill -9`` in test_faults_signals.py.
"""

from __future__ import annotations

import re

import pytest
import torch
from faults_common import GENERATE, PHANTOM, error_message, no_samples, nothing_written, run_cli, snapshot

GEN = [*GENERATE, "--weights", "{W}", "--output-dir", "{OUT}"]
MASK = [*GEN, "--label-set", "maisi", "--mask"]
NOISE = [*GEN, *PHANTOM, "--initial-noise"]
PREPARE = ["prepare", "--output-dir", "{OUT}", "--label-set", "maisi"]
TRAIN = [
    "train",
    "vae",
    "--preset",
    "tiny",
    "--data",
    "{H}/phantoms",
    "--run-dir",
    "{OUT}",
    "--max-steps",
    "1",
]
ENCODE = ["encode", "--data", "{H}/datalist.json", "--weights", "{W}", "--output-dir", "{OUT}"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this torch has CUDA")

# when the refusal comes: "output" = an output problem, refused before any network is loaded and in well under one
# sampling step, nothing created; "input" = before any network is loaded, nothing created; "weights" = while loading
# the weights or at the first sample (no sample written; the folder may hold config.json and a sample lock)
CASES = [
    # --- inputs: broken, empty, foreign, wrong-dimensional, non-finite and hostile files
    (
        "truncated",
        [*MASK, "{H}/truncated.nii.gz"],
        "truncated.nii.gz: corrupt or truncated voxel data",
        "input",
    ),
    ("empty file", [*MASK, "{H}/empty.nii.gz"], "empty.nii.gz: not a readable NIfTI file", "input"),
    ("not NIfTI", [*MASK, "{H}/not_nifti.nii.gz"], "not_nifti.nii.gz: not a readable NIfTI file", "input"),
    ("2D", [*MASK, "{H}/two_d.nii.gz"], "two_d.nii.gz: expected a 3D volume, got shape (8, 8)", "input"),
    (
        "4D",
        [*MASK, "{H}/four_d.nii.gz"],
        "four_d.nii.gz: a 4-D stack of 3 volumes (8, 8, 8, 3), not a label map",
        "input",
    ),
    (
        "NaN CT",
        [*PREPARE, "--images", "{H}/nan_image.nii.gz", "--labels", "{H}/good_label.nii.gz"],
        "nan_image.nii.gz: 1 NaN/inf voxels",
        "input",
    ),
    (
        "non-integer labels",
        [*MASK, "{H}/float_label.nii.gz"],
        "float_label.nii.gz: label map has non-integer values (e.g. 0.5",
        "input",
    ),
    (
        "negative labels",
        [*MASK, "{H}/negative_label.nii.gz"],
        "negative_label.nii.gz: label map has negative ids (min -1)",
        "input",
    ),
    (
        "unknown label ids",
        [*GEN, "--mask", "{H}/unknown_ids.nii.gz"],
        "unknown_ids.nii.gz: ids [250] are in no built-in vocabulary",
        "input",
    ),
    (
        "singular affine",
        [*MASK, "{H}/singular.nii.gz"],
        "singular.nii.gz: invalid (singular or non-finite) affine in the header",
        "input",
    ),
    (
        "mismatched affines",
        [*PREPARE, "--images", "{H}/good_image.nii.gz", "--labels", "{H}/shifted_label.nii.gz"],
        "shifted_label.nii.gz: label affine differs from image {H}/good_image.nii.gz affine by up to 5 mm",
        "input",
    ),
    (
        "mismatched shapes",
        [*PREPARE, "--images", "{H}/good_image.nii.gz", "--labels", "{H}/short_label.nii.gz"],
        "short_label.nii.gz: label shape (16, 48, 32) differs from image {H}/good_image.nii.gz shape (48, 48, 32)",
        "input",
    ),
    (
        "header claims 4096^3",
        [*MASK, "{H}/huge_header.nii.gz"],
        "huge_header.nii.gz: the header claims 4096 x 4096 x 4096 voxels",
        "input",
    ),
    (
        "gzip bomb 1536^3",
        [*MASK, "{H}/gzip_bomb.nii.gz"],
        "gzip_bomb.nii.gz: the header claims 1536 x 1536 x 1536 voxels",
        "input",
    ),
    (
        "NaN initial noise",
        [*NOISE, "{H}/nan_noise.pt"],
        "nan_noise.pt: initial noise holds 8192 NaN/inf values",
        "input",
    ),
    (
        "pickled checkpoint",
        [*NOISE, "{H}/pickled.pt"],
        "pickled.pt: refused to load: the file holds pickled Python objects that could run code",
        "input",
    ),
    (
        "corrupt checkpoint",
        [*NOISE, "{H}/corrupt.pt"],
        "corrupt.pt: not a readable PyTorch checkpoint",
        "input",
    ),
    (
        "initial noise of the wrong shape",
        [*NOISE, "{H}/wrong_shape_noise.pt"],
        "initial_noise: shape (1, 4, 8, 8, 8) does not match the latent shape (4, 16, 16, 8)",
        "weights",
    ),
    (
        "weights of the wrong shape",
        [*GENERATE, *PHANTOM, "--weights", "{W:shapes}", "--output-dir", "{OUT}"],
        "unet/model.safetensors: does not match the network: 1 shape mismatches "
        "[down_blocks.0.downsampler.conv1.conv.bias: file (17,) vs network (16,)]",
        "weights",
    ),
    (
        "weights without a ControlNet",
        [*GENERATE, *PHANTOM, "--weights", "{W:missing}", "--output-dir", "{OUT}"],
        "{W:missing}: missing components ['controlnet']",
        "input",
    ),
    # --- configuration: unknown keys, malformed JSON, out-of-range values, devices this machine lacks
    (
        "unknown key (command line)",
        [*GEN, *PHANTOM, "generate.stepz=3"],
        "command line.generate: unknown key 'stepz'",
        "input",
    ),
    (
        "unknown key (config file)",
        [*GEN, *PHANTOM, "--config", "{H}/unknown_key.json"],
        "unknown_key.json.generate: unknown key 'stepz'",
        "input",
    ),
    (
        "malformed JSON config",
        [*GEN, *PHANTOM, "--config", "{H}/malformed.json"],
        "malformed.json: not valid JSON (Expecting property name enclosed in double quotes at line 1)",
        "input",
    ),
    (
        "malformed JSON mask index",
        [*GEN, "--mask-database", "{H}/db_malformed"],
        "db_malformed/masks_index.json: not valid JSON",
        "input",
    ),
    (
        "index entry ../../etc/passwd",
        [*GEN, "--mask-database", "{H}/db_outside"],
        "db_outside/masks_index.json: entry 0: '../../etc/passwd' lies outside the database folder",
        "input",
    ),
    (
        "index entry /etc/passwd",
        [*GEN, "--mask-database", "{H}/db_absolute"],
        "db_absolute/masks_index.json: entry 0: '/etc/passwd' lies outside the database folder",
        "input",
    ),
    ("generate --seed -1", [*GEN, *PHANTOM, "--seed", "-1"], "seed must be >= 0, got -1", "input"),
    (
        "a mask the chosen source would ignore",
        [*GEN, *PHANTOM, "--mask", "{H}/truncated.nii.gz"],
        "--mask {H}/truncated.nii.gz is given but the mask source is 'phantom', which would ignore it; drop one",
        "input",
    ),
    ("train --seed -1", [*TRAIN, "--seed", "-1"], "train.seed: -1 must be >= 0", "input"),
    (
        "generate --device tpu",
        [*GEN, *PHANTOM, "--device", "tpu"],
        "device must be cpu, cuda, cuda:N or mps, got 'tpu'",
        "input",
    ),
    (
        "train --device tpu",
        [*TRAIN, "--device", "tpu"],
        "device must be cpu, cuda, cuda:N or mps, got 'tpu'",
        "input",
    ),
    (
        "encode --device tpu",
        [*ENCODE, "--device", "tpu"],
        "device must be cpu, cuda, cuda:N or mps, got 'tpu'",
        "input",
    ),
    pytest.param(
        "train --device cuda",
        [*TRAIN, "--device", "cuda"],
        "device 'cuda': CUDA is not available here (a CPU-only torch, or no GPU); use --device cpu",
        "input",
        marks=NO_CUDA,
    ),
    pytest.param(
        "encode --device cuda",
        [*ENCODE, "--device", "cuda"],
        "device 'cuda': CUDA is not available here (a CPU-only torch, or no GPU); use --device cpu",
        "input",
        marks=NO_CUDA,
    ),
    # --- outputs: refused before the work, inputs never replaced
    (
        "--output-dir is a file",
        [*GENERATE, *PHANTOM, "--weights", "{W}", "--output-dir", "{H}/a_file"],
        "{H}/a_file: exists and is not a folder; choose another --output-dir",
        "output",
    ),
    (
        "--output-dir under a file",
        [*GENERATE, *PHANTOM, "--weights", "{W}", "--output-dir", "{H}/a_file/out"],
        "{H}/a_file/out: cannot be created ({H}/a_file is a file); choose another --output-dir",
        "output",
    ),
    (
        "--output-dir in /proc",
        [*GENERATE, *PHANTOM, "--weights", "{W}", "--output-dir", "/proc/maisi-faults"],
        "/proc/maisi-faults: cannot write there",
        "output",
    ),
    (
        '--output-dir ""',
        [*GENERATE, *PHANTOM, "--weights", "{W}", "--output-dir", ""],
        "output_dir is empty; pass --output-dir DIR",
        "output",
    ),
    (
        "prepare over its own inputs",
        [
            "prepare",
            "--images",
            "{H}/case/case_image.nii.gz",
            "--labels",
            "{H}/case/case_label.nii.gz",
            "--output-dir",
            "{H}/case",
            "--overwrite",
        ],
        "{H}/case/case_image.nii.gz: is the input {H}/case/case_image.nii.gz; refusing to write over an input",
        "output",
    ),
    (
        "generate over its own --mask",
        [
            *GENERATE,
            "--weights",
            "{W}",
            "--label-set",
            "maisi",
            "--mask",
            "{H}/inplace/sample_00000_label.nii.gz",
            "--output-dir",
            "{H}/inplace",
        ],
        "{H}/inplace/sample_00000_label.nii.gz: is the input {H}/inplace/sample_00000_label.nii.gz; refusing",
        "output",
    ),
]


def _ids(case) -> str:
    return case.values[0] if hasattr(case, "values") else case[0]


@pytest.mark.parametrize("name, argv, message, when", CASES, ids=[_ids(c) for c in CASES])
def test_fault_is_one_line_before_the_work_and_changes_nothing(
    name,
    argv,
    message,
    when,
    weights,
    broken_weights,
    hostile,
    sampling_step_s,
    tmp_path,
    capsys,
    monkeypatch,
):
    places = {"{H}": str(hostile), "{W}": str(weights), "{OUT}": str(tmp_path / "out")}
    places.update({f"{{W:{k}}}": str(v) for k, v in broken_weights.items()})
    pattern = re.compile("|".join(re.escape(k) for k in places))

    def fill(text: str) -> str:
        return pattern.sub(lambda m: places[m.group(0)], text)

    if when != "weights":  # the refusal must come before any network is loaded
        monkeypatch.setattr(
            "maisi.networks.model_set.load_model_set",
            lambda *a, **k: pytest.fail(f"{name}: networks were loaded before the refusal"),
        )
    before = snapshot(hostile)
    result = run_cli([fill(a) for a in argv], capsys)
    assert fill(message) in error_message(result, argv[0])
    assert snapshot(hostile) == before  # no input changed, nothing added beside them
    assert not (hostile / "PAYLOAD_RAN").exists()
    (no_samples if when == "weights" else nothing_written)(tmp_path / "out")
    if when == "output":
        assert result.seconds < sampling_step_s, (result.seconds, sampling_step_s)
