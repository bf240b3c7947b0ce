"""`maisi download` against a local fake hub folder: fetch, verify, skip, resume, reject corruption."""

from __future__ import annotations

import pytest

from maisi.cli import main
from maisi.networks.hub import HUB_REPO, DownloadError, FolderHub, HuggingFaceHub, download
from maisi.networks.official import OFFICIAL_FILES


@pytest.fixture
def fake_hub(tmp_path):
    root = tmp_path / "hub"
    models = root / HUB_REPO / "models"
    models.mkdir(parents=True)
    for i, name in enumerate(sorted(set(OFFICIAL_FILES["rflow-ct"].values()))):
        (models / name).write_bytes(bytes([i]) * (1000 + 37 * i))
    return root


def test_download_fetches_every_file(fake_hub, tmp_path):
    out = download("rflow-ct", directory=tmp_path / "w", hub=FolderHub(fake_hub), progress=False)
    assert sorted(p.name for p in out) == sorted(set(OFFICIAL_FILES["rflow-ct"].values()))
    for p in out:
        assert p.read_bytes() == (fake_hub / HUB_REPO / "models" / p.name).read_bytes()
    assert not list((tmp_path / "w" / "models").glob("*.part"))


def test_download_resumes_partial_file(fake_hub, tmp_path):
    models = tmp_path / "w" / "models"
    models.mkdir(parents=True)
    src = fake_hub / HUB_REPO / "models" / "autoencoder_v1.pt"
    (models / "autoencoder_v1.pt.part").write_bytes(src.read_bytes()[:500])

    class CountingHub(FolderHub):
        fetched: dict[str, int] = {}

        def fetch(self, repo, path, partial):
            self.fetched[path] = partial.stat().st_size if partial.exists() else 0
            super().fetch(repo, path, partial)

    hub = CountingHub(fake_hub)
    download("rflow-ct", directory=tmp_path / "w", hub=hub, progress=False)
    assert hub.fetched["models/autoencoder_v1.pt"] == 500  # resumed from the 500 bytes already there
    assert (models / "autoencoder_v1.pt").read_bytes() == src.read_bytes()


def test_download_skips_verified_files_and_replaces_bad_ones(fake_hub, tmp_path):
    download("rflow-ct", directory=tmp_path / "w", hub=FolderHub(fake_hub), progress=False)
    dest = tmp_path / "w" / "models" / "autoencoder_v1.pt"
    good = dest.read_bytes()
    dest.write_bytes(b"x" * len(good))  # same size, wrong content: the hash catches it
    download("rflow-ct", directory=tmp_path / "w", hub=FolderHub(fake_hub), progress=False)
    assert dest.read_bytes() == good


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
        download("rflow-ct", directory=tmp_path / "w", hub=FolderHub(fake_hub), progress=False)


def test_download_unknown_variant(tmp_path):
    with pytest.raises(DownloadError, match="unknown weights 'mri'"):
        download("mri", directory=tmp_path, hub=FolderHub(tmp_path))


def test_no_network_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    with pytest.raises(DownloadError, match="cannot reach the Hugging Face hub"):
        download("rflow-ct", directory=tmp_path, hub=HuggingFaceHub(), progress=False)


def test_cli_download_with_hub_folder(fake_hub, tmp_path, capsys):
    assert main(["download", "rflow-ct", "--dir", str(tmp_path / "w"), "--hub-folder", str(fake_hub)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 5 and all(p.endswith(".pt") for p in printed)
