"""End-to-end generation on CPU with random-weight micro model sets: outputs, determinism, batching, sharding,
fixed initial noise, user masks, organ-size control, the mask-generation model, resume and bad requests."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from maisi import cli, labels
from maisi.errors import RequestError
from maisi.generation import generate
from maisi.io import OutputExistsError
from test_generation_common import DATA, one_thread, request, session_weights  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (64, 64, 32)  # non-cubic, latent 16 x 16 x 8
BASE = dict(
    output_size=SIZE, spacing=(3.0, 3.0, 3.0), mask_source="phantom", body_region=("abdomen",), seed=7
)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return session_weights(tmp_path_factory)


@pytest.fixture(scope="module")
def run_a(weights, tmp_path_factory):
    """Two samples, one at a time, written."""
    out = tmp_path_factory.mktemp("run_a")
    samples = generate(request(weights, out, num_samples=2, **BASE), return_unit=True)
    return out, samples


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_outputs_have_the_right_shapes_affine_dtypes(run_a):
    out, samples = run_a
    assert [s.index for s in samples] == [0, 1]
    for s in samples:
        img = nib.load(s.paths["image"])
        lab = nib.load(s.paths["label"])
        assert img.shape == lab.shape == SIZE
        assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
        assert img.header.get_zooms() == (3.0, 3.0, 3.0)
        assert np.allclose(img.affine, s.affine) and np.allclose(lab.affine, s.affine)
        assert np.allclose(s.affine[:3, :3], np.diag([3.0, 3.0, 3.0]))
        hu = np.asarray(img.dataobj)
        assert np.array_equal(hu, s.image) and np.array_equal(np.asarray(lab.dataobj), s.label)
        assert hu.min() >= -1000 and hu.max() <= 1000
        assert np.all(hu[s.label == 0] == -1000)  # air outside the body
        assert np.array_equal(np.rint(s.unit * 2000 - 1000), hu)
        meta = json.loads(Path(s.paths["sidecar"]).read_text())
        assert meta["index"] == s.index and meta["seed"] == 7 and meta["request"]["output_size"] == list(SIZE)
        assert (
            meta["weights"]["layout"] == "maisi"
            and len(meta["weights"]["components"]["unet"]["config_sha256"]) == 64
        )
        assert set(meta["timings_s"]) >= {"mask_s", "sampling_s", "decode_s", "qc_s"}
        assert meta["files"]["image"] == f"sample_{s.index:05d}_image.nii.gz"
        assert Path(s.paths["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not np.array_equal(samples[0].image, samples[1].image)
    assert (out / "config.json").is_file()


def test_shards_and_reruns_are_byte_identical(run_a, weights, tmp_path, monkeypatch):
    """Each rank of a 2-process run makes its share; every file equals the single-process run byte for byte."""
    out_a, _ = run_a
    for rank in (1, 0):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        made = generate(request(weights, tmp_path, num_samples=2, **BASE))
        assert [s.index for s in made] == [rank]
    for kind in ("image.nii.gz", "label.nii.gz", "preview.png"):
        for i in (0, 1):
            name = f"sample_{i:05d}_{kind}"
            assert _sha(tmp_path / name) == _sha(out_a / name), name


def test_batch_of_two_equals_two_single_runs(run_a, weights, tmp_path):
    _, singles = run_a
    batch = generate(
        request(weights, tmp_path, num_samples=2, batch_size=2, **BASE), write=False, return_unit=True
    )
    for b, s in zip(batch, singles):
        assert b.metadata["timings_s"]["batch"] == 2
        assert np.array_equal(b.label, s.label)
        assert np.abs(b.unit - s.unit).max() < 1e-5
        assert np.abs(b.image.astype(int) - s.image).max() <= 1


def test_controlnet_scale_reaches_the_controlnet(run_a, weights, tmp_path):
    _, singles = run_a
    same = generate(request(weights, tmp_path, controlnet_scale=1.0, **BASE), write=False, return_unit=True)
    assert np.array_equal(same[0].unit, singles[0].unit)  # 1 = as trained = the default
    diffs = []
    for scale in (0.5, 2.0):
        made = generate(
            request(weights, tmp_path, controlnet_scale=scale, **BASE), write=False, return_unit=True
        )
        assert np.array_equal(made[0].label, singles[0].label)
        diffs.append(float(np.abs(made[0].unit - singles[0].unit).mean()))
    assert min(diffs) > 1e-4, diffs


def test_fixed_initial_noise_reproduces_the_seeded_sample(run_a, weights, tmp_path):
    from maisi.diffusion import randn
    from maisi.generation.seeds import derive_seed, torch_generator

    _, singles = run_a
    noise = torch.stack(
        [
            randn((4, 16, 16, 8), generator=torch_generator(derive_seed(7, i, stream="noise")))
            for i in range(2)
        ]
    )
    np.save(tmp_path / "noise.npy", noise.numpy())
    cfg = request(weights, tmp_path / "out", num_samples=2, initial_noise=str(tmp_path / "noise.npy"), **BASE)
    made = generate(cfg, indices=[1], return_unit=True)
    assert np.array_equal(made[0].unit, singles[1].unit)
    assert made[0].metadata["initial_noise"] == str(tmp_path / "noise.npy")
    with pytest.raises(
        RequestError, match=r"initial_noise: shape \(2, 4, 8, 16, 8\) does not match the latent shape"
    ):
        generate(cfg, initial_noise=noise[:, :, :8], write=False)


def test_rerun_skips_complete_samples_and_never_overwrites(run_a, weights):
    out, _ = run_a
    before = _sha(out / "sample_00000_image.nii.gz")
    assert generate(request(weights, out, num_samples=2, **BASE)) == []  # resume: nothing left to do
    assert _sha(out / "sample_00000_image.nii.gz") == before
    with pytest.raises(OutputExistsError, match="from a different request"):
        generate(request(weights, out, num_samples=1, **{**BASE, "seed": 8}))


def test_keep_only_writes_maisi_ids_of_the_kept_labels(weights, tmp_path):
    cfg = request(
        weights, tmp_path, keep_only=("liver", "spleen"), steps=1, **{**BASE, "output_size": (64, 64, 64)}
    )
    s = generate(cfg)[0]
    written = np.asarray(nib.load(s.paths["label"]).dataobj)
    assert set(np.unique(written).tolist()) == {0, 1, 3}  # MAISI ids, not renumbered
    assert np.array_equal(written, np.where(np.isin(s.condition, [1, 3]), s.condition, 0))
    assert s.metadata["output"]["keep_only"] == ["liver", "spleen"]


def test_user_mask_in_totalsegmentator_ids(weights, tmp_path):
    """--mask example_seg.nii.gz: the label map written is the mapped input plus body 200, on the nearest valid grid."""
    from maisi.data.body import add_body_from_label
    from maisi.data.label_mapping import LabelMapping
    from maisi.data.nifti import load_nifti

    s = generate(request(weights, tmp_path, mask=str(DATA / "example_seg.nii.gz"), steps=1))[0]
    written = np.asarray(nib.load(s.paths["label"]).dataobj)
    meta = s.metadata
    assert written.shape == (128, 96, 32) and meta["output"]["size"] == [128, 96, 32]
    assert meta["mask"]["changes"] == ["size [122, 101, 30] -> [128, 96, 32] (centred pad/crop)"]
    vol = load_nifti(DATA / "example_seg.nii.gz", kind="label")
    mapped = LabelMapping.from_totalsegmentator().apply(vol.array)
    expect = add_body_from_label(mapped, vol.spacing)
    assert np.array_equal(written[3:125, :, 1:31], expect[:, 2:98, :])
    inside = written[3:125, :, 1:31]
    assert np.array_equal(inside[inside != labels.BODY], mapped[:, 2:98, :][inside != labels.BODY])
    assert np.count_nonzero(written == labels.BODY) > 0.1 * written.size
    # the image lives where the input mask lived
    assert np.allclose(
        nib.load(s.paths["image"]).affine[:3, 3], vol.affine[:3, 3] + 3.0 * np.array([-3, 2, -1])
    )


def test_organ_size_control_is_monotone(weights, tmp_path):
    """Phantom masks: relative liver size s maps to lo + s (hi - lo) mL of the phantom's liver range."""
    realised, requested = [], []
    for k, size in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        cfg = request(
            weights,
            tmp_path / str(k),
            steps=1,
            organ_sizes={"liver": size},
            **{**BASE, "output_size": (64, 64, 64), "body_region": ("chest", "abdomen")},
        )
        sample = generate(cfg)[0]
        facts = json.loads(Path(sample.paths["sidecar"]).read_text())["organ_sizes"]["liver"]
        assert facts["requested"] == size
        requested.append(facts["requested_ml"])
        realised.append(facts["realised_ml"])
        assert facts["realised_ml"] == pytest.approx(np.count_nonzero(sample.condition == 1) * 0.027)
    assert requested == [1300.0, 1450.0, 1600.0, 1750.0, 1900.0]
    assert all(b > a for a, b in zip(realised, realised[1:])), realised
    assert realised[-1] > 1.25 * realised[0]


def test_mask_generation_model_plumbing(weights, tmp_path):
    """Size vector -> mask latent diffusion -> 125-class decode -> MAISI ids (random weights: plumbing only)."""
    cfg = request(
        weights,
        tmp_path,
        organ_sizes={"liver": 0.3, "hepatic tumor": 0.2},
        mask_steps=2,
        steps=1,
        output_size=(64, 64, 64),
        spacing=(1.5, 1.5, 1.5),
    )
    s = generate(cfg)[0]
    mask = s.metadata["mask"]
    assert mask["source"] == "model"
    assert mask["info"]["size_vector"] == [0.5, 0.3, 0.5, 0.5, 0.5, -1.0, -1.0, 0.2, -1.0, -1.0]
    assert mask["info"]["native_shape"] == [64, 64, 64] and mask["changes"] == []
    assert set(np.unique(s.condition).tolist()) <= labels.VALID_IDS
    assert s.metadata["organ_sizes"]["liver"]["requested"] == 0.3


BAD_CLI = [
    (["--output-size", "100", "64", "64"], "is not a multiple of 32; nearest valid values 96 or 128"),
    (["--spacing", "0.1", "3", "3"], "is outside [0.5, 3] mm; nearest valid spacing [0.5, 3.0, 3.0]"),
    (["--anatomy", "livr"], "unknown anatomy name 'livr'"),
    (["--organ-size", "liver=big"], "'big' is not a number"),
    (["--mask", "{tmp}/junk.nii.gz"], "junk.nii.gz: not a readable NIfTI file"),
    (["--mask", "{tmp}/odd.nii.gz"], "ids [250] are in no built-in vocabulary"),
    (["--weights", "{tmp}/nowhere"], "nowhere: weights folder not found"),
    (["--weights", "rflow-ct"], "run `maisi download rflow-ct` first"),
    (["--weights", "demo"], "no_demo (an incomplete install? reinstall maisi)"),
]


@pytest.mark.parametrize("args, message", BAD_CLI, ids=[m[:28] for _, m in BAD_CLI])
def test_bad_requests_exit_2_with_one_line(args, message, weights, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MAISI_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("maisi.generation.weights.DEMO_DIR", tmp_path / "no_demo")
    (tmp_path / "junk.nii.gz").write_bytes(b"junk")
    odd = np.zeros((8, 8, 8), np.uint8)
    odd[:4] = 250
    nib.save(nib.Nifti1Image(odd, np.eye(4)), str(tmp_path / "odd.nii.gz"))
    argv = ["generate", "--preset", "tiny", "--weights", str(weights), "--output-dir", str(tmp_path / "out")]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_official_config_infer_is_accepted(capsys):
    assert cli.main(["generate", "--config", "src/maisi/resources/config_infer.json", "--dry-run"]) == 0
    gen = json.loads(capsys.readouterr().out)["generate"]
    assert gen["anatomy"] == ["lung tumor"] and gen["body_region"] == ["chest"] and gen["modality"] == "ct"
    assert gen["output_size"] == [256, 256, 256] and gen["decode_window"] == [48, 48, 48]


def test_cli_flags_map_onto_the_config(capsys):
    argv = [
        "generate",
        "--preset",
        "tiny",
        "--organ-size",
        "liver=0.5",
        "hepatic tumor=0.3",
        "--output-size",
        "64",
        "64",
        "32",
        "--no-qc",
        "--label-set",
        "totalsegmentator",
        "--steps",
        "3",
        "--controlnet-scale",
        "1.5",
        "--dry-run",
    ]
    assert cli.main(argv) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["generate"]["controlnet_scale"] == 1.5
    assert cfg["generate"]["organ_sizes"] == {"liver": 0.5, "hepatic tumor": 0.3}
    assert cfg["generate"]["output_size"] == [64, 64, 32] and cfg["generate"]["steps"] == 3
    assert cfg["generate"]["qc"] is False and cfg["data"]["label_set"] == "totalsegmentator"


def test_guidance_uses_the_tumour_free_mask_as_unconditional_control(weights, tmp_path):
    from maisi.generation.masks import MaskSample
    from maisi.generation.synthesis import build_denoiser
    from maisi.networks.model_set import load_model_set

    ms = load_model_set(weights, components=["vae", "unet", "controlnet"])
    label = np.zeros((32, 32, 32), np.uint8)
    label[4:28, 4:28, 4:28] = 1
    label[12:16, 12:16, 12:16] = 26
    mask = MaskSample(label=label, affine=np.eye(4), spacing=(3.0, 3.0, 3.0), source="test")
    x = torch.randn(1, 4, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    kw = dict(modality=1, requested_regions=[], device=torch.device("cpu"))
    with torch.inference_mode():
        plain = build_denoiser(ms, [mask], guidance=0.0, **kw)(x, t)
        guided = build_denoiser(ms, [mask], guidance=2.0, **kw)(x, t)
        free = dataclasses.replace(mask, label=np.where(label == 26, 1, label).astype(np.uint8))
        uncond_ctrl = build_denoiser(ms, [free], guidance=0.0, **kw)
    assert not torch.allclose(plain, guided)
    # s = 2: uncond + 2 (cond - uncond) = 2 cond - uncond, uncond = (modality 0, tumour-free control)
    from maisi.conditioning import binarize_labels, spacing_input
    from maisi.diffusion import make_denoiser

    ref_uncond = make_denoiser(
        ms["unet"],
        controlnet=ms["controlnet"],
        control=binarize_labels(torch.from_numpy(free.label)[None, None]),
        spacing=spacing_input((3.0, 3.0, 3.0)),
        modality=0,
    )
    with torch.inference_mode():
        expect = 2 * plain - ref_uncond(x, t)
    assert torch.allclose(guided, expect, atol=1e-5)
    assert uncond_ctrl is not None


def test_failed_quality_check_retries_with_a_new_seed_and_mask(run_a, weights, tmp_path, monkeypatch):
    import maisi.generation.qc as qc_module

    calls = []

    def fake_qc(image, label):  # fails the first attempt, passes the second
        calls.append(image.copy())
        passed = len(calls) > 1
        return {"passed": passed, "organs": {"liver": {"median_hu": 0.0, "passed": passed}}}

    monkeypatch.setattr(qc_module, "check_organ_medians", fake_qc)
    cfg = request(weights, tmp_path, qc=True, qc_retries=2, **BASE)
    s = generate(cfg)[0]
    meta = json.loads(Path(s.paths["sidecar"]).read_text())
    assert meta["attempt"] == 1 and meta["qc"]["passed"] is True
    assert [a["passed"] for a in meta["qc"]["attempts"]] == [False, True]
    assert np.array_equal(calls[0], run_a[1][0].image)  # attempt 0 is the plain sample 0
    assert not np.array_equal(s.image, run_a[1][0].image) and not np.array_equal(
        s.condition, run_a[1][0].condition
    )
    assert meta["seeds"]["noise"] != run_a[1][0].metadata["seeds"]["noise"]


def test_model_settings_a_maisi_weights_folder_does_not_have_are_an_error(weights, tmp_path):
    """A maisi folder's networks and scheduler come from its own config.json: a ``model.*`` value that differs from
    it (here the scheduler's resolution shift) would be silently ignored, so it is refused, naming the key; values
    equal to the folder's own are accepted (the micro request itself changes many ``model.*`` keys)."""
    from maisi.errors import RequestError

    cfg = request(weights, tmp_path / "out", num_samples=1, **BASE)
    cfg.model = dataclasses.replace(
        cfg.model, scheduler=dataclasses.replace(cfg.model.scheduler, transform_scale=0.5)
    )
    with pytest.raises(RequestError, match=r"model\.scheduler\.transform_scale: .*maisi weights folder"):
        generate(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
