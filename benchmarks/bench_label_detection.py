"""Time label-vocabulary detection on a 512 x 512 x 500 label map (the target: under 2 s on the 2-core CPU).

The map is TotalSegmentator's example segmentation (117-class ids, 41 present) resampled by nearest neighbour to
512 x 512 x 500 voxels over the same field of view. Stages: per-id statistics (:func:`label_stats`), the decision
between the built-in vocabularies (:func:`detect_vocabulary`), and the whole :func:`read_label_map` of an
uncompressed ``.nii`` (file reading and mapping included). Writes ``results/label_detection_512x512x500.json``.

    python benchmarks/bench_label_detection.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, write_results  # noqa: E402

SHAPE = (512, 512, 500)


def big_label_map() -> tuple[np.ndarray, np.ndarray]:
    seg = nib.load(str(ROOT / "tests" / "data" / "example_seg.nii.gz"))
    small = np.asarray(seg.dataobj).astype(np.uint8)
    index = [np.minimum(np.arange(n) * s // n, s - 1) for n, s in zip(SHAPE, small.shape)]
    big = np.ascontiguousarray(small[np.ix_(*index)])
    affine = seg.affine.copy()
    affine[:3, :3] = seg.affine[:3, :3] @ np.diag([s / n for s, n in zip(small.shape, SHAPE)])
    return big, affine


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from maisi.data.detection import detect_vocabulary
    from maisi.data.label_stats import label_stats
    from maisi.data.labelmaps import read_label_map

    label, affine = big_label_map()
    record: dict = {"machine": machine(), "shape": list(SHAPE), "ids_present": int(len(np.unique(label)) - 1)}
    t_stats, stats = timed(lambda: label_stats(label, affine), args.repeats)
    t_detect, detection = timed(lambda: detect_vocabulary(stats), args.repeats)
    fortran = np.asfortranarray(label)
    t_stats_f, _ = timed(lambda: label_stats(fortran, affine), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big_seg.nii"
        nib.save(nib.Nifti1Image(label, affine), str(path))
        t_read, read = timed(lambda: read_label_map(path), args.repeats)
    record["seconds"] = {
        "label_stats": round(t_stats, 3),
        "label_stats_fortran_order": round(t_stats_f, 3),
        "detect_vocabulary": round(t_detect, 3),
        "detection_total": round(t_stats + t_detect, 3),
        "read_label_map_total": round(t_read, 3),
    }
    record["vocabulary"] = detection.vocabulary.name
    record["evidence"] = detection.summary()["checks"]
    assert read.vocabulary == "totalsegmentator-v2"
    out = write_results("label_detection_512x512x500", record)
    print(
        f"detection {t_stats + t_detect:.2f} s (stats {t_stats:.2f} s, decision {t_detect:.3f} s); "
        f"read_label_map {t_read:.2f} s -> {out}"
    )


if __name__ == "__main__":
    main()
