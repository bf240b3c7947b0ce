"""Fixtures of the fault suite: micro weights (shared with the generation tests) and their broken copies, a folder
of hostile inputs built once, and the time of one sampling step that output checks must stay well under."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from test_generation_common import session_weights


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """The micro networks are latency-bound: one thread, as the generation tests (restored after each module, so
    the tests after this folder run as they would without it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> Path:
    return session_weights(tmp_path_factory)


@pytest.fixture(scope="session")
def broken_weights(weights, tmp_path_factory) -> dict[str, Path]:
    """Copies of the micro weights: without the ControlNet, with a tensor of the wrong shape, with NaN in the
    VAE decoder, with NaN in the diffusion UNet."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("broken-weights")
    out = {name: root / name for name in ("missing", "shapes", "nan", "nan_unet")}
    for d in out.values():
        shutil.copytree(weights, d)
    shutil.rmtree(out["missing"] / "controlnet")
    unet = out["shapes"] / "unet" / "model.safetensors"
    tensors = load_file(str(unet))
    key = "down_blocks.0.downsampler.conv1.conv.bias"
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1)
    save_file(tensors, str(unet))
    for name, component, prefix in (("nan", "vae", "decoder"), ("nan_unet", "unet", "out")):
        path = out[name] / component / "model.safetensors"
        tensors = load_file(str(path))
        last = [k for k in tensors if k.startswith(prefix) and tensors[k].dim() > 1][-1]
        tensors[last] = torch.full_like(tensors[last], float("nan"))
        save_file(tensors, str(path))
    return out


def _nifti(path: Path, array: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(array, np.diag([3.0, 3.0, 3.0, 1.0]) if affine is None else affine), str(path))
    return path


def _header_only(shape: tuple[int, ...], tail: bytes = b"") -> bytes:
    """A gzip-compressed NIfTI-1 header claiming ``shape`` (uint8), followed by ``tail``."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header.set_sform(np.eye(4), code=1)
    buffer = io.BytesIO()
    header.write_to(buffer)
    return gzip.compress(buffer.getvalue() + b"\0" * 4 + tail, compresslevel=6)


def label_map(shape=(48, 48, 32)) -> np.ndarray:
    """Body (200) holding a liver (1) and a spleen (3), in MAISI ids."""
    label = np.zeros(shape, np.uint8)
    label[2:-2, 2:-2, :] = 200
    label[8:30, 8:30, 4:26] = 1
    label[30:40, 30:40, 6:20] = 3
    return label


@pytest.fixture(scope="session")
def hostile(tmp_path_factory) -> Path:
    """One folder of hostile and good inputs (every case checks afterwards that none of them changed)."""
    h = tmp_path_factory.mktemp("hostile")
    label = label_map()
    rng = np.random.default_rng(0)
    ct = rng.normal(0.0, 100.0, label.shape).astype(np.float32)
    _nifti(h / "good_label.nii.gz", label)
    _nifti(h / "good_image.nii.gz", ct)
    whole = (h / "good_label.nii.gz").read_bytes()
    (h / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    (h / "empty.nii.gz").write_bytes(b"")
    (h / "not_nifti.nii.gz").write_text("a text file, not a NIfTI volume\n")
    _nifti(h / "two_d.nii.gz", np.ones((8, 8), np.uint8))
    _nifti(h / "four_d.nii.gz", np.ones((8, 8, 8, 3), np.uint8))
    nan = ct.copy()
    nan[3, 4, 5] = np.nan
    _nifti(h / "nan_image.nii.gz", nan)
    _nifti(h / "float_label.nii.gz", label.astype(np.float32) + 0.5)
    _nifti(h / "negative_label.nii.gz", label.astype(np.int16) - 1)
    unknown = label.copy()
    unknown[unknown == 3] = 250
    _nifti(h / "unknown_ids.nii.gz", unknown)
    shifted = np.diag([3.0, 3.0, 3.0, 1.0])
    shifted[0, 3] = 5.0
    _nifti(h / "shifted_label.nii.gz", label, shifted)
    _nifti(h / "short_label.nii.gz", label[:16])
    # a singular sform (nibabel refuses to write one: the header bytes are edited)
    raw = bytearray(nib.Nifti1Image(label, np.eye(4)).to_bytes())
    raw[252:256] = np.array([0, 1], np.int16).tobytes()  # qform_code 0, sform_code 1
    raw[280:328] = np.array([3, 0, 0, 0] + [0] * 8, np.float32).tobytes()  # srow_x, srow_y, srow_z
    (h / "singular.nii.gz").write_bytes(gzip.compress(bytes(raw)))
    # a header claiming 4096^3 voxels and nothing else (~70 bytes), and a gzip bomb claiming 1536^3: 64 MiB of
    # zeros compressed to ~65 kB (a loader that inflates before checking the header would read them all)
    (h / "huge_header.nii.gz").write_bytes(_header_only((4096, 4096, 4096)))
    (h / "gzip_bomb.nii.gz").write_bytes(_header_only((1536, 1536, 1536), bytes(64 << 20)))
    torch.save(torch.full((1, 4, 16, 16, 8), float("nan")), h / "nan_noise.pt")
    torch.save(torch.randn(1, 4, 8, 8, 8), h / "wrong_shape_noise.pt")
    torch.save({"latent": _Payload(str(h / "PAYLOAD_RAN"))}, h / "pickled.pt")
    (h / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    (h / "malformed.json").write_text('{"generate": {"steps": 3,}}')
    (h / "unknown_key.json").write_text(json.dumps({"generate": {"stepz": 3}}))
    (h / "a_file").write_text("a regular file where a folder is expected\n")
    case = h / "case"
    case.mkdir()
    shutil.copy(h / "good_image.nii.gz", case / "case_image.nii.gz")
    shutil.copy(h / "good_label.nii.gz", case / "case_label.nii.gz")
    inplace = h / "inplace"
    inplace.mkdir()
    shutil.copy(h / "good_label.nii.gz", inplace / "sample_00000_label.nii.gz")
    for name, entry in (("db_outside", "../../etc/passwd"), ("db_absolute", "/etc/passwd")):
        (h / name).mkdir()
        index = {
            "format": "maisi-mask-index",
            "version": 1,
            "root": ".",
            "masks": [{"pseudo_label_filename": entry}],
        }
        (h / name / "masks_index.json").write_text(json.dumps(index))
    (h / "db_malformed").mkdir()
    (h / "db_malformed" / "masks_index.json").write_text('{"format": "maisi-mask-index", "masks": [')
    (h / "phantoms").mkdir()
    return h


class _Payload:
    """Unpickling this would create a file: proof that a pickled checkpoint ran code."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mknod, (self.marker,))


@pytest.fixture(scope="session")
def sampling_step_s(weights, tmp_path_factory) -> float:
    """Seconds of one sampling step of the micro request (a one-step run's ``sampling_s``); it also warms up the
    generation path, so the timings of the cases measure their checks, not first imports."""
    from maisi.generation import generate
    from test_generation_common import request

    out = tmp_path_factory.mktemp("reference")
    cfg = request(
        weights,
        out,
        steps=1,
        output_size=(64, 64, 32),
        spacing=(3.0, 3.0, 3.0),
        mask_source="phantom",
        body_region=("abdomen",),
        preview=False,
    )
    sample = generate(cfg)[0]
    return float(sample.metadata["timings_s"]["sampling_s"])
