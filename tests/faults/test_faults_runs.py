"""Faults met during a run, in-process: garbage that must not be written, writes that fail or are interrupted, the
leftovers of an interrupted run, a sample another run is writing, a full disk, a read-only folder, a mask database
whose files changed after indexing, what ``maisi info`` says of a missing component, and torchrun's warnings."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest
from faults_common import (
    GENERATE,
    PHANTOM,
    complete_samples,
    error_message,
    no_samples,
    run_cli,
)


def _generate(weights, out, *extra):
    return [*GENERATE, "--weights", weights, "--output-dir", out, *extra]


def test_an_oblique_mask_keeps_its_direction(weights, hostile, tmp_path, capsys):
    """An oblique label map (rotated 30 degrees about z) is generated on, and the samples keep its direction."""
    rotation = np.eye(4)
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    rotation[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) * 3.0
    mask = tmp_path / "oblique.nii.gz"
    nib.save(
        nib.Nifti1Image(nib.load(str(hostile / "good_label.nii.gz")).get_fdata().astype(np.uint8), rotation),
        mask,
    )
    out = tmp_path / "out"
    result = run_cli(_generate(weights, out, "--label-set", "maisi", "--mask", mask), capsys)
    assert result.rc == 0, result.err
    assert complete_samples(out) == {0}
    for kind in ("image", "label"):
        written = nib.load(str(out / f"sample_00000_{kind}.nii.gz")).affine
        np.testing.assert_allclose(written[:3, :3], rotation[:3, :3], atol=1e-4)


@pytest.mark.parametrize(
    "broken, message",
    [
        ("nan_unet", "the sampler's latent has 8192 NaN/inf values"),
        ("nan", "the decoded image has 131072 NaN/inf values"),
    ],
)
def test_non_finite_sampling_writes_nothing(broken_weights, broken, message, tmp_path, capsys):
    """NaN in the UNet or the VAE decoder: SamplingError in one line, no sample file (was: an all-0 HU image, exit
    0)."""
    out = tmp_path / "out"
    result = run_cli(_generate(broken_weights[broken], out, *PHANTOM), capsys)
    assert error_message(result, "generate").startswith(f"{message}; nothing was written for this sample")
    no_samples(out)


def test_an_interrupted_write_leaves_no_part_of_the_sample(weights, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the label file is written: the image already written is removed, no temporary is left, and
    the same command then makes the sample."""
    import maisi.data.nifti as nifti

    real = nifti.save_nifti

    def interrupted_at_the_label(path, *args, **kwargs):
        if "_label" in str(path):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    out = tmp_path / "out"
    argv = _generate(weights, out, *PHANTOM)
    monkeypatch.setattr(nifti, "save_nifti", interrupted_at_the_label)
    result = run_cli(argv, capsys)
    assert result.rc == 130 and result.err.strip().splitlines()[-1] == "maisi generate: interrupted", (
        result.err
    )
    assert complete_samples(out) == set() and not list(out.glob("sample_*"))
    monkeypatch.setattr(nifti, "save_nifti", real)
    assert run_cli(argv, capsys).rc == 0
    assert complete_samples(out) == {0} and not list(out.glob(".sample_*"))


def test_the_next_run_removes_the_temporaries_of_an_interrupted_one(weights, tmp_path, capsys):
    """Hidden temporaries and an unheld lock left by a killed run are removed by the run that claims the sample."""
    out = tmp_path / "out"
    out.mkdir()
    stale = [
        ".sample_00000_image.nii.gz.k3x9q2.tmp.nii.gz",
        ".sample_00000.json.p0w7ze.tmp.json",
        ".sample_00001_label.nii.gz.a1b2c3.tmp.nii.gz",
        ".sample_00000.lock",
    ]
    for name in stale:
        (out / name).write_bytes(b"\x1f\x8b half a file")
    result = run_cli(_generate(weights, out, *PHANTOM, "--num-samples", "2"), capsys)
    assert result.rc == 0, result.err
    assert complete_samples(out) == {0, 1}
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_sample_another_run_is_writing_is_left_to_it(weights, tmp_path, capsys):
    """A second run finding sample 0 half-written under another live run's lock makes the other samples and exits
    0 (was: exit 2, 'incomplete sample from an earlier run')."""
    from maisi.generation.output_dir import SampleLock

    out = tmp_path / "out"
    out.mkdir()
    other = SampleLock(out, 0)
    assert other.acquire()  # flock: held by this open file, so the run below sees another holder
    try:
        partial = np.zeros((4, 4, 4), np.int16)  # the other run's image, its sidecar not written yet
        nib.save(nib.Nifti1Image(partial, np.eye(4)), str(out / "sample_00000_image.nii.gz"))
        result = run_cli(_generate(weights, out, *PHANTOM, "--num-samples", "2"), capsys)
        assert result.rc == 0, result.err
        assert [line.split(":")[0] for line in result.out.splitlines()] == ["memory plan", "sample 1"]
        assert (out / "sample_00000_image.nii.gz").is_file() and not (out / "sample_00000.json").exists()
    finally:
        other.release(done=False)


def test_info_says_which_component_is_missing(broken_weights, capsys):
    result = run_cli(["info", "--weights", broken_weights["missing"]], capsys)
    assert result.rc == 0, result.err
    assert "components     vae, unet, mask_vae, mask_unet" in result.out
    assert "not supported  paired (needs controlnet)" in result.out


def test_warnings_come_from_rank_0_only(weights, tmp_path, capsys, caplog, monkeypatch):
    """Under torchrun every rank makes its share; the request's warnings are said by rank 0 only."""
    out = tmp_path / "out"
    argv = _generate(weights, out, *PHANTOM, "--num-samples", "2")
    said = {}
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            result = run_cli(argv, capsys)
        assert result.rc == 0, result.err
        lines = result.out.splitlines()  # the plan is said by rank 0 only, then each rank's sample
        assert [line.split(":")[0] for line in lines] == (["memory plan"] if rank == 0 else []) + [
            f"sample {rank}"
        ]
        said[rank] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said[1] == [] and any("field of view" in m for m in said[0]), said
    assert complete_samples(out) == {0, 1}


def test_database_masks_are_read_again_not_trusted(hostile, weights, tmp_path, capsys):
    """An indexed mask replaced after indexing by one holding an id outside its recorded vocabulary is refused when
    read, not taken on the index's word."""
    db = tmp_path / "db"
    db.mkdir()
    shutil.copy(hostile / "good_label.nii.gz", db / "m.nii.gz")
    assert run_cli(["masks", "index", db, "--label-set", "maisi"], capsys).rc == 0
    assert json.loads((db / "masks_index.json").read_text())["masks"][0]["vocabulary"] == "maisi"
    shutil.copy(hostile / "unknown_ids.nii.gz", db / "m.nii.gz")
    out = tmp_path / "out"
    message = error_message(run_cli(_generate(weights, out, "--mask-database", db), capsys), "generate")
    assert (
        f"no candidate mask fits the request ({db}/m.nii.gz: 1 label without a MAISI id under maisi: 250"
        in message
    )
    no_samples(out)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused_before_loading(weights, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        message = error_message(run_cli(_generate(weights, folder / "out", *PHANTOM), capsys), "generate")
        assert message.startswith(f"{folder / 'out'}: cannot write there (Permission denied)")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root and a platform that allows mounting; skipped otherwise)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {getattr(e, 'stderr', b'') or e}")
    yield mount
    if subprocess.run(["umount", str(mount)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_is_refused_before_loading(weights, small_disk, sampling_step_s, capsys, monkeypatch):
    monkeypatch.setattr(
        "maisi.networks.model_set.load_model_set",
        lambda *a, **k: pytest.fail("networks loaded before the refusal"),
    )
    out = small_disk / "out"
    result = run_cli(_generate(weights, out, *PHANTOM), capsys)
    message = error_message(result, "generate")
    assert (
        message
        == f"{out}: 2 MiB free, the samples need about 3 MiB; free space or choose another --output-dir"
    )
    assert result.seconds < sampling_step_s and list(small_disk.iterdir()) == []


def test_a_disk_filling_up_during_the_run_stops_it_at_the_failed_write(
    weights, small_disk, capsys, monkeypatch
):
    """Another process fills the disk once the folder was checked: the first write fails, the run stops at once
    with one line (was: an ENOSPC traceback at the end), and no part of the sample is left."""
    import maisi.generation.output_dir as output_dir

    checked = output_dir.prepare_output_dir

    def then_filled(folder, *, needed_bytes=0):
        result = checked(folder, needed_bytes=0)
        free = shutil.disk_usage(small_disk).free
        (small_disk / "filler").write_bytes(bytes(free - 40 * 1024))  # room for config.json, not for a sample
        return result

    monkeypatch.setattr(output_dir, "prepare_output_dir", then_filled)
    out = small_disk / "out"
    message = error_message(
        run_cli(_generate(weights, out, *PHANTOM, "--num-samples", "2"), capsys), "generate"
    )
    assert message == f"{out}: cannot write sample 0 (No space left on device); the run stopped"
    no_samples(out)
    assert complete_samples(out) == set()
    held = [
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in os.listdir("/proc/self/fd")
        if _exists(f"/proc/self/fd/{fd}")
    ]
    assert not [f for f in held if f.startswith(str(small_disk))], held  # no removed temporary kept open


def _exists(link: str) -> bool:
    try:
        os.readlink(link)
    except OSError:
        return False
    return True
