"""Synthetic data where it is used: nnU-Net v2 datasets, MONAI datalists, DICOM CT series with DICOM SEG.

Whole run folders: :func:`export_run`. One sample at a time (``maisi generate --format``, several processes):
:func:`open_exporter` once per process, then ``exporter.add(Sample.from_files(image, label, sidecar))`` per
finished sample and ``exporter.finish()`` at the end.
"""

from __future__ import annotations

from maisi.export.run import FORMATS, Exporter, default_output, export_run, open_exporter
from maisi.export.samples import Sample, read_run

__all__ = ["FORMATS", "Exporter", "Sample", "default_output", "export_run", "open_exporter", "read_run"]
