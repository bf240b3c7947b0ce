"""A golden end-to-end generation: ``maisi generate`` on the shipped demo weights, pinned to numbers recorded before
the generation path was restructured. Any change of behaviour (seeds, mask source choice, conditioning, scale
factor, decoding, HU mapping) moves these numbers far beyond the tolerances, which only absorb the float rounding
differences of other CPUs' kernels."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from maisi import cli
from test_generation_common import one_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

#: recorded on main at 8d0a9c9 (before the one-way generation rewrite): per sample, the SHA-256 prefix of the
#: label bytes, the HU sum and sum of squares over the 64 x 64 x 32 volume, mean HU of liver (1), kidney (5), body
GOLDEN = {
    0: ("dfdc76d5236658d9", -6656451, 7610184661, {1: 193.225, 5: 206.773, 200: -59.03}),
    1: ("b58b9aac7d661afd", -9200075, 10074399171, {1: 151.36, 5: 196.85, 200: -59.683}),
}
VOXELS = 64 * 64 * 32


def test_demo_generation_matches_the_golden_numbers(tmp_path):
    out = tmp_path / "out"
    args = ["generate", "--output-size", "64", "64", "32", "--spacing", "3", "3", "3", "--steps", "3"]
    args += ["--seed", "11", "--body-region", "abdomen", "--num-samples", "2", "--mask-source", "phantom"]
    assert cli.main([*args, "--output-dir", str(out)]) == 0
    for index, (label_sha, total, squares, means) in GOLDEN.items():
        hu = np.asarray(nib.load(out / f"sample_{index:05d}_image.nii.gz").dataobj).astype(np.int64)
        label = np.asarray(nib.load(out / f"sample_{index:05d}_label.nii.gz").dataobj)
        assert hashlib.sha256(label.tobytes()).hexdigest()[:16] == label_sha
        # mean within 0.01 HU, RMS within 0.01 HU of the recorded volume
        assert abs(int(hu.sum()) - total) / VOXELS <= 0.01
        assert abs(np.sqrt((hu**2).sum() / VOXELS) - np.sqrt(squares / VOXELS)) <= 0.01
        for organ, mean in means.items():
            assert float(hu[label == organ].mean()) == pytest.approx(mean, abs=0.05)
