"""`maisi download` against a local fake hub folder: every variant's models and datasets land, the mask archive is
extracted, re-runs transfer nothing, partial files resume, corruption and shortages are refused."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from collections import namedtuple

import pytest

from maisi.cli import main
from maisi.networks.archive import MARKER
from maisi.networks.hub import HUB_REPO, DownloadError, FolderHub, HuggingFaceHub, download
from maisi.networks.official import OFFICIAL_FILES, official_variant
from maisi.networks.variants import CT_REPO, MR_BRAIN_REPO, MR_REPO, VARIANTS

ROOT = "all_masks_flexible_size_and_spacing_4000"
MASKS = {f"{ROOT}/masks/case_{i}_pseudo_label.nii.gz": bytes([i]) * (300 + i) for i in range(3)}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _candidates(n: int) -> bytes:
    entries = [
        {
            "pseudo_label_filename": f"masks/case_{i}_pseudo_label.nii.gz",
            "dim": [512, 512, 256],
            "spacing": [1.0, 1.0, 1.5],
            "label_list": [1, 3, 200],
        }
        for i in range(n)
    ]
    return json.dumps(entries).encode()


def _content(path: str, i: int) -> bytes:
    if path.endswith(".zip"):
        return _zip(MASKS)
    if path.endswith(".json"):
        return _candidates(3 if "4000" in path else 2) if "candidate" in path else b'[{"organ_size": [0.5]}]'
    return bytes([i % 256]) * (1000 + 37 * i)


@pytest.fixture
def fake_hub(tmp_path):
    """Every file of every variant, at its path in its repository."""
    root = tmp_path / "hub"
    for i, f in enumerate(dict.fromkeys(f for v in VARIANTS.values() for f in v.files())):
        p = root / f.repo / f.path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_content(f.path, i))
    return root


class CountingHub(FolderHub):
    """Records, per fetched path, how many bytes the partial file held when the transfer started."""

    def __init__(self, root):
        super().__init__(root)
        self.fetched: dict[str, int] = {}

    def fetch(self, repo, path, partial):
        self.fetched[path] = partial.stat().st_size if partial.exists() else 0
        super().fetch(repo, path, partial)


def _get(variant, tmp_path, hub_root, **kw):
    return download(variant, directory=tmp_path / "w", hub=FolderHub(hub_root), progress=False, **kw)


def test_download_ct_fetches_models_and_datasets_and_extracts(fake_hub, tmp_path):
    got = _get("rflow-ct", tmp_path, fake_hub)
    w = tmp_path / "w"
    expected = [w / f.path for f in VARIANTS["rflow-ct"].files()]
    assert got.files == got.fetched == expected
    names = {p.relative_to(w).as_posix() for p in expected}
    assert "models/mask_generation_diffusion_unet_v2.pt" in names
    assert {
        "datasets/all_anatomy_size_conditions.json",
        "datasets/all_masks_flexible_size_and_spacing_4000.zip",
        "datasets/candidate_masks_flexible_size_and_spacing_4000.json",
    } <= names
    for p in expected:
        assert p.read_bytes() == (fake_hub / CT_REPO / p.relative_to(w)).read_bytes()
    folder = w / "datasets" / ROOT
    assert got.extracted == [folder] and got.missing_optional == []
    for name, data in MASKS.items():  # the member root is stripped: the folder is the official base dir
        assert (folder / name.removeprefix(f"{ROOT}/")).read_bytes() == data
    assert (folder / MARKER).is_file()
    assert not list(w.rglob("*.part")) and not list(w.rglob(".*extracting"))
    assert official_variant(w) == "rflow-ct"


def test_rerun_transfers_and_extracts_nothing(fake_hub, tmp_path):
    _get("ddpm-ct", tmp_path, fake_hub)
    folder = tmp_path / "w" / "datasets" / ROOT
    stamp = (folder / MARKER).stat().st_mtime_ns
    hub = CountingHub(fake_hub)
    again = download("ddpm-ct", directory=tmp_path / "w", hub=hub, progress=False)
    assert hub.fetched == {} and again.fetched == []
    assert (folder / MARKER).stat().st_mtime_ns == stamp
    assert (tmp_path / "w" / "datasets" / "candidate_masks_flexible_size_and_spacing_3000.json").is_file()


def test_interrupted_archive_resumes_then_extracts(fake_hub, tmp_path):
    datasets = tmp_path / "w" / "datasets"
    datasets.mkdir(parents=True)
    src = fake_hub / CT_REPO / "datasets" / f"{ROOT}.zip"
    (datasets / f"{ROOT}.zip.part").write_bytes(src.read_bytes()[:200])
    hub = CountingHub(fake_hub)
    got = download("rflow-ct", directory=tmp_path / "w", hub=hub, progress=False)
    assert hub.fetched[f"datasets/{ROOT}.zip"] == 200  # resumed from the 200 bytes already there
    assert (datasets / f"{ROOT}.zip").read_bytes() == src.read_bytes()
    assert got.extracted and (got.extracted[0] / "masks" / "case_2_pseudo_label.nii.gz").is_file()


def test_models_only_skips_datasets(fake_hub, tmp_path):
    got = _get("rflow-ct", tmp_path, fake_hub, models_only=True)
    assert [p.name for p in got.files] == [f.name for f in VARIANTS["rflow-ct"].model_files().values()]
    assert got.extracted == [] and not (tmp_path / "w" / "datasets").exists()


@pytest.mark.parametrize(
    "variant, vae, unet",
    [
        ("rflow-mr", (MR_REPO, "autoencoder_v2.pt"), (MR_REPO, "diff_unet_3d_rflow-mr.pt")),
        (
            "rflow-mr-brain",
            (CT_REPO, "autoencoder_v1.pt"),
            (MR_BRAIN_REPO, "diff_unet_3d_rflow-mr-brain_v1.pt"),
        ),
    ],
)
def test_download_mr_variants(fake_hub, tmp_path, variant, vae, unet):
    got = _get(variant, tmp_path, fake_hub)
    models = tmp_path / "w" / "models"
    assert got.files == [models / vae[1], models / unet[1]] and got.extracted == []
    for (repo, name), p in zip((vae, unet), got.files):
        assert p.read_bytes() == (fake_hub / repo / "models" / name).read_bytes()
    assert sorted(p.name for p in models.iterdir()) == sorted([vae[1], unet[1]])
    assert official_variant(tmp_path / "w") == variant


def test_missing_optional_file_is_noted_not_fatal(fake_hub, tmp_path):
    (fake_hub / CT_REPO / "models" / "mask_generation_diffusion_unet_v2.pt").unlink()
    got = _get("rflow-ct", tmp_path, fake_hub, models_only=True)
    assert got.missing_optional == [f"{CT_REPO}/models/mask_generation_diffusion_unet_v2.pt"]
    assert len(got.files) == 5


def test_download_skips_verified_files_and_replaces_bad_ones(fake_hub, tmp_path):
    _get("rflow-ct", tmp_path, fake_hub, models_only=True)
    dest = tmp_path / "w" / "models" / "autoencoder_v1.pt"
    good = dest.read_bytes()
    dest.write_bytes(b"x" * len(good))  # same size, wrong content: the hash catches it
    got = _get("rflow-ct", tmp_path, fake_hub, models_only=True)
    assert dest.read_bytes() == good and got.fetched == [dest]


def test_download_rejects_hash_mismatch(fake_hub, tmp_path):
    class LyingHub(FolderHub):
        def fetch(self, repo, path, partial):
            partial.write_bytes(b"\xff" * (self.root / repo / path).stat().st_size)

    with pytest.raises(DownloadError, match=r"does not match the hub .*removed, run the command again"):
        download("rflow-ct", directory=tmp_path / "w", hub=LyingHub(fake_hub), progress=False)
    assert not list((tmp_path / "w" / "models").iterdir())


def test_download_reports_missing_file(fake_hub, tmp_path):
    (fake_hub / HUB_REPO / "models" / "controlnet_3d_rflow-ct.pt").unlink()
    with pytest.raises(DownloadError, match=r"file 'models/controlnet_3d_rflow-ct\.pt' not found on the hub"):
        _get("rflow-ct", tmp_path, fake_hub)


def test_download_checks_disk_space_first(fake_hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 100))
    with pytest.raises(DownloadError, match=r"needs 0\.00 GiB more, only 0\.00 GiB free"):
        _get("rflow-mr", tmp_path, fake_hub)
    assert not (tmp_path / "w" / "models").exists()


def test_repo_override_reads_every_file_from_the_mirror(fake_hub, tmp_path):
    mirror = fake_hub / "me" / "mirror" / "models"
    mirror.mkdir(parents=True)
    for repo, name in ((MR_REPO, "autoencoder_v2.pt"), (MR_REPO, "diff_unet_3d_rflow-mr.pt")):
        shutil.copy(fake_hub / repo / "models" / name, mirror / name)
    shutil.rmtree(fake_hub / MR_REPO)
    got = _get("rflow-mr", tmp_path, fake_hub, repo="me/mirror")
    assert [p.name for p in got.files] == ["autoencoder_v2.pt", "diff_unet_3d_rflow-mr.pt"]


def test_download_unknown_variant(tmp_path):
    with pytest.raises(DownloadError, match="unknown weights 'mri'"):
        download("mri", directory=tmp_path, hub=FolderHub(tmp_path))


def test_no_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face hub"):
        download("rflow-ct", directory=tmp_path, hub=HuggingFaceHub(), progress=False)


def test_huggingface_fetch_moves_the_staged_file(tmp_path, monkeypatch):
    import huggingface_hub

    def fake_download(*, repo_id, filename, local_dir, **kw):
        p = local_dir / filename
        p.parent.mkdir(parents=True)
        p.write_bytes(b"weights")
        return str(p)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    partial = tmp_path / "models" / "a.pt.part"
    partial.parent.mkdir()
    HuggingFaceHub().fetch(CT_REPO, "models/a.pt", partial)
    assert partial.read_bytes() == b"weights"
    assert not list((tmp_path / "models" / ".hf-download").rglob("*.pt"))  # moved, not copied


def test_official_files_table_is_derived_from_variants():
    assert OFFICIAL_FILES["rflow-ct"]["mask_unet"] == "mask_generation_diffusion_unet.pt"
    assert OFFICIAL_FILES["rflow-mr"] == {"vae": "autoencoder_v2.pt", "unet": "diff_unet_3d_rflow-mr.pt"}
    assert OFFICIAL_FILES["rflow-mr-brain"]["unet"] == "diff_unet_3d_rflow-mr-brain_v1.pt"
    assert OFFICIAL_FILES["rflow-ct"]["mask_unet_v2"] == OFFICIAL_FILES["ddpm-ct"]["mask_unet_v2"]
    assert OFFICIAL_FILES["rflow-ct"]["mask_unet_v2"] == "mask_generation_diffusion_unet_v2.pt"  # loaded too


def test_cli_download_with_hub_folder(fake_hub, tmp_path, capsys):
    argv = ["download", "rflow-ct", "--dir", str(tmp_path / "w"), "--hub-folder", str(fake_hub)]
    assert main([*argv, "--models-only"]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 6 and all(p.endswith(".pt") for p in printed)
    assert main(argv) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 10 and printed[-1].endswith(ROOT)


def test_cli_download_error_is_one_line(fake_hub, tmp_path, capsys):
    (fake_hub / MR_REPO / "models" / "autoencoder_v2.pt").unlink()
    argv = ["download", "rflow-mr", "--dir", str(tmp_path / "w"), "--hub-folder", str(fake_hub)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "autoencoder_v2.pt' not found on the hub" in err
