"""Where a command runs: the torchrun environment, devices and compute dtypes, checked once for every command.

``torchrun`` describes a process by ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; outside it a process is rank 0 of
1. A device name is ``cpu``, ``cuda`` (this process's ``cuda:LOCAL_RANK``, wrapped over the visible GPUs),
``cuda:N`` or ``mps``, and is refused in one line when this machine (or this build of torch) lacks it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from maisi.errors import RequestError

#: compute dtype names -> torch dtypes (float32 on every device; half precision under autocast)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True)
class ProcessEnv:
    """This process's place in a ``torchrun`` launch (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_env() -> ProcessEnv:
    """The torchrun environment of this process, checked (one-line error on inconsistent values)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RequestError(
            "invalid torchrun environment: RANK, WORLD_SIZE and LOCAL_RANK must be integers, got "
            f"{os.environ.get('RANK')!r}, {os.environ.get('WORLD_SIZE')!r}, {os.environ.get('LOCAL_RANK')!r}"
        ) from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise RequestError(
            f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local}"
        )
    return ProcessEnv(rank=rank, world_size=world, local_rank=local)


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The device a name refers to, checked to exist here.

    Args:
        name: ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        local_rank: for ``cuda``, which GPU (modulo the number visible); default this process's ``LOCAL_RANK``.

    Raises:
        RequestError: an unknown name, or a device this machine or torch build does not have.
    """
    text = str(name)
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RequestError(
                f"device {text!r}: CUDA is not available here (a CPU-only torch, or no GPU); use --device cpu"
            )
        if ":" not in text:
            local = process_env().local_rank if local_rank is None else local_rank
            return torch.device("cuda", local % torch.cuda.device_count())
        index = text.split(":", 1)[1]
        if not index.isdigit() or int(index) >= torch.cuda.device_count():
            raise RequestError(f"device {text!r}: no such GPU here ({torch.cuda.device_count()} visible)")
        return torch.device(text)
    if text == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RequestError("device 'mps': Apple Metal is not available here; use --device cpu")
        return torch.device("mps")
    if text != "cpu":
        raise RequestError(f"device must be cpu, cuda, cuda:N or mps, got {text!r}")
    return torch.device("cpu")


def compute_dtype(name: str, *, source: str = "dtype") -> torch.dtype:
    """The torch dtype of a dtype name (``float32``, ``bfloat16``, ``float16``)."""
    if name not in DTYPES:
        raise RequestError(f"{source} must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]
