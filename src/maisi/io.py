"""File primitives every layer uses: atomic no-clobber writing, JSON reading with one-line errors, hashing, and
reading ``.pt`` files without unpickling code."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from maisi.errors import CheckpointError, DataError, MaisiError


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


def default_permissions(folder: str | os.PathLike) -> None:
    """Give a folder made with ``tempfile.mkdtemp`` (0700) and its files the usual permissions (0777 / 0666 less
    the umask) before it is moved into place, so that a checkpoint or model set is readable like any output."""
    mask = _umask()
    root = Path(folder)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)


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


def read_json(
    path: str | os.PathLike,
    *,
    error: type[MaisiError] = DataError,
    what: str = "JSON file",
    expect: type | None = None,
) -> Any:
    """The JSON value of a file; a missing, unreadable or malformed file (or, with ``expect``, a value of another
    type, e.g. ``dict`` for a JSON object) raises ``error`` naming it in one line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{p}: cannot read the {what} ({type(e).__name__}: {e})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if expect is not None and not isinstance(value, expect):
        kind = {dict: "a JSON object", list: "a JSON list"}.get(expect, expect.__name__)
        raise error(f"{p}: expected {kind} at top level, got {type(value).__name__}")
    return value


def sha256_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def numpy_safe_globals() -> list[Any]:
    """The numpy types ``.pt`` files may hold as scalars (e.g. ``scale_factor``): allow-listed, nothing else."""
    import numpy as np

    allowed: list[Any] = [np.dtype]
    try:
        allowed.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32")]
    return allowed


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with numpy scalars allow-listed; never runs pickled code.

    Raises:
        CheckpointError: missing file, corrupt file, or a file that needs arbitrary unpickling.
    """
    import pickle

    import torch

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        if not lines:  # not a pickle that asks for globals: the bytes are simply not a checkpoint
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint (corrupt or not a .pt file)"
            ) from None
        raise CheckpointError(
            f"{p}: refused to load: the file holds pickled Python objects that could run code ({lines[0][:160]})"
        ) from None
    except (
        Exception
    ) as e:  # untrusted bytes: torch's reader raises many types (RuntimeError, IndexError, ...)
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({first})") from None


def refuse_overwriting_inputs(
    outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None]
) -> None:
    """Raise :class:`OutputExistsError` when an output path is one of the inputs (the same path, a link to it or a
    hard link of it), whatever ``--overwrite`` says: outputs never replace inputs.

    Both lists are checked by resolved path and, for existing files, by device and inode.
    """
    inputs = [Path(p) for p in inputs if p is not None]
    by_path = {p.resolve(): p for p in inputs}
    by_inode = {}
    for p in inputs:
        try:
            st = p.stat()
            by_inode[(st.st_dev, st.st_ino)] = p
        except OSError:
            pass
    for out in map(Path, outputs):
        same = by_path.get(out.resolve())
        if same is None and out.exists():
            st = out.stat()
            same = by_inode.get((st.st_dev, st.st_ino))
        if same is not None:
            raise OutputExistsError(
                f"{out}: is the input {same}; refusing to write over an input (choose another output folder)"
            )
