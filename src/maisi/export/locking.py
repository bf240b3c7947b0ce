"""An index file (``dataset.json``, ``datalist.json``) shared by several processes: read-modify-write under an
exclusive lock, replaced atomically.

Every writer holds an exclusive ``flock`` on a sibling lock file (``.dataset.json.lock``) while it reads the
index, changes it and replaces it (temporary file + ``os.replace``), so torchrun ranks adding samples to one
dataset never lose each other's entries, and a reader never sees a half-written file. The lock file stays
behind (an empty file); the kernel releases the lock when a process dies, so no stale lock blocks a rerun.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from maisi.errors import DataError
from maisi.io import write_json


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s lock file (blocking until other holders release it)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.with_name(f".{target.name}.lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        _lock(fd)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def read_index(path: str | os.PathLike) -> dict[str, Any] | None:
    """An index file's content, None when absent.

    Raises:
        DataError: the file exists but is not a JSON object.
    """
    p = Path(path)
    if not p.exists():
        return None
    try:
        content = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{p}: unreadable ({type(e).__name__}); refusing to replace it") from None
    if not isinstance(content, dict):
        raise DataError(f"{p}: not a JSON object; refusing to replace it")
    return content


def update_index(
    path: str | os.PathLike, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
) -> dict[str, Any] | None:
    """Apply ``change(current) -> new`` to an index file under the lock; ``new`` None leaves it untouched.

    ``change`` may raise to refuse the update; the file then stays as it was. Returns the content after the call.
    """
    with exclusive_lock(path):
        current = read_index(path)
        new = change(None if current is None else json.loads(json.dumps(current)))
        if new is None or new == current:
            return current
        write_json(path, new, overwrite=True)
        return new
