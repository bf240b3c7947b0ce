"""ControlNet speed-up: the conditioning embedding (a function of the label map only) is computed once per run."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn


class _CachedEmbedding(nn.Module):
    """Memo of a module whose output depends only on its input: the last two (input, output) pairs are kept.

    An input matches a kept one when it is the same tensor object or has the same shape, dtype and values; the kept
    inputs are referenced (not copied), which is safe because the pipeline builds the conditioning once per batch and
    never changes it in place. The memo runs eagerly under ``torch.compile`` (a graph break), so what it keeps is an
    ordinary tensor, never one in a CUDA graph's memory pool.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.entries: list[tuple[torch.Tensor, torch.Tensor, tuple]] = []
        self.hits = 0

    # eager even inside a compiled ControlNet: a memo is Python state, and under CUDA graphs ("reduce-overhead") a
    # kept output would live in the graph's memory pool, overwritten by the next replay
    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return self.inner(x)  # training: nothing to reuse, and no graph kept alive
        state = _autocast_state(x.device)
        for key, value, key_state in self.entries:
            if key_state == state and (x is key or _same_values(x, key)):
                self.hits += 1
                return value
        out = self.inner(x)
        self.entries = [*self.entries[-1:], (x, out, state)]
        return out

    def forget(self) -> None:
        """Drop the kept pairs (the conditioning and its embedding, both at image resolution); ``hits`` stays."""
        self.entries = []


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype or a.device != b.device:
        return False
    if a.device.type == "meta":  # memory estimates (maisi.memory) trace runs that reuse one conditioning
        return True
    return bool(torch.equal(a, b))


def _autocast_state(device: torch.device) -> tuple:
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    enabled = torch.is_autocast_enabled(kind)
    return (enabled, torch.get_autocast_dtype(kind) if enabled else None)


@contextlib.contextmanager
def cached_control_embedding(module: nn.Module) -> Iterator[_CachedEmbedding | None]:
    """Memoise ``module.controlnet_cond_embedding`` (a MONAI ControlNet's) for the block; other modules pass.

    With grad enabled (training) the memo is bypassed; an output is reused only under the autocast state it was
    computed in.
    """
    inner = getattr(module, "controlnet_cond_embedding", None)
    if not isinstance(inner, nn.Module) or isinstance(inner, _CachedEmbedding):
        yield None
        return
    memo = _CachedEmbedding(inner)
    module.controlnet_cond_embedding = memo
    try:
        yield memo
    finally:
        module.controlnet_cond_embedding = inner


def forget_cached_embeddings(modules: Iterable[nn.Module | None]) -> int:
    """Empty the memo of each module's cached conditioning embedding (the pipeline calls it after sampling each
    batch, so a batch's conditioning and embedding are not held through its decode and into the next batch);
    modules without one (``None`` entries too) pass. Returns how many memos were emptied."""
    emptied = 0
    for m in modules:
        memo = getattr(m, "controlnet_cond_embedding", None) if m is not None else None
        if isinstance(memo, _CachedEmbedding):
            memo.forget()
            emptied += 1
    return emptied


__all__ = ["cached_control_embedding", "forget_cached_embeddings"]
