"""Idle networks on the host: each stage's networks move to the device when one of them is called, the others
to the host (the official ``low_vram`` behaviour, for CUDA devices whose memory cannot hold every network beside
the activations)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn


class _Stages:
    """Which stage's networks are on the device; moves them when a network of another stage is called."""

    def __init__(self, stages: Sequence[Sequence[nn.Module]], device: torch.device) -> None:
        self.stages = [[m for m in s if m is not None] for s in stages]
        self.device = device
        self.current: int | None = None
        self.moves = 0

    def bring(self, index: int) -> None:
        if self.current == index:
            return
        for i, stage in enumerate(self.stages):
            if i != index:
                for m in stage:
                    m.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        for m in self.stages[index]:
            m.to(self.device)
        self.current = index
        self.moves += 1


@contextlib.contextmanager
def offloading(stages: Sequence[Sequence[nn.Module | None]], device: torch.device | str) -> Iterator[_Stages]:
    """For the block, keep only the networks of the stage in use on ``device``.

    A stage is a group of networks used together (UNet and ControlNet; the VAE; the mask UNet; the mask VAE). A
    call into any of a network's direct children (a VAE's ``decode`` reaches its decoder) or into the network
    itself moves its stage to ``device`` and every other stage to the host first. At the end every network is
    back on ``device``.
    """
    device = torch.device(device)
    state = _Stages(stages, device)
    handles = []
    for index, stage in enumerate(state.stages):
        for net in stage:

            def hook(module, args, index=index):
                state.bring(index)

            for target in (net, *net.children()):
                handles.append(target.register_forward_pre_hook(hook))
    try:
        yield state
    finally:
        for h in handles:
            h.remove()
        for stage in state.stages:
            for m in stage:
                m.to(device)


__all__ = ["offloading"]
