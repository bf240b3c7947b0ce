"""What a downloaded folder holds and supports: official variant detection (CT and MR) and `maisi info --weights`'s
flows and mask sources, read from the files present without loading them."""

from __future__ import annotations

import pytest

from maisi.cli import main
from maisi.networks.inventory import survey
from maisi.networks.official import official_dir, official_variant, official_variants
from maisi.networks.variants import FLOWS, VARIANTS


def _place(root, variant, *, skip=(), datasets=True, extracted=True):
    spec = VARIANTS[variant]
    for role, f in spec.model_files().items():
        if role not in skip:
            (root / f.path).parent.mkdir(parents=True, exist_ok=True)
            (root / f.path).write_bytes(b"pt")
    if datasets:
        for f in spec.dataset_files().values():
            (root / f.path).parent.mkdir(parents=True, exist_ok=True)
            (root / f.path).write_bytes(b"[]")
        if extracted and spec.archive is not None:
            (root / spec.archive.folder).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_official_variant_recognises_every_variant(tmp_path, variant):
    _place(tmp_path, variant)
    assert official_dir(tmp_path) == tmp_path / "models"
    assert official_variant(tmp_path) == variant and official_variants(tmp_path) == [variant]


def test_variant_detection_keeps_ct_behaviour(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "autoencoder_v1.pt").write_bytes(b"pt")  # shared by rflow-ct, ddpm-ct and brain MR: no evidence
    assert official_variant(tmp_path) == "rflow-ct"
    (models / "controlnet_3d_ddpm-ct.pt").write_bytes(b"pt")
    assert official_variant(tmp_path) == "ddpm-ct"
    (models / "diff_unet_3d_rflow-mr.pt").write_bytes(b"pt")
    assert official_variants(tmp_path) == ["ddpm-ct", "rflow-mr"]  # table order, first wins


def test_full_ct_folder_supports_every_flow(tmp_path):
    inv = survey(_place(tmp_path, "rflow-ct"))
    assert inv.layout == "official" and inv.variant == "rflow-ct"
    assert list(inv.components) == ["vae", "unet", "controlnet", "mask_vae", "mask_unet", "mask_unet_v2"]
    assert set(inv.datasets) == {"anatomy_sizes", "candidates", "mask_archive", "mask_folder"}
    assert inv.supported == list(FLOWS)


@pytest.mark.parametrize(
    "skip, datasets, extracted, lacking",
    [
        (("mask_unet_v2",), True, True, {"mask-model-v2": ("mask_unet_v2",)}),
        (
            ("controlnet", "mask_unet"),
            True,
            True,
            {"paired": ("controlnet",), "mask-model-v1": ("mask_unet",)},
        ),
        ((), False, False, {"mask-database": ("mask_folder", "candidates")}),
        ((), True, False, {"mask-database": ("mask_folder",)}),  # archive downloaded, not extracted
    ],
)
def test_ct_folder_flows_name_what_they_lack(tmp_path, skip, datasets, extracted, lacking):
    inv = survey(_place(tmp_path, "ddpm-ct", skip=skip, datasets=datasets, extracted=extracted))
    assert {f: m for f, m in inv.flows.items() if m} == lacking


@pytest.mark.parametrize("variant", ["rflow-mr", "rflow-mr-brain"])
def test_mr_folders_support_image_only(tmp_path, variant):
    inv = survey(_place(tmp_path, variant))
    assert inv.variant == variant and list(inv.components) == ["vae", "unet"]
    assert inv.flows == {"image-only": ()} and inv.supported == ["image-only"]


def test_maisi_layout_reads_the_mask_unet_variant(tmp_path):
    for comp, variant in (("vae", None), ("unet", "maisi"), ("mask_vae", None), ("mask_unet", "adagn")):
        (tmp_path / comp).mkdir()
        (tmp_path / comp / "config.json").write_text(f'{{"config": {{"variant": "{variant}"}}}}')
    inv = survey(tmp_path)
    assert inv.layout == "maisi" and inv.variant is None
    assert inv.supported == ["image-only", "mask-model-v2"]
    assert inv.flows["paired"] == ("controlnet",)


def test_info_lists_flows_and_mask_sources(tmp_path, capsys, monkeypatch):
    from maisi import system_info

    _place(tmp_path / "ct", "rflow-ct", skip=("mask_unet_v2",))
    _place(tmp_path / "mr", "rflow-mr")
    # the files are placeholders, not networks: parameter counting is test_checkpoint's business
    monkeypatch.setattr(system_info, "describe_weights", lambda d, base=None: [("vae", f"{d}/x.pt", 1000)])
    assert main(["info", "--weights", str(tmp_path / "ct"), str(tmp_path / "mr")]) == 0
    out = capsys.readouterr().out
    ct, mr = out.split(f"{tmp_path / 'mr'}: ")
    assert ct.startswith(f"{tmp_path / 'ct'}: official layout, variant rflow-ct\n")
    assert "  flows          paired, image-only\n" in ct
    assert "  mask sources   file, phantom, model-v1, database\n" in ct
    assert "  not supported  mask-model-v2 (needs mask_unet_v2)\n" in ct
    assert mr.startswith("official layout, variant rflow-mr\n")
    assert "  flows          image-only\n" in mr and "  mask sources   -\n" in mr
    (tmp_path / "empty").mkdir()
    assert system_info.describe_folder(tmp_path / "empty") == [
        f"{tmp_path / 'empty'}: no weights or official datasets found"
    ]
