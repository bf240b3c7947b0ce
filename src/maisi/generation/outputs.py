"""Writing one generated sample: image NIfTI, label NIfTI, PNG preview, JSON sidecar — atomically, never overwriting.

File names derive from the sample index only (``sample_00003_image.nii.gz``, ``..._label.nii.gz``,
``..._preview.png``, ``sample_00003.json``), so processes sharing an output folder never collide. The sidecar is
written last: a sample whose sidecar exists is complete, and re-running the same command skips it (resume); a
sample with files but no sidecar is an interrupted write and is reported, not overwritten.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from maisi.io import OutputExistsError, atomic_write, write_json

PREFIX = "sample_"


def sample_paths(
    output_dir: str | os.PathLike,
    index: int,
    *,
    image_ext: str = ".nii.gz",
    label_ext: str | None = ".nii.gz",
    preview: bool = True,
) -> dict[str, Path]:
    """Output files of sample ``index`` (keys ``image``, ``label`` (unless ``label_ext`` is None: image-only
    generation), ``preview`` (when wanted), ``sidecar``)."""
    d = Path(output_dir)
    stem = f"{PREFIX}{index:05d}"
    paths = {"image": d / f"{stem}_image{image_ext}"}
    if label_ext is not None:
        paths["label"] = d / f"{stem}_label{label_ext}"
    if preview:
        paths["preview"] = d / f"{stem}_preview.png"
    paths["sidecar"] = d / f"{stem}.json"
    return paths


def read_sidecar(path: str | os.PathLike) -> dict[str, Any] | None:
    """A sidecar's content, or None when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def existing_state(paths: dict[str, Path], request_digest: str) -> str:
    """``"absent"`` (nothing written), ``"complete"`` (same request done before: skip) — or raise.

    Raises:
        OutputExistsError: files from an interrupted write, or a complete sample made by a different request.
    """
    present = [p for p in paths.values() if p.exists()]
    if not present:
        return "absent"
    sidecar = paths["sidecar"]
    if not sidecar.exists():
        raise OutputExistsError(
            f"{present[0]}: already exists (incomplete sample from an earlier run); remove it or "
            "choose another --output-dir"
        )
    meta = read_sidecar(sidecar)
    if meta is None or meta.get("request_digest") != request_digest:
        raise OutputExistsError(
            f"{sidecar}: already exists from a different request; refusing to overwrite "
            "(choose another --output-dir)"
        )
    return "complete"


def write_sample(
    paths: dict[str, Path],
    *,
    image: np.ndarray,
    label: np.ndarray | None,
    affine: np.ndarray,
    spacing: Any,
    sidecar: dict[str, Any],
    preview_label: np.ndarray | None = None,
    window: tuple[float, float] | None = None,
) -> dict[str, str]:
    """Write the files of one sample (sidecar last); returns ``{kind: path}``.

    The time the image, label and preview took is recorded into ``sidecar["timings_s"]["write_s"]`` and the file
    names into ``sidecar["files"]`` before the sidecar is written, so ``sidecar`` ends equal to the file's content.
    A write that fails or is interrupted removes what it had written of the sample (each file is atomic).

    Args:
        image: (X, Y, Z) int16 HU (or float32 for non-CT modalities).
        label: (X, Y, Z) uint8 MAISI ids (as written: full or filtered); None for image-only generation.
        preview_label: label map shown in the preview (default ``label``).
        window: intensity window of the preview (default CT's [-1000, 1000] HU).
    """
    from maisi.data.nifti import save_nifti
    from maisi.generation.preview import preview_png

    start = time.perf_counter()
    written: dict[str, str] = {}
    try:
        save_nifti(paths["image"], image, affine, dtype=image.dtype)
        written["image"] = str(paths["image"])
        if label is not None:
            save_nifti(paths["label"], label, affine, dtype=np.uint8)
            written["label"] = str(paths["label"])
        if "preview" in paths:
            png = preview_png(
                image, label if preview_label is None else preview_label, spacing, window=window
            )
            atomic_write(paths["preview"], lambda tmp: tmp.write_bytes(png))
            written["preview"] = str(paths["preview"])
        sidecar.setdefault("timings_s", {})["write_s"] = round(time.perf_counter() - start, 4)
        sidecar["files"] = {k: Path(v).name for k, v in {**written, "sidecar": paths["sidecar"]}.items()}
        write_json(paths["sidecar"], sidecar)
    except BaseException:  # a failed or interrupted write leaves no part of the sample (these files were new)
        for path in written.values():
            Path(path).unlink(missing_ok=True)
        raise
    written["sidecar"] = str(paths["sidecar"])
    return written


class BackgroundWriter:
    """Writes finished samples one at a time in a background thread (compression releases the GIL, so the next
    sample is sampled and decoded meanwhile), or inline.

    :meth:`submit` first waits for the write before it, so at most one sample is being written while the next
    is made (memory does not grow with the number of samples) and a failed write stops the run at the next
    sample, re-raised from :meth:`submit` or :meth:`finish`.
    """

    def __init__(self, write: Callable[[Any], Any], *, background: bool) -> None:
        self.write = write
        self.pool: Any = None
        self.pending: tuple[Any, Any] | None = None  # (item, future)
        if background:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maisi-write")

    def submit(self, item: Any) -> list[Any]:
        """Write ``item`` (inline or in the background); returns the items whose writes completed."""
        done = self.finish()
        if self.pool is None:
            self.write(item)
            return [*done, item]
        self.pending = (item, self.pool.submit(self.write, item))
        return done

    def finish(self) -> list[Any]:
        """Wait for the write in flight; returns its item (re-raising its error)."""
        if self.pending is None:
            return []
        item, future = self.pending
        self.pending = None
        future.result()
        return [item]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)


def write_run_config(cfg: Any, output_dir: str | os.PathLike) -> None:
    """The resolved config beside the samples: ``maisi generate --config DIR/config.json`` makes the same samples.
    Written atomically; rewritten when a later run into the folder was resolved differently."""
    from maisi.config import to_dict
    from maisi.errors import MaisiError
    from maisi.io import read_json

    path = Path(output_dir) / "config.json"
    resolved = to_dict(cfg)
    if path.is_file():
        try:
            if read_json(path) == resolved:
                return
        except MaisiError:
            pass  # unreadable: replaced below
    write_json(path, resolved, overwrite=True)
