"""Fixed initial latents: reading them from ``.pt``, ``.npy`` or ``.safetensors`` files and checking their shape.

A file holds one tensor ``(C, x, y, z)`` for one sample or ``(N, C, x, y, z)`` for samples ``0 .. N-1``; a
``.pt`` / ``.safetensors`` file may hold a dict with one tensor or a ``noise`` / ``initial_noise`` key. ``.pt``
files are read with ``weights_only=True`` (no pickled code runs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from maisi.errors import DataError, MaisiError, RequestError

KEYS = ("initial_noise", "noise", "latent", "latents")


def _pick(obj, source: str) -> torch.Tensor:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        for k in KEYS:
            if k in tensors:
                return tensors[k]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise DataError(
            f"{source}: expected one tensor or a key among {list(KEYS)}, found keys {sorted(obj)[:8]}"
        )
    raise DataError(f"{source}: expected a tensor, got {type(obj).__name__}")


def load_noise(path: str | os.PathLike) -> torch.Tensor:
    """Read an initial latent file as float32.

    Raises:
        DataError: missing or unreadable file, unsupported suffix, no tensor inside.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: initial noise file not found")
    suffix = p.suffix.lower()
    try:
        if suffix in (".pt", ".pth"):
            from maisi.io import read_torch_file

            tensor = _pick(read_torch_file(p), str(p))
        elif suffix == ".npy":
            tensor = torch.from_numpy(np.load(p, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensor = _pick(load_file(str(p)), str(p))
        else:
            raise DataError(f"{p}: initial noise must be a .pt, .npy or .safetensors file")
    except MaisiError as e:
        raise DataError(str(e)) from None
    except Exception as e:  # corrupt numpy / safetensors files raise many types
        raise DataError(
            f"{p}: not a readable tensor file ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
        ) from None
    if not tensor.is_floating_point():
        raise DataError(f"{p}: initial noise must be floating point, got {tensor.dtype}")
    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise DataError(f"{p}: initial noise holds {bad} NaN/inf values")
    return tensor.float()


def noise_for(
    initial: torch.Tensor, index: int, shape: Sequence[int], *, source: str = "initial_noise"
) -> torch.Tensor:
    """The ``(C, x, y, z)`` latent of sample ``index`` from a ``(C, x, y, z)`` or ``(N, C, x, y, z)`` tensor.

    Raises:
        RequestError: wrong shape, or no latent for ``index``.
    """
    shape = tuple(int(s) for s in shape)
    t = torch.as_tensor(initial)
    if t.ndim == len(shape):
        t = t[None]
    if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != shape:
        raise RequestError(
            f"{source}: shape {tuple(initial.shape)} does not match the latent shape {shape} "
            f"(or (N, *{shape}))"
        )
    if index >= t.shape[0]:
        raise RequestError(f"{source}: holds {t.shape[0]} latents, none for sample index {index}")
    return t[index].float()
