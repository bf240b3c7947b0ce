"""The shipped demo model set (``src/maisi/demo/``), its preset, the recipe's export step and the CLI default."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from maisi import cli
from maisi.config import preset
from maisi.generation.weights import DEMO_DIR
from maisi.labels import SIZE_SLOTS
from test_generation_common import build_model_set, micro_config

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("vae", "unet", "controlnet", "mask_vae", "mask_unet")


def test_demo_preset_is_tiny_networks_with_128_cubed_requests():
    demo, tiny = preset("demo"), preset("tiny")
    assert demo.model == tiny.model and demo.preset == "demo"
    g = demo.generate
    assert g.output_size == (128, 128, 128) and g.spacing == (3.0, 3.0, 3.0) and g.steps == 30


def test_generate_starts_from_the_demo_preset_only_for_demo_weights(capsys, tmp_path):
    assert cli.main(["generate", "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "demo" and cfg["generate"]["output_size"] == [128, 128, 128]
    assert cli.main(["generate", "--weights", str(DEMO_DIR), "--dry-run"]) == 0  # a folder, not the name demo
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["preset"] == "rflow-ct" and cfg["generate"]["output_size"] == [256, 256, 256]
    assert cli.main(["generate", "--preset", "tiny", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "tiny"


def _export_module():
    spec = importlib.util.spec_from_file_location("demo_export", ROOT / "recipes" / "demo" / "export.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_recipe_export_merges_the_runs_in_fp16(tmp_path):
    from safetensors.torch import load_file

    from maisi.data.phantom import write_phantoms
    from maisi.networks.model_set import load_model_set

    cfg = micro_config()
    image = build_model_set(tmp_path / "image", cfg, mask=False)
    both = build_model_set(tmp_path / "both", cfg, seed=1)
    masks = tmp_path / "masks"
    write_phantoms(num=2, output_dir=masks, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0), seed=0)
    out = tmp_path / "demo"
    export = _export_module()
    args = ["--image", str(image), "--mask", str(both), "--sizes", str(masks), "--output", str(out)]
    assert export.main([*args, "--size-seeds", "3", "--size-steps", "2"]) == 0
    ms = load_model_set(out)
    # the mask model's size response, measured on the exported set, is declared in its extra
    response = ms.components["mask_unet"].extra["size_response"]
    liver = [
        v["organ_size"][SIZE_SLOTS.index("liver")]
        for v in json.loads((out / "anatomy_size_conditions.json").read_text())
    ]
    assert response["requested"] == pytest.approx(np.linspace(min(liver), max(liver), 5).tolist(), abs=1e-4)
    assert response["seeds"] == [3] and response["steps"] == 2 and len(response["realised_ml"][0]) == 5
    assert response["follows_sizes"] == (response["mean_spearman"] >= 0.8)
    assert sorted(ms.components) == sorted(COMPONENTS)
    for name in COMPONENTS:
        state = load_file(str(out / name / "model.safetensors"))
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    src_img, src_mask = load_model_set(image), load_model_set(both)
    for name, src in (("unet", src_img), ("mask_unet", src_mask)):
        a, b = ms[name].state_dict(), src[name].state_dict()
        assert all(torch.allclose(a[k], b[k].half().float()) for k in a)
    vectors = json.loads((out / "anatomy_size_conditions.json").read_text())
    assert len(vectors) == 2 and all(len(v["organ_size"]) == 10 for v in vectors)
    # an existing model set is not replaced without --overwrite
    assert export.main(args) == 1
    assert sorted(ms.components) == sorted(load_model_set(out).components)


# ------------------------------------------------------------------------------------------------- shipped weights


def test_shipped_demo_weights_load_strictly_and_fit_the_budget():
    from safetensors.torch import load_file

    from maisi.generation.weights import load_weights

    files = [f for f in DEMO_DIR.rglob("*") if f.is_file()]
    total = sum(f.stat().st_size for f in files)
    assert total <= 25 * 1024**2, f"demo folder is {total / 1e6:.1f} MB"
    ms = load_weights("demo", components=COMPONENTS)
    assert sorted(ms.components) == sorted(COMPONENTS)
    assert ms.config.unet == preset("demo").model.unet  # the networks of the demo preset
    assert ms.config.vae.scale_factor != 1.0 and ms.config.mask_vae.scale_factor != 1.0
    assert ms.components["mask_unet"].extra["spacing"] == 6.0
    for name in COMPONENTS:
        state = load_file(str(DEMO_DIR / name / "model.safetensors"))
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert (DEMO_DIR / "anatomy_size_conditions.json").is_file()
    assert (DEMO_DIR / "evaluation" / "report.md").is_file()


def test_shipped_demo_generates_a_paired_sample(tmp_path):
    """The demo networks end to end on a small request (a 128 x 128 x 32 slab at 3 mm, 4 steps): a CT in HU range
    and its mask."""
    import dataclasses

    from maisi.generation import generate

    cfg = preset("demo")
    cfg.generate = dataclasses.replace(
        cfg.generate, output_size=(128, 128, 32), steps=4, output_dir=str(tmp_path / "out"), qc=False, seed=3
    )
    s = generate(cfg)[0]
    image, label = s.image, s.condition
    assert image.shape == (128, 128, 32) and label.shape == (128, 128, 32) and image.dtype == np.int16
    from maisi import labels

    def median(ids):
        return float(np.median(image[np.isin(label, ids)]))

    # air outside the body, soft tissue in it, aerated lungs, organs brighter than fat-rich body: the contrasts
    # of the phantoms the model learned from (a generator ignoring its label map gives none of these)
    assert median((0,)) == -1000.0 and -300.0 < median((labels.BODY,)) < 100.0
    assert median(labels.LUNG_LOBES) < -700.0
    assert median((1,)) > median((labels.BODY,)) + 60.0  # liver
    assert 0.0 < median((3,)) < 250.0 and 0.0 < median((5, 14)) < 250.0  # spleen, kidneys


def test_sizes_requested_with_the_demo_set_get_phantom_masks_and_other_sets_their_mask_model(tmp_path):
    """The demo's mask model does not follow the size vector, and its weights say so (``size_response``, measured
    by the recipe's export): ``auto`` gives phantom masks (which honour sizes) with it. A set whose mask model
    declares nothing (official weights) or declares that it follows sizes gets its mask model."""
    import shutil

    from maisi.config.schema import GenerateConfig
    from maisi.generation.masks import choose_source_kind
    from maisi.generation.weights import inspect_weights
    from maisi.io import write_json

    sized = GenerateConfig(organ_sizes={"liver": 0.9})
    demo = inspect_weights("demo")  # read from the config files, no network loaded
    response = demo.extras["mask_unet"]["size_response"]
    assert response["anatomy"] == "liver" and response["follows_sizes"] is False
    assert response["mean_spearman"] < 0.8 and len(response["realised_ml"]) == len(response["seeds"]) >= 2
    assert choose_source_kind(sized, demo) == "phantom"
    assert choose_source_kind(GenerateConfig(organ_sizes={"liver": 0.9}, mask_source="model"), demo) == "model"
    mine = shutil.copytree(DEMO_DIR, tmp_path / "mine")
    meta_path = mine / "mask_unet" / "config.json"
    meta = json.loads(meta_path.read_text())
    assert choose_source_kind(sized, inspect_weights(mine)) == "phantom"
    for declared in (None, True):
        if declared is None:
            meta["extra"].pop("size_response")
        else:
            meta["extra"]["size_response"] = {**response, "follows_sizes": True}
        write_json(meta_path, meta, overwrite=True)
        copy = inspect_weights(mine)
        assert choose_source_kind(sized, copy) == "model"
        assert choose_source_kind(GenerateConfig(), copy) == "phantom"
    # without a mask model the sizes go to phantoms, and the model source is refused before any loading
    shutil.rmtree(mine / "mask_unet")
    assert choose_source_kind(sized, inspect_weights(mine)) == "phantom"


def test_recipe_overlays_load_over_the_demo_preset():
    """Every overlay of the recipe resolves over the ``demo`` preset (an unknown or mistyped key is an error), and
    each holds only keys it changes."""
    from maisi.config import load_config
    from maisi.config.loading import to_dict

    base = to_dict(preset("demo"))
    overlays = sorted((ROOT / "recipes" / "demo").glob("*.json"))
    assert len(overlays) >= 8
    for path in overlays:
        cfg = to_dict(load_config(preset="demo", files=[path]))
        for section, keys in json.loads(path.read_text()).items():
            for key in keys:
                assert cfg[section][key] != base[section][key], f"{path.name}: {section}.{key} is the preset's value"
