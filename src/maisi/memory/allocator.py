"""The C allocator's setting for long runs: a fixed mmap threshold, so many samples cost no more memory than a few.

glibc's malloc serves blocks above its mmap threshold from fresh ``mmap`` regions, returned to the system when
freed, and smaller ones from its heaps. Its threshold is dynamic: each time a large mmap'd block is freed, it rises
to that block's size (up to 32 MiB on 64-bit), so the next blocks of that size come from the heaps, where freed
space is kept and fragments. A run that makes sample after sample (the per-sample arrays of tens of MiB come and
go) then grows: ``benchmarks/bench_stream_memory.py`` measured the demo generator's peak RSS at 1.30 GiB for 2
samples and 1.38 GiB for 20 (+6.0 %; +21 % before the conditioning planes were freed before each decode); with the
threshold fixed at 1 MiB, 1.25 and 1.26 GiB (+0.7 %).

:func:`fix_mmap_threshold` fixes it (``mallopt(M_MMAP_THRESHOLD, 1 MiB)``, which also turns the dynamic rule off)
when the ``maisi`` program starts ``maisi generate`` (:func:`maisi.cli.console_main`; a library caller decides for
its own process). The cost is system time: every large block is mapped and unmapped afresh, about 6 s more system
CPU over a 4-sample, 10-step demo run of ~110 s; 64.2 s against 62.6 s for 20 samples of 2 steps. It does
nothing when the C library is not glibc, when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` variable
(theirs wins), or when ``MAISI_MALLOC=default`` asks to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

#: glibc's ``M_MMAP_THRESHOLD`` parameter number (malloc.h)
M_MMAP_THRESHOLD = -3
#: blocks of this size and above come from their own mmap regions, returned when freed
MMAP_THRESHOLD = 1 << 20
#: glibc's own environment variable for the same setting; when set, maisi leaves the allocator alone
GLIBC_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
#: ``MAISI_MALLOC=default`` keeps glibc's dynamic threshold
MAISI_VARIABLE = "MAISI_MALLOC"


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes for this process; returns whether it was set.

    Not set (False) on other C libraries and platforms, when ``MALLOC_MMAP_THRESHOLD_`` is in the environment
    (glibc read it at start-up) or when ``MAISI_MALLOC=default``.
    """
    if os.environ.get(GLIBC_VARIABLE) is not None:
        return False
    if os.environ.get(MAISI_VARIABLE, "").strip().lower() == "default":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1


__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]
