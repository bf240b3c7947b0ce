"""Export a generation run folder to a training-set format, or open an exporter to add samples one at a time.

Every format has the same two-method interface — ``add(sample) -> {kind: path}`` and ``finish() -> summary`` —
so :func:`export_run` (and ``maisi generate --format``) never asks which format it drives.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from maisi.errors import DataError, RequestError
from maisi.export.samples import Sample, read_run

FORMATS = ("nnunet", "monai", "dicom")


class Exporter(Protocol):
    def add(self, sample: Sample) -> dict[str, Path]: ...

    def finish(self) -> dict[str, Any]: ...


def default_output(fmt: str, run_dir: str | os.PathLike) -> Path:
    """Where a format goes when no output is given: ``$nnUNet_raw`` (else ``RUN_DIR/nnUNet_raw``) for nnU-Net,
    the run folder itself for the MONAI datalist, ``RUN_DIR/dicom`` for DICOM."""
    run = Path(run_dir)
    if fmt == "nnunet":
        return Path(os.environ["nnUNet_raw"]) if os.environ.get("nnUNet_raw") else run / "nnUNet_raw"
    return run if fmt == "monai" else run / "dicom"


def open_exporter(
    fmt: str,
    output: str | os.PathLike,
    *,
    dataset_id: int | None = None,
    dataset_name: str | None = None,
    keep_only: Sequence[str] = (),
    first_case: int = 0,
    modality: str = "ct",
) -> Exporter:
    """An exporter of format ``fmt`` writing under ``output``; every process adding samples opens its own.

    Args:
        fmt: ``"nnunet"``, ``"monai"`` or ``"dicom"``.
        output: nnU-Net raw folder / datalist folder / DICOM folder.
        dataset_id, dataset_name: nnU-Net only, required there.
        keep_only: nnU-Net only: label names kept (renumbered 1..K); empty keeps the whole vocabulary.
        first_case: nnU-Net only: case number of sample index 0.
        modality: the images' modality (nnU-Net channel name).

    Raises:
        RequestError: an unknown format or an option the format does not take.
    """
    if fmt not in FORMATS:
        raise RequestError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "nnunet":
        from maisi.export.nnunet import NnunetDataset, channel_name

        if dataset_id is None or not dataset_name:
            raise RequestError("nnU-Net export needs a dataset id and name (--dataset-id, --dataset-name)")
        return NnunetDataset(
            output,
            dataset_id=dataset_id,
            name=dataset_name,
            keep_only=keep_only,
            first_case=first_case,
            channel=channel_name(modality),
        )
    given = [o for o, v in (("dataset id", dataset_id), ("dataset name", dataset_name)) if v is not None]
    given += ["keep-only"] if keep_only else []
    given += ["first case"] if first_case else []
    if given:
        raise RequestError(f"{', '.join(given)}: only for the nnunet format, not {fmt}")
    if fmt == "monai":
        from maisi.export.monai_datalist import MonaiDatalist

        return MonaiDatalist(output)
    from maisi.export.dicom import DicomExport

    return DicomExport(output)


def export_run(
    run_dir: str | os.PathLike,
    fmt: str,
    *,
    output: str | os.PathLike | None = None,
    keep_only: Sequence[str] = (),
    progress: Callable[[Sample, dict[str, Path]], None] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export every complete sample of a generation run folder; returns the exporter's summary.

    For nnU-Net without ``keep_only``, the labels are the run's own ``keep_only`` (recorded in every sidecar)
    when it had one, else the whole vocabulary. Exporting the same run again skips what was exported.

    Raises:
        DataError: the folder holds no complete sample, or samples of several modalities.
        RequestError: see :func:`open_exporter`.
    """
    samples = read_run(run_dir)
    modalities = sorted({s.modality for s in samples})
    if len(modalities) > 1:
        raise DataError(
            f"{run_dir}: samples of several modalities ({', '.join(modalities)}); export them apart"
        )
    if fmt == "nnunet" and not keep_only:
        keep_only = _recorded_keep_only(samples, run_dir)
    exporter = open_exporter(
        fmt,
        default_output(fmt, run_dir) if output is None else output,
        keep_only=keep_only,
        modality=modalities[0],
        **options,
    )
    for sample in samples:
        written = exporter.add(sample)
        if progress is not None:
            progress(sample, written)
    return exporter.finish()


def _recorded_keep_only(samples: list[Sample], run_dir) -> tuple[str, ...]:
    recorded = {tuple((s.sidecar.get("output") or {}).get("keep_only") or ()) for s in samples}
    if len(recorded) > 1:
        raise DataError(f"{run_dir}: samples were written with different --keep-only lists; pass --keep-only")
    return recorded.pop()
