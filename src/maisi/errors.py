"""Exception types shared across maisi.

Every user-facing error is a subclass of :class:`MaisiError` so the CLI can print a single clean line.
"""

from __future__ import annotations


class MaisiError(Exception):
    """Base class for errors caused by user input (files, configs, requests)."""


class ConfigError(MaisiError, ValueError):
    """A configuration value or key is invalid."""


class CheckpointError(MaisiError):
    """A checkpoint file cannot be read or does not match the network."""


class DataError(MaisiError, ValueError):
    """An input volume or label map is invalid."""


class RequestError(MaisiError, ValueError):
    """A generation request is invalid."""


class OutputError(MaisiError):
    """An output cannot be written (a file in the folder's place, no permission, a full disk)."""


class SamplingError(MaisiError):
    """Sampling or decoding produced non-finite values; nothing is written for that sample."""


class DownloadError(MaisiError):
    """A download failed (no network, missing file, size or hash mismatch, an unsafe or corrupt archive)."""


class NotImplementedYet(MaisiError):
    """A command exists in the CLI but is not built yet."""
