"""The official CT flow on official-layout weights (random tiny networks saved as NVIDIA ships them, with the v2
mask generator and a small mask database in the official format beside them): the default mask source is the
database, organ sizes and demographics go to the v2 mask generator, a missing database is a one-line error, and
refused demographic requests are refused in one line."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import reference_adagn as refv2
from maisi import cli, labels
from maisi.config import to_dict
from maisi.data.nifti import save_nifti
from maisi.data.phantom import make_phantom
from test_adagn import TINY
from test_equivalence_common import official_weights, tiny_config
from test_generation_common import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
MASKS = "datasets/all_masks_flexible_size_and_spacing_4000"
CANDIDATES = "datasets/candidate_masks_flexible_size_and_spacing_4000.json"


def _database(root: Path) -> list[np.ndarray]:
    """Two phantom label maps in the official database format: one with a hepatic tumour, one without."""
    folder = root / MASKS
    folder.mkdir(parents=True)
    entries, maps = [], []
    for k in range(2):
        ph = make_phantom(size=(48, 48, 40), spacing=(3.0, 3.0, 4.0), region="abdomen", seed=k)
        label = ph.label.astype(np.uint8)
        label[np.isin(label, list(labels.TUMORS.values()))] = labels.BODY  # the phantom's own random tumours
        if k == 1:  # a hepatic tumour: a ball of radius 3 voxels around the liver's deepest voxel
            from scipy import ndimage as ndi

            depth = ndi.distance_transform_edt(label == 1)
            centre = np.unravel_index(int(np.argmax(depth)), label.shape)
            grid = np.indices(label.shape)
            label[sum((g - c) ** 2 for g, c in zip(grid, centre)) <= 9] = labels.TUMORS["hepatic tumor"]
        name = f"mask_{k}_pseudo_label.nii.gz"
        save_nifti(folder / name, label, ph.affine)
        ids = sorted(int(i) for i in np.unique(label) if i)
        entries.append(
            {
                "pseudo_label_filename": name,
                "dim": [48, 48, 40],
                "spacing": [3.0, 3.0, 4.0],
                "label_list": ids,
            }
        )
        maps.append(label)
    (root / CANDIDATES).write_text(json.dumps(entries))
    return maps


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """Official-layout tiny weights with ``mask_generation_diffusion_unet_v2.pt`` and a mask database, and the
    config that describes their networks."""
    source, nets = official_weights(tmp_path_factory, "rflow")
    root = tmp_path_factory.mktemp("official") / "weights"
    shutil.copytree(source, root)
    cfg = tiny_config("rflow")
    cfg.model = dataclasses.replace(cfg.model, mask_unet_v2=TINY)
    kwargs, d, e = refv2.reference_unet_kwargs(TINY)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        v2 = refv2.make_reference_unet(kwargs, d, e)
    with torch.no_grad():
        for p in v2.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0.0, 0.05)
    scale = torch.tensor(cfg.model.mask_vae.scale_factor)
    torch.save(
        {"unet_state_dict": v2.state_dict(), "scale_factor": scale},
        root / "models" / "mask_generation_diffusion_unet_v2.pt",
    )
    maps = _database(root)
    overlay = root.parent / "config.json"
    overlay.write_text(json.dumps(to_dict(cfg)))
    return root, overlay, maps, (v2, nets, cfg)


def _generate(official, out: Path, *args: str) -> int:
    root, overlay, *_ = official
    base = ["generate", "--config", str(overlay), "--weights", str(root), "--output-dir", str(out)]
    base += ["--output-size", "64", "64", "64", "--spacing", "3", "3", "4", "--body-region", "abdomen"]
    base += ["--steps", "1", "--mask-steps", "2"]
    return cli.main([*base, *args])


def test_default_mask_source_with_official_weights_is_the_database(official, tmp_path):
    """No mask, no sizes: a database mask (fitted to the request, its tumour moved by augmentation), the v1/v2
    mask networks never loaded."""
    maps = official[2]
    assert _generate(official, tmp_path / "out", "--anatomy", "hepatic tumor", "--num-samples", "1") == 0
    meta = json.loads((tmp_path / "out" / "sample_00000.json").read_text())
    assert meta["mask"]["source"] == "database"
    assert (
        Path(meta["mask"]["info"]["file"]).name == "mask_1_pseudo_label.nii.gz"
    )  # the one holding the tumour
    record = meta["mask"]["info"]["tumor_augmentation"][0]
    assert record["tumor"] == "hepatic tumor" and record["accepted"]
    assert set(meta["weights"]["components"]) == {"vae", "unet", "controlnet"}
    written = np.asarray(nib.load(tmp_path / "out" / "sample_00000_label.nii.gz").dataobj)
    assert written.shape == (64, 64, 64) and meta["mask"]["changes"] == [
        "size [48, 48, 40] -> [64, 64, 64] (centred pad/crop)"
    ]
    source = maps[1]
    organs = set(np.unique(source).tolist()) - {0}
    assert set(np.unique(written).tolist()) - {0} == organs  # the same structures, in MAISI ids
    # the tumour moved (augmentation) and stayed inside the liver's region of the map
    padded = np.zeros((64, 64, 64), np.uint8)
    padded[8:56, 8:56, 12:52] = source
    assert not np.array_equal(written == 26, padded == 26)
    assert np.count_nonzero(written == 26) == record["voxels_after"] > 0


def test_sizes_and_demographics_go_to_the_v2_mask_generator(official, tmp_path):
    args = ["--organ-size", "liver=0.6", "--demographics", "age=63", "sex=F", "weight=70"]
    assert _generate(official, tmp_path / "out", *args) == 0
    meta = json.loads((tmp_path / "out" / "sample_00000.json").read_text())
    info = meta["mask"]["info"]
    assert meta["mask"]["source"] == "model" and info["generator"] == "v2" and info["mask_steps"] == 2
    assert info["demographics"] == {"age": 63.0, "sex": "F", "weight": 70.0} and info["guidance"] == 2.0
    condition = info["condition"]
    assert condition[0] == 0.6 and condition[14:] == [63 / 120, 0.0, 70 / 200, -1.0, -1.0]
    assert set(meta["weights"]["components"]) == {"vae", "unet", "controlnet", "mask_vae", "mask_unet_v2"}
    assert meta["request"]["demographics"] == {"age": 63.0, "sex": "F", "weight": 70.0}


@pytest.mark.parametrize(
    "args,message",
    [
        (["--organ-size", "liver=0.5", "spleen=0.5"], "at most one anatomy target, got 2 (liver, spleen)"),
        (["--demographics", "weight=70", "bmi=24"], "give weight or bmi, not both"),
        (["--demographics", "age=130"], "age=130 years is outside [0, 120] years"),
        (["--demographics", "sex=X"], "sex must be M or F, got 'X'"),
        (["--demographics", "shoe=42"], "unknown field 'shoe'"),
    ],
)
def test_refused_mask_requests_are_one_line_errors(official, tmp_path, capsys, args, message):
    assert _generate(official, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_flagged_demographics_are_said_once_and_recorded(official, tmp_path, caplog):
    import logging

    args = ["--demographics", "age=95", "height=175"]
    with caplog.at_level(logging.WARNING):
        assert _generate(official, tmp_path / "out", *args) == 0
    warnings = json.loads((tmp_path / "out" / "sample_00000.json").read_text())["warnings"]
    assert any("age=95 years is outside the trained range [19, 87]" in w for w in warnings)
    assert any("height was almost never seen in training" in w for w in warnings)


def test_official_weights_without_a_database_say_how_to_get_it(official, tmp_path, capsys):
    root, overlay, *_ = official
    bare = tmp_path / "bare"
    shutil.copytree(root / "models", bare / "models")
    args = ["generate", "--config", str(overlay), "--weights", str(bare), "--output-dir", str(tmp_path / "o")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "no mask database beside the official weights" in err and "maisi download rflow-ct" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "o").exists()
    # demographics without the v2 generator (only the v1 mask model present)
    (bare / "models" / "mask_generation_diffusion_unet_v2.pt").unlink()
    assert cli.main([*args, "--demographics", "age=50"]) == 2
    assert "demographics need the v2 mask generator" in capsys.readouterr().err


def test_v2_mask_source_equals_the_official_loop(official):
    """The v2 mask source of a plan (official weights loaded strictly, the request's spacing, its condition, the
    noise of sample 0) against the official loop written on MONAI's classes and the published AdaGN description:
    decoded probabilities within 1e-4 and the same label map at the model's native grid."""
    from maisi.config import load_config
    from maisi.diffusion import randn
    from maisi.generation.masks import make_mask_source
    from maisi.generation.seeds import derive_seed, torch_generator
    from maisi.generation.weights import inspect_weights, load_weights

    root, overlay, _, (v2, nets, _) = official
    cfg = load_config(files=[overlay], overrides=[f"generate.weights={root}", "generate.mask_steps=3"])
    cfg.generate = dataclasses.replace(
        cfg.generate,
        organ_sizes={"hepatic tumor": 0.4},
        demographics={"age": 50.0, "sex": "M"},
        spacing=(1.5, 1.5, 2.0),
    )
    info = inspect_weights(root)
    model_set = load_weights(info, components=["mask_vae", "mask_unet_v2"], base=cfg.model)
    source = make_mask_source("model", cfg.generate, model_set=model_set, weights=info)
    assert source.generator == "v2" and source.tumor == labels.TUMORS["hepatic tumor"]
    with torch.no_grad():
        latent = source.sample_latent(0)
        logits = source.codec.decode(latent)
    noise = randn(
        (1, *cfg.model.mask_latent_shape),
        generator=torch_generator(derive_seed(cfg.generate.seed, 0, 0, stream="mask")),
    )
    condition = refv2.official_condition([["hepatic tumor", 0.4]], [["age", 50], ["sex", "M"]])
    reference = refv2.reference_mask_latent_v2(
        v2, condition, noise, num_inference_steps=3, guidance=2.0, spacing=(1.5, 1.5, 2.0)
    )
    assert (latent - reference).abs().max() <= 1e-4
    window, overlap = cfg.generate.decode_window, cfg.generate.decode_overlap
    probabilities, label = refv2.reference_mask_decode_v2(
        nets.mask_autoencoder, reference, cfg.model.mask_vae.scale_factor, window=window, overlap=overlap
    )
    assert (torch.softmax(logits, dim=1) - probabilities).abs().max() <= 1e-4
    # the same label map wherever the decision is made (random weights leave near-ties between the 125 classes,
    # which rounding may break either way: top-two margin under 1e-4)
    ours = source.decode(latent)
    top2 = probabilities[0].topk(2, dim=0).values
    decided = ((top2[0] - top2[1]) > 1e-4).numpy()
    assert np.array_equal(ours[decided], label[decided]) and decided.mean() > 0.99
