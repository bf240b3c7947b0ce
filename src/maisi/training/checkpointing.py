"""Training checkpoints: one folder per step, written atomically, the last K kept, the latest found on resume.

Layout of ``<run_dir>/checkpoints/step_000100/``:

- one maisi component folder per trained network (``vae/``, ``unet/``, ...; ``config.json`` +
  ``model.safetensors``, see :mod:`maisi.networks.checkpoint`) holding the raw (non-EMA) weights;
- ``training_state.pt``: step, optimiser and grad-scaler states, EMA weights, RNG states and the data position,
  saved with ``torch.save`` of tensors and plain containers only, so it loads with ``weights_only=True``.

The folder is assembled under a hidden temporary name and renamed into place, so a ``step_*`` folder is always
complete: a write interrupted mid-way leaves the previous checkpoints untouched.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maisi.errors import CheckpointError
from maisi.io import default_permissions, read_torch_file
from maisi.networks.checkpoint import load_component, save_component

STATE_NAME = "training_state.pt"
CHECKPOINTS = "checkpoints"
_STEP_RE = re.compile(r"^step_(\d+)$")


@dataclass
class Checkpoint:
    """A loaded training checkpoint: the component weights (state dicts) and the training state."""

    path: Path
    step: int
    weights: dict[str, dict[str, torch.Tensor]]
    state: dict[str, Any]


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step_{step:06d}"


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoint folders of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_dir() and (p / STATE_NAME).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    *,
    models: Mapping[str, tuple[nn.Module, Any]],
    state: Mapping[str, Any],
    keep_last: int,
) -> Path:
    """Write ``step_<step>/`` atomically and delete all but the newest ``keep_last`` checkpoints.

    Args:
        models: component name -> (network, its config dataclass).
        state: training state (tensors and plain containers only).
        keep_last: how many checkpoints to keep (>= 1).
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    target = checkpoint_dir(run_dir, step)
    root = target.parent
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        for name, (model, cfg) in models.items():
            save_component(tmp / name, model, cfg, component=name, extra={"step": step})
        torch.save(dict(state), tmp / STATE_NAME)
        default_permissions(tmp)
        if target.exists():  # a checkpoint of the same step (a re-run): swap it out, remove it after
            old = root / f".{target.name}.old"
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _remove_stale_temporaries(root: Path) -> None:
    """Delete leftovers of interrupted writes (hidden ``.step_*`` folders)."""
    for p in root.iterdir():
        if p.name.startswith(".step_") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read one checkpoint folder (weights strictly, state with ``weights_only=True``)."""
    d = Path(path)
    m = _STEP_RE.match(d.name)
    if not m or not (d / STATE_NAME).is_file():
        raise CheckpointError(f"{d}: not a training checkpoint folder (expected step_N/ with {STATE_NAME})")
    state = read_torch_file(d / STATE_NAME)
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{d / STATE_NAME}: not a maisi training state (no 'step')")
    weights = {}
    for sub in sorted(p for p in d.iterdir() if p.is_dir()):
        weights[sub.name] = load_component(sub).model.state_dict()
    return Checkpoint(path=d, step=int(state["step"]), weights=weights, state=state)


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest readable checkpoint of a run, or None when there is none."""
    found = list_checkpoints(run_dir)
    if not found:
        return None
    return load_checkpoint(found[-1][1])


# ----------------------------------------------------------------------------------------------------------------
# RNG states as tensors and plain containers


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states (Python, torch CPU, CUDA of ``device``) as weights-only-loadable values."""
    import random

    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    import random

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
