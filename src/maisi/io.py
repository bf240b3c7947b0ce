"""Atomic, no-clobber file writing used by every output and checkpoint writer."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maisi.errors import MaisiError


class OutputExistsError(MaisiError, FileExistsError):
    """An output file already exists and overwriting was not requested."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one. On error the
    temporary file is removed and ``path`` is untouched.

    Raises:
        OutputExistsError: if ``path`` exists and ``overwrite`` is False.
    """
    target = Path(path)
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target}: already exists; refusing to overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    # keep the real suffix last so format-sniffing writers (nibabel) see ".nii.gz"
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp" + "".join(target.suffixes), dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], *, overwrite: bool = False) -> Path:
    """Call ``writer(tmp_path)`` then atomically move the result to ``path``."""
    with atomic_path(path, overwrite=overwrite) as tmp:
        writer(tmp)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, overwrite: bool = False) -> Path:
    """Write ``obj`` as indented JSON atomically."""

    def _write(tmp: Path) -> None:
        tmp.write_text(
            json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", encoding="utf-8"
        )

    return atomic_write(path, _write, overwrite=overwrite)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
