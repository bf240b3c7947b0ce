"""Safe extraction of the mask archive (unsafe members refused, disk space checked, once, atomically) and the
candidate-mask list resolved to the extracted files (names that leave the mask folder refused)."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from maisi.errors import DataError
from maisi.networks.archive import MARKER, archive_folder_state, extract_zip
from maisi.networks.candidates import load_candidate_list, mask_folder
from maisi.networks.hub import DownloadError

ROOT = "all_masks_flexible_size_and_spacing_4000"


def _zip(path, members, *, links=()):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in links:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.mark.parametrize(
    "name, why",
    [
        (f"{ROOT}/../evil.txt", "'..' component"),
        ("../evil.txt", "'..' component"),
        ("/etc/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("a\\..\\..\\evil.txt", "'..' component"),
    ],
)
def test_unsafe_member_names_are_refused(tmp_path, name, why):
    archive = _zip(tmp_path / "m.zip", {f"{ROOT}/ok.nii.gz": b"x", name: b"evil"})
    target = tmp_path / "datasets" / ROOT
    with pytest.raises(DownloadError) as e:
        extract_zip(archive, target, member_root=ROOT)
    msg = str(e.value)
    assert str(archive) in msg and repr(name) in msg and why in msg and "\n" not in msg
    assert not target.exists() and not (tmp_path / "evil.txt").exists()
    assert not list((tmp_path / "datasets").glob(".*"))  # no staging folder left behind


def test_symlink_member_is_refused(tmp_path):
    archive = _zip(tmp_path / "m.zip", {f"{ROOT}/ok.nii.gz": b"x"}, links=[(f"{ROOT}/link", "/etc/passwd")])
    with pytest.raises(DownloadError, match=rf"refusing member '{ROOT}/link': symbolic link"):
        extract_zip(archive, tmp_path / "out", member_root=ROOT)
    assert not (tmp_path / "out").exists()


def test_disk_space_is_checked_before_extracting(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "m.zip", {f"{ROOT}/a.nii.gz": b"x" * 5000})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 4999))
    with pytest.raises(DownloadError, match=r"m\.zip: extracting needs .* GiB, only .* GiB free"):
        extract_zip(archive, tmp_path / "out", member_root=ROOT)
    assert not (tmp_path / "out").exists()


def test_extracts_once_and_strips_the_member_root(tmp_path):
    archive = _zip(
        tmp_path / "m.zip", {f"{ROOT}/": b"", f"{ROOT}/sub/a.nii.gz": b"a", f"{ROOT}/b.nii.gz": b"bb"}
    )
    out = tmp_path / "datasets" / ROOT
    first = extract_zip(archive, out, member_root=ROOT)
    assert first.extracted and first.files == 2 and archive_folder_state(out) == "extracted"
    assert (out / "sub" / "a.nii.gz").read_bytes() == b"a" and (out / "b.nii.gz").read_bytes() == b"bb"
    (out / "b.nii.gz").write_bytes(b"changed by the user")
    again = extract_zip(archive, out, member_root=ROOT)
    assert not again.extracted and (out / "b.nii.gz").read_bytes() == b"changed by the user"
    assert [p.name for p in out.parent.iterdir()] == [ROOT]  # no staging folder left beside it


def test_archive_without_the_member_root_is_extracted_as_is(tmp_path):
    archive = _zip(tmp_path / "m.zip", {"masks/a.nii.gz": b"a"})
    extract_zip(archive, tmp_path / "out", member_root=ROOT)
    assert (tmp_path / "out" / "masks" / "a.nii.gz").read_bytes() == b"a"


def test_existing_folder_without_marker(tmp_path):
    archive = _zip(tmp_path / "m.zip", {f"{ROOT}/a.nii.gz": b"a", f"{ROOT}/b.nii.gz": b"bb"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.nii.gz").write_bytes(b"a")
    with pytest.raises(
        DownloadError, match=r"exists but does not match m\.zip \(member '.*b\.nii\.gz' missing"
    ):
        extract_zip(archive, out, member_root=ROOT)
    (out / "b.nii.gz").write_bytes(b"bb")  # e.g. unzipped by the official script: complete, so adopted
    assert not extract_zip(archive, out, member_root=ROOT).extracted and (out / MARKER).is_file()


def test_new_archive_version_replaces_the_folder(tmp_path):
    out = tmp_path / "out"
    extract_zip(_zip(tmp_path / "m.zip", {f"{ROOT}/a.nii.gz": b"a"}), out, member_root=ROOT)
    res = extract_zip(_zip(tmp_path / "m.zip", {f"{ROOT}/c.nii.gz": b"c"}), out, member_root=ROOT)
    assert res.extracted and sorted(p.name for p in out.iterdir()) == [MARKER, "c.nii.gz"]


def test_corrupt_archive_is_a_download_error(tmp_path):
    bad = tmp_path / "m.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DownloadError, match="not a readable zip archive"):
        extract_zip(bad, tmp_path / "out")


# ------------------------------------------------------------------------------------------------------------------
# candidate list


def _weights(tmp_path, entries, *, files=("masks/a.nii.gz", "masks/b.nii.gz"), extract=True):
    w = tmp_path / "w"
    datasets = w / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "candidate_masks_flexible_size_and_spacing_4000.json").write_text(json.dumps(entries))
    archive = _zip(datasets / f"{ROOT}.zip", {f"{ROOT}/{f}": b"m" for f in files})
    if extract:
        extract_zip(archive, datasets / ROOT, member_root=ROOT)
    return w


def _entry(name, **kw):
    return {"pseudo_label_filename": name, "dim": [256, 256, 128], "spacing": [1.5, 1.5, 2.0], **kw}


def test_candidate_list_resolves_to_the_extracted_files(tmp_path):
    entries = [
        _entry("masks/a.nii.gz", label_list=[1, 200]),
        _entry("masks/b.nii.gz", label_filename="masks/a.nii.gz"),
    ]
    w = _weights(tmp_path, entries)
    got = load_candidate_list(w, "rflow-ct")
    folder = (w / "datasets" / ROOT).resolve()
    assert [e["path"] for e in got] == [
        str(folder / "masks" / "a.nii.gz"),
        str(folder / "masks" / "b.nii.gz"),
    ]
    assert got[1]["label_path"] == str(folder / "masks" / "a.nii.gz")
    assert got[0]["label_list"] == [1, 200] and got[0]["dim"] == [256, 256, 128]
    assert load_candidate_list(w) == got  # the variant defaults to the folder's (rflow-ct)


def test_candidate_list_extracts_a_downloaded_archive_on_first_use(tmp_path):
    w = _weights(tmp_path, [_entry("masks/a.nii.gz")], extract=False)
    with pytest.raises(DataError, match="mask folder not found"):
        mask_folder(w, "rflow-ct", extract=False)
    assert Path(load_candidate_list(w, "rflow-ct")[0]["path"]).is_file()
    assert archive_folder_state(w / "datasets" / ROOT) == "extracted"


@pytest.mark.parametrize("name", ["../outside.nii.gz", "/etc/passwd", "masks/../../outside.nii.gz", ""])
def test_candidate_outside_the_mask_folder_is_refused(tmp_path, name):
    w = _weights(tmp_path, [_entry("masks/a.nii.gz"), _entry(name)])
    (w / "datasets" / "outside.nii.gz").write_bytes(b"x")
    with pytest.raises(DataError, match=r"entry 1 pseudo_label_filename: ") as e:
        load_candidate_list(w, "rflow-ct")
    assert "\n" not in str(e.value)


def test_candidate_symlink_escaping_the_folder_is_refused(tmp_path):
    w = _weights(tmp_path, [_entry("masks/link.nii.gz")])
    (w / "outside.nii.gz").write_bytes(b"x")
    (w / "datasets" / ROOT / "masks" / "link.nii.gz").symlink_to(w / "outside.nii.gz")
    with pytest.raises(DataError, match="lies outside"):
        load_candidate_list(w, "rflow-ct")


def test_candidate_missing_files_and_bad_lists(tmp_path):
    w = _weights(tmp_path, [_entry("masks/a.nii.gz"), _entry("masks/zz.nii.gz")])
    with pytest.raises(DataError, match=r"1 of 2 label maps missing .*zz\.nii\.gz"):
        load_candidate_list(w, "rflow-ct")
    assert len(load_candidate_list(w, "rflow-ct", check_files=False)) == 2
    with pytest.raises(DataError, match="candidate mask list not found"):
        load_candidate_list(w, "ddpm-ct")  # its 3000-entry list was not downloaded
    with pytest.raises(DataError, match="has no mask database"):
        load_candidate_list(w, "rflow-mr")
    (w / "datasets" / "candidate_masks_flexible_size_and_spacing_4000.json").write_text('{"a": 1}')
    with pytest.raises(DataError, match="expected a JSON list"):
        load_candidate_list(w, "rflow-ct")
