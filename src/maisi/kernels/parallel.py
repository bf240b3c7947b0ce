"""Split a range of independent work items over threads that call into the compiled kernels (ctypes releases the
GIL for the length of each call, so the threads run in parallel)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None or _pool._max_workers < threads:
            _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="maisi-kernel")
        return _pool


def split(fn: Callable[..., None], begin: int, end: int, threads: int, *, indexed: bool = False) -> None:
    """``fn(b, e)`` over at most ``threads`` contiguous slices of [begin, end); returns when all are done.

    With ``indexed``, ``fn(i, b, e)`` also gets the slice's index ``i`` (< ``threads``), e.g. to pick its own
    scratch memory.
    """
    n = end - begin
    threads = max(1, min(threads, n))
    bounds = [begin + (n * i) // threads for i in range(threads + 1)]
    args = [((i,) if indexed else ()) + (bounds[i], bounds[i + 1]) for i in range(threads)]
    if threads == 1:
        fn(*args[0])
        return
    futures = [_executor(threads).submit(fn, *a) for a in args]
    for f in futures:
        f.result()


__all__ = ["split"]
