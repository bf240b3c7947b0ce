"""The one-way generation run: the plan decided before any loading, the saved config that reproduces a run byte for
byte, the seeds recorded as drawn, and a failing write stopping the run at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maisi import cli
from maisi.errors import OutputError, RequestError
from maisi.generation import generate, plan_generation, stream
from maisi.generation.seeds import derive_seed
from test_generation_common import DATA, one_thread, request, session_weights  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
BASE = dict(
    output_size=(64, 64, 32), spacing=(3.0, 3.0, 3.0), mask_source="phantom", body_region=("abdomen",)
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return session_weights(tmp_path_factory)


def test_plan_decides_source_components_and_shares_before_loading(weights, tmp_path, monkeypatch):
    import maisi.networks.model_set as model_set_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a plan must not load networks")

    monkeypatch.setattr(model_set_module, "load_model_set", no_loading)
    cfg = request(weights, tmp_path, num_samples=5, organ_sizes={"liver": 0.4}, mask_source="auto")
    plan = plan_generation(cfg)
    assert plan.mask_source == "model"  # sizes asked and the micro set has a mask model declaring nothing
    assert plan.components == ("vae", "unet", "controlnet", "mask_vae", "mask_unet")
    assert plan.indices == (0, 1, 2, 3, 4) and plan.device == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    shared = plan_generation(request(weights, tmp_path, num_samples=5, **BASE))
    assert shared.indices == (1, 3) and shared.components == ("vae", "unet", "controlnet")
    assert shared.describe()["world_size"] == 2 and shared.describe()["mask_source"] == "phantom"
    # the digest ignores where the samples go, not what they are
    other = plan_generation(request(weights, tmp_path / "elsewhere", num_samples=9, **BASE))
    assert other.digest(3) == shared.digest(3) != shared.digest(1)
    seeded = plan_generation(request(weights, tmp_path, num_samples=5, **{**BASE, "seed": 1}))
    assert seeded.digest(3) != shared.digest(3)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"mask_source": "file"}, "mask_source 'file' needs a mask file"),
        ({"mask_source": "database"}, "mask_source 'database' needs a mask database"),
        ({"seed": -1}, "seed must be >= 0, got -1"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"output_dir": " "}, "output_dir is empty"),
        ({"device": "tpu"}, "device must be cpu, cuda, cuda:N or mps, got 'tpu'"),
    ],
)
def test_plan_refuses_bad_requests_in_one_line(weights, tmp_path, change, message):
    out = change.pop("output_dir", tmp_path)
    cfg = request(weights, out, **{**BASE, **change})
    with pytest.raises(RequestError, match=message):
        plan_generation(cfg)


def test_model_source_without_a_mask_model_is_refused_before_loading(tmp_path, tmp_path_factory):
    bare = session_weights(tmp_path_factory, name="no-mask", mask=False)
    cfg = request(bare, tmp_path, **{**BASE, "mask_source": "model"})
    with pytest.raises(
        RequestError, match=r"needs weights with a mask-generation model .* has \['controlnet'"
    ):
        plan_generation(cfg)


def test_saved_config_reproduces_a_fitted_mask_run_byte_for_byte(weights, tmp_path, capsys):
    """A user mask fitted to a requested grid (``--mask`` with ``--output-size``): the run's ``config.json`` holds
    everything (``fit_mask`` included), and a run from it alone writes the same image and label bytes."""
    first, second = tmp_path / "first", tmp_path / "second"
    args = [
        "generate",
        "--preset",
        "tiny",
        "--weights",
        str(weights),
        "--mask",
        str(DATA / "example_seg.nii.gz"),
    ]
    args += ["--output-size", "64", "64", "32", "--steps", "2", "--seed", "5", "--no-qc"]
    assert cli.main([*args, "--output-dir", str(first)]) == 0
    saved = json.loads((first / "config.json").read_text())
    assert saved["generate"]["fit_mask"] is True and saved["generate"]["output_size"] == [64, 64, 32]
    assert saved["preset"] == "tiny" and saved["generate"]["seed"] == 5
    assert cli.main(["generate", "--config", str(first / "config.json"), "--output-dir", str(second)]) == 0
    for name in ("sample_00000_image.nii.gz", "sample_00000_label.nii.gz", "sample_00000_preview.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    a = json.loads((first / "sample_00000.json").read_text())
    b = json.loads((second / "sample_00000.json").read_text())
    assert a["request_digest"] == b["request_digest"] and a["mask"]["changes"] == b["mask"]["changes"]
    assert a["output"]["size"] == [64, 64, 32]  # fitted, not the nearest grid of the mask (128 x 96 x 32)
    capsys.readouterr()
    # the dry run prints the plan beside the config
    assert cli.main(["generate", "--config", str(first / "config.json"), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["plan"]["mask_source"] == "file" and printed["generate"]["fit_mask"] is True
    again = json.loads((second / "config.json").read_text())
    assert again["generate"].pop("output_dir") == str(second) and saved["generate"].pop("output_dir") == str(
        first
    )
    assert again == saved


def test_sidecar_records_the_seeds_the_draws_used(weights, tmp_path):
    s = generate(request(weights, tmp_path, num_samples=1, **{**BASE, "seed": 9}), write=False)[0]
    seeds = s.metadata["seeds"]
    assert seeds["noise"] == derive_seed(9, 0, 0, stream="noise")
    assert seeds["sampler"] == derive_seed(9, 0, 0, stream="sampler")
    assert seeds["mask"] == derive_seed(9, 0, 0, stream="mask") == s.metadata["mask"]["info"]["seed"]
    assert len({seeds["noise"], seeds["sampler"], seeds["mask"]}) == 3
    assert set(s.metadata["timings_s"]) >= {"mask_s", "sampling_s", "decode_s", "qc_s"}


def test_a_failing_background_write_stops_the_run_at_once(weights, tmp_path, monkeypatch):
    """The write of sample 0 fails in the background thread: the error reaches the caller while sample 1 is
    handed over, and sample 2 is never sampled."""
    import maisi.generation.pipeline as pipeline

    made = []
    real_synthesise = pipeline.synthesise

    def counting(*args, **kwargs):
        made.append(1)
        return real_synthesise(*args, **kwargs)

    def failing_save(path, *args, **kwargs):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "synthesise", counting)
    monkeypatch.setattr("maisi.data.nifti.save_nifti", failing_save)
    cfg = request(weights, tmp_path, num_samples=3, **BASE)
    with pytest.raises(
        OutputError, match=r"sample_00000_image\.nii\.gz: cannot write sample 0 \(No space left on device\)"
    ):
        for _ in stream(cfg):
            pass
    assert len(made) == 2  # sample 1 was made while sample 0 was being written; sample 2 never started
    assert not list(Path(tmp_path).glob("sample_*"))


def test_streamed_samples_drop_their_arrays_once_written(weights, tmp_path):
    out = list(stream(request(weights, tmp_path, num_samples=2, **BASE), keep_arrays=False))
    assert [s.index for s in out] == [0, 1]
    assert all(s.image is None and s.label is None and s.condition is None for s in out)
    assert all(Path(s.paths["sidecar"]).is_file() for s in out)
    written = json.loads(Path(out[0].paths["sidecar"]).read_text())
    assert written == out[0].metadata and written["timings_s"]["write_s"] > 0
