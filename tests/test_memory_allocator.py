"""glibc's mmap threshold fixed for ``maisi generate`` (maisi.memory.allocator): blocks of 1 MiB and more come from
their own mmap regions after a block of that size was freed, where glibc's dynamic rule would serve them from the
heap (which then fragments over a long run of samples)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from maisi.memory import allocator

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

#: after freeing a 2 MiB block, how many mmap'd blocks a new 2 MiB block adds (mallinfo2's hblks)
PROBE = """
import ctypes, sys
import numpy as np
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "fix":
    from maisi.memory.allocator import fix_mmap_threshold
    assert fix_mmap_threshold()
a = np.ones(2 << 20, np.uint8); del a
before = libc.mallinfo2().hblks
b = np.ones(2 << 20, np.uint8)
print(libc.mallinfo2().hblks - before)
"""


def _probe(mode: str, **env: str) -> int:
    clean = {
        k: v for k, v in os.environ.items() if k not in (allocator.GLIBC_VARIABLE, allocator.MAISI_VARIABLE)
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_fixed_threshold_serves_freed_sizes_from_mmap():
    assert _probe("default") == 0  # glibc's dynamic threshold rose to 2 MiB: the heap serves it
    assert _probe("fix") == 1  # fixed at 1 MiB: its own mmap region, returned when freed


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_the_users_settings_win(monkeypatch):
    monkeypatch.setenv(allocator.GLIBC_VARIABLE, "65536")
    assert allocator.fix_mmap_threshold() is False
    monkeypatch.delenv(allocator.GLIBC_VARIABLE)
    monkeypatch.setenv(allocator.MAISI_VARIABLE, "default")
    assert allocator.fix_mmap_threshold() is False


def test_only_generate_processes_fix_it(monkeypatch):
    import maisi.cli as cli

    calls, ran = [], []
    monkeypatch.setattr(allocator, "fix_mmap_threshold", lambda: calls.append(1) or True)
    monkeypatch.setattr(cli, "main", lambda argv: ran.append(list(argv)) or 0)
    for argv in (["maisi", "info"], ["maisi", "generate", "--dry-run"], ["maisi"]):
        monkeypatch.setattr(sys, "argv", argv)
        assert cli.console_main() == 0
    assert len(calls) == 1 and ran == [["info"], ["generate", "--dry-run"], []]
