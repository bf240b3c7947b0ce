"""The memory plan inside a generation run: decided with the run's plan before any network is loaded (``--dry-run``,
the log, every sidecar), its decode used by the codec, explicit decode settings kept with a warning, a request that
cannot fit refused in one line before anything is loaded or written, and the device / precision defaults."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import nibabel as nib
import numpy as np
import pytest

from maisi import cli
from maisi.errors import RequestError
from maisi.generation import describe_run, generate, plan_generation
from maisi.generation.plan import with_run_memory
from test_generation_common import one_thread, request, session_weights  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = dict(
    output_size=(64, 64, 32), spacing=(3.0, 3.0, 3.0), mask_source="phantom", body_region=("abdomen",)
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return session_weights(tmp_path_factory)


@pytest.fixture
def no_loading(monkeypatch):
    import maisi.networks.model_set as model_set_module

    def refuse(*args, **kwargs):
        raise AssertionError("planning must not load networks")

    monkeypatch.setattr(model_set_module, "load_model_set", refuse)


def planned(cfg):
    """The run's plan with its memory plan, as generate makes it before loading."""
    return with_run_memory(plan_generation(cfg), cfg)


def test_the_plan_resolves_device_and_dtype_and_plans_memory_without_loading(weights, tmp_path, no_loading):
    cfg = request(weights, tmp_path, **BASE)
    assert (cfg.generate.device, cfg.generate.dtype) == ("auto", "auto")
    plan = planned(cfg)
    # no CUDA here: auto is the CPU in float32 (the official fp16 is for CUDA GPUs)
    assert plan.device == "cpu" and plan.request.dtype == "float32" and plan.describe()["dtype"] == "float32"
    memory = plan.describe()["memory"]
    assert plan.memory.latent == (16, 16, 8)
    # room to spare: the whole latent in one pass (the official whole-volume decode), one slab
    assert memory["decode"]["windows"] == 1 and memory["decode"]["window"] == [16, 16, 8]
    assert memory["decode"]["num_splits"] == 1 and memory["peak_bytes"] <= memory["budget_bytes"]
    assert list(memory["stages"]) == ["conditioning", "sampling", "decode", "writing"]
    # the digest of "auto" is the digest of what it resolves to (the same samples)
    explicit = planned(request(weights, tmp_path, **BASE, device="cpu", dtype="float32"))
    assert explicit.digest(0) == plan.digest(0)


def test_a_smaller_budget_changes_the_decode_and_a_tiny_one_is_refused(weights, tmp_path, no_loading):
    roomy = planned(request(weights, tmp_path, **BASE, max_memory="64GB")).memory
    others = max(v for k, v in roomy.stages.items() if k != "decode")
    assert roomy.stages["decode"] > others  # the decode is this request's largest stage
    budget = (others + roomy.stages["decode"]) // 2
    tight = planned(request(weights, tmp_path, **BASE, max_memory=str(budget))).memory
    assert tight.peak <= budget < roomy.peak
    assert (tight.decode.num_splits, tight.decode.windows(tight.latent)) != (1, 1)
    with pytest.raises(RequestError, match=r"request needs at least .* budget 1 MiB on cpu"):
        planned(request(weights, tmp_path, **BASE, max_memory="1MB"))
    with pytest.raises(RequestError, match="max-memory must be a size such as 16GB"):
        planned(request(weights, tmp_path, **BASE, max_memory="lots"))


def test_the_run_decodes_as_planned_and_records_the_plan(weights, tmp_path, caplog):
    cfg = request(weights, tmp_path / "run", **BASE, steps=1, qc=False, preview=False)
    with caplog.at_level(logging.INFO, logger="maisi.generation.pipeline"):
        (sample,) = generate(cfg)
    assert any(
        "memory plan: peak" in r.getMessage() and "decode one pass" in r.getMessage() for r in caplog.records
    )
    sidecar = json.loads(next((tmp_path / "run").glob("*.json")).read_text())
    assert sidecar["memory"]["decode"]["windows"] == 1 and sidecar["dtype"] == "float32"
    assert sidecar["memory"] == sample.metadata["memory"]
    # explicit windows win over the plan, and say when they exceed the budget
    small = request(
        weights, tmp_path / "windows", **BASE, steps=1, qc=False, preview=False, decode_window=(8, 8, 8)
    )
    plan = planned(small)
    assert plan.memory.decode.window == (8, 8, 8) and plan.memory.decode.windows(plan.memory.latent) == 9
    (windowed,) = generate(small)  # 3 x 3 x 1 windows at the plan's overlap 0.4: the same latent, stitched
    assert windowed.metadata["memory"]["decode"]["windows"] == 9
    assert np.array_equal(windowed.label, sample.label) and not np.array_equal(windowed.image, sample.image)
    full = planned(cfg).memory
    others = max(v for k, v in full.stages.items() if k != "decode")
    budget = (others + full.stages["decode"]) // 2  # every stage fits but a one-slab whole-latent decode
    over = dataclasses.replace(
        small.generate, decode_window=(16, 16, 8), decode_splits=1, max_memory=str(budget)
    )
    warned = planned(dataclasses.replace(small, generate=over))
    assert (warned.memory.decode.window, warned.memory.decode.num_splits) == ((16, 16, 8), 1)
    assert any("decode window 16x16x8 with 1 slab(s) needs about" in w for w in warned.warnings)


def test_the_command_says_its_plan_before_the_samples(weights, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = [
        "generate",
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
    ]
    argv += ["--mask-source", "phantom", "--steps", "1", "--no-qc", "--no-preview", "--output-dir", str(out)]
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("memory plan: peak ") and "on cpu" in lines[0]
    assert lines[0].endswith("decode one pass, 1 slab(s); computing in float32")
    assert lines[1].startswith("sample 0: ")


def test_a_user_mask_is_planned_on_its_own_grid(weights, tmp_path, no_loading):
    label = np.zeros((64, 32, 32), np.uint8)
    label[8:56, 4:28, 4:28] = 200  # body
    label[20:40, 10:20, 10:20] = 1  # liver
    path = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(label, np.diag([3.0, 3.0, 3.0, 1.0])), str(path))
    cfg = request(weights, tmp_path / "out", mask=str(path), mask_source="file", spacing=(3.0, 3.0, 3.0))
    cfg.data = dataclasses.replace(cfg.data, label_set="maisi")
    assert plan_generation(cfg).memory is None  # planned once the masks are read (the grid is this mask's)
    assert describe_run(cfg)["memory"]["decode"]["window"] == [16, 8, 8]


def test_a_request_that_cannot_fit_is_refused_at_once_in_one_line(weights, tmp_path, capsys):
    out = tmp_path / "never"
    argv = ["generate", "--weights", str(weights), "--output-dir", str(out)]
    t0 = (
        time.perf_counter()
    )  # --dry-run: the plan alone (a real run says first that 4096^3 needs 77 GiB of disk)
    rc = cli.main([*argv, "--output-size", "4096", "4096", "4096", "--max-memory", "16GB", "--dry-run"])
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err.strip()
    assert rc == 2 and seconds < 5 and not out.exists()
    assert len(err.splitlines()) == 1
    assert "request needs at least" in err and "stage decode" in err and "budget 16.0 GiB on cpu" in err
    # a real run: the output folder checked, then the memory plan refused, before any network is loaded
    rc = cli.main([*argv, "--output-size", "256", "256", "256", "--max-memory", "256MB"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "budget 256 MiB on cpu" in err
    assert not list(out.glob("sample_*"))
