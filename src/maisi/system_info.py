"""What ``maisi info`` reports: versions, devices, CPU features, native kernels, installed weights."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

import torch

_PACKAGES = (
    "torch",
    "monai",
    "numpy",
    "scipy",
    "nibabel",
    "safetensors",
    "huggingface_hub",
    "einops",
    "tqdm",
    "tensorboard",
    "pillow",
)
_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "fma")


def versions() -> dict[str, str]:
    """Installed versions of maisi and its dependencies (``'missing'`` when absent)."""
    out = {"maisi": _version("maisi"), "python": platform.python_version()}
    for name in _PACKAGES:
        out[name] = _version(name)
    return out


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def cpu_flags() -> dict[str, bool]:
    """The CPU features that matter for speed (bf16 kernels, AMX), read from /proc/cpuinfo where available."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {f: f in flags for f in _CPU_FLAGS}


def native_kernels() -> dict[str, str]:
    """Each compiled CPU kernel of :mod:`maisi.kernels`: ``'built'`` (compiling it if needed) or why it is not."""
    from maisi.kernels import build

    out = {}
    for name in ("winograd3d", "group_norm"):
        out[name] = (
            "built" if build.load(name) is not None else f"unavailable: {build.unavailable_reason(name)}"
        )
    return out


def devices() -> list[dict[str, Any]]:
    """CPU and every CUDA / MPS device with its memory."""
    out: list[dict[str, Any]] = [
        {
            "device": "cpu",
            "name": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cores": os.cpu_count(),
        }
    ]
    if torch.cuda.is_available():
        from maisi.memory import cuda_bf16_fast, default_dtype

        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out.append(
                {
                    "device": f"cuda:{i}",
                    "name": p.name,
                    "memory_gb": round(p.total_memory / 2**30, 1),
                    "compute_capability": f"{p.major}.{p.minor}",
                    # native bf16 (compute capability >= 8); torch.cuda.is_bf16_supported() also counts emulation
                    "bf16": cuda_bf16_fast(i),
                    "default_dtype": default_dtype(f"cuda:{i}"),
                }
            )
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append({"device": "mps", "name": "Apple Metal"})
    return out


def generate_defaults() -> dict[str, str]:
    """What ``maisi generate --device auto --dtype auto`` resolves to here, and its default memory budget."""
    from maisi.memory import available_memory, default_device, default_dtype, format_bytes

    device = default_device()
    return {
        "device": device,
        "dtype": default_dtype(device),
        "max_memory": f"{format_bytes(available_memory(device))} (available now)",
    }


def installed_weights() -> dict[str, str]:
    """Known weight sets and where they are, with the flows each supports (or ``'not installed'``)."""
    from maisi.errors import MaisiError
    from maisi.networks.hub import default_weights_dir
    from maisi.networks.inventory import survey
    from maisi.networks.variants import VARIANTS

    out = {}
    for variant in VARIANTS:
        d = default_weights_dir(variant)
        try:
            inv = survey(d, variant)
        except MaisiError:
            inv = None
        if inv is None or not inv.components:
            out[variant] = "not installed"
        else:
            out[variant] = f"{d} (supports: {', '.join(inv.supported) or 'nothing yet'})"
    demo = Path(__file__).parent / "demo"
    out["demo"] = str(demo) if (demo / "vae" / "config.json").is_file() else "missing (incomplete install)"
    return out


#: mask-source flows (:data:`maisi.networks.variants.FLOWS`) -> the mask source they enable
_MASK_SOURCES = {"mask-model-v1": "model-v1", "mask-model-v2": "model-v2", "mask-database": "database"}


def describe_folder(directory: str | os.PathLike) -> list[str]:
    """What a weights folder holds and supports, without loading anything: one block of lines per official variant
    it holds (layout, variant, components, datasets, flows, mask sources, and what each unsupported flow lacks)."""
    from maisi.networks.inventory import survey

    first = survey(directory)
    if first.layout == "none":
        return [f"{first.root}: no weights or official datasets found"]
    others = [survey(directory, v) for v in first.variants if v != first.variant]
    lines = []
    for inv in [first, *others]:
        head = f"{inv.root}: {inv.layout} layout" + (f", variant {inv.variant}" if inv.variant else "")
        flows = [f for f in inv.supported if f not in _MASK_SOURCES]
        sources = (["file", "phantom"] if "paired" in flows else []) + [
            _MASK_SOURCES[f] for f in inv.supported if f in _MASK_SOURCES
        ]
        lacking = [f"{f} (needs {', '.join(m)})" for f, m in inv.flows.items() if m]
        lines += [
            head,
            f"  {'components':<14} {', '.join(inv.components) or '-'}",
            f"  {'datasets':<14} {', '.join(inv.datasets) or '-'}",
            f"  {'flows':<14} {', '.join(flows) or '-'}",
            f"  {'mask sources':<14} {', '.join(sources) or '-'}",
        ]
        if lacking:
            lines.append(f"  {'not supported':<14} {'; '.join(lacking)}")
    return lines


def variant_without_preset(directory: str | os.PathLike) -> str | None:
    """The official variant of a folder when it has no network preset (yet), so :func:`describe_weights` cannot
    build its networks without an explicit ``base``; None otherwise."""
    from maisi.config.presets import PRESETS
    from maisi.networks.inventory import survey

    inv = survey(directory)
    if inv.layout == "official" and inv.variant not in PRESETS:
        return inv.variant
    return None


def describe_weights(directory: str | os.PathLike, *, base=None) -> list[tuple[str, str, int]]:
    """Load every component in ``directory`` strictly; one (name, file, parameter count) per component.

    Args:
        base: network config (:class:`~maisi.config.schema.ModelConfig`) for official ``.pt`` files; default: the
            official preset of the variant found.
    """
    from maisi.networks.builders import count_parameters
    from maisi.networks.model_set import load_model_set

    ms = load_model_set(directory, base=base)
    return [(name, str(c.path), count_parameters(c.model)) for name, c in ms.components.items()]
