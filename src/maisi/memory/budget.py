"""How much memory a run may use, and where it runs by default.

``--max-memory`` takes sizes as ``16GB``, ``16G``, ``16GiB``, ``512MB``, ``1.5TB`` or a number of bytes. Every unit
is binary (``GB`` = ``GiB`` = 2^30 bytes), as ``nvidia-smi``, ``free`` and the GPU makers' "16 GB" cards count.
The default budget is what the device has free now: on CUDA the free device memory (plus what this process's
allocator already holds), on the CPU the kernel's ``MemAvailable`` (within a cgroup limit where there is one) plus
what this process already holds.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from maisi.errors import RequestError
from maisi.performance import cuda_bf16_fast

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_memory(text: str | int | float) -> int:
    """Bytes of a memory size: ``"16GB"`` -> 17179869184 (binary units; a bare number is bytes).

    Raises:
        RequestError: text that is not a positive size.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = int(text)
    else:
        match = _SIZE.match(str(text))
        if match is None:
            raise RequestError(
                f"max-memory must be a size such as 16GB, 512MB or 1.5TB (binary units), got {text!r}"
            )
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise RequestError(f"max-memory must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """``17179869184`` -> ``'16.0 GiB'`` (MiB below 1 GiB)."""
    if abs(n) >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.0f} MiB"


def available_memory(device: torch.device | str) -> int:
    """Bytes this process may still use on ``device``: free CUDA memory plus this process's cached blocks, or on
    the CPU available RAM (cgroup-limited) plus this process's resident set."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return _host_available() + _own_rss()


def _host_available() -> int:
    available = _meminfo("MemAvailable")
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    limit = _cgroup_room()
    return int(min(available, limit) if limit is not None else available)


def _meminfo(key: str) -> int | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return 1024 * int(match.group(1)) if match else None


def _cgroup_room() -> int | None:
    """Bytes left under this cgroup's memory limit (cgroup v2 or v1), None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:
            return None
        return max(int(limit) - usage, 0)
    return None


def _own_rss() -> int:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    match = re.search(r"VmRSS:\s+(\d+) kB", text)
    return 1024 * int(match.group(1)) if match else 0


# ------------------------------------------------------------------------------------------------ defaults


def default_device() -> str:
    """The device ``maisi generate`` runs on by default: ``cuda`` where a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: torch.device | str) -> str:
    """The compute dtype by default on ``device``: the official half precision (``float16``) on a CUDA device with
    tensor cores (compute capability 7.0 or later), ``float32`` elsewhere (CPUs, older GPUs).

    bf16 is not the default even where :func:`cuda_bf16_fast`: the official MAISI inference runs fp16, and bf16
    keeps three fewer mantissa bits through the sampling loop.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability(device.index)
        return "float16" if major >= 7 else "float32"
    return "float32"


__all__ = [
    "available_memory",
    "cuda_bf16_fast",
    "default_device",
    "default_dtype",
    "format_bytes",
    "parse_memory",
]
