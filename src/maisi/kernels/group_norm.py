"""Group normalisation, optionally fused with SiLU, of channels-last float32 CPU volumes (``group_norm.c``).

PyTorch's CPU GroupNorm on channels-last input accumulates its statistics in one float32 pass and loses precision
when a group's mean is large against its spread; this kernel accumulates per-channel sums in float64 (exact to
float rounding at any offset), then writes ``(x - mean) * weight / std + bias`` (and SiLU) in one pass, split over
``torch.get_num_threads()`` threads. The result equals ``F.group_norm`` (then ``F.silu``) within ~1e-6 relative.
"""

from __future__ import annotations

import ctypes

import torch

from maisi.kernels import build, parallel

#: the C functions of group_norm.c and their arguments (p pointer, i int, l long)
_SIGNATURES = {"group_norm_sums": "plllpp", "group_norm_apply": "pplllpppi"}


def _library() -> ctypes.CDLL | None:
    return build.load("group_norm", _SIGNATURES)


def available() -> bool:
    """Whether the kernel is built (compiling it on the first call)."""
    return _library() is not None


def supports(x: torch.Tensor) -> bool:
    """Whether ``x`` is a channels-last (N, C, D, H, W) float32 CPU tensor outside autograd and autocast."""
    return (
        x.device.type == "cpu"
        and x.dim() == 5
        and x.dtype == torch.float32
        and x.is_contiguous(memory_format=torch.channels_last_3d)
        and not (torch.is_grad_enabled() and x.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and available()
    )


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    silu: bool = False,
) -> torch.Tensor:
    """``F.group_norm(x, num_groups, weight, bias, eps)``, then ``F.silu`` when ``silu``, for :func:`supports` input.

    Returns:
        a new channels-last tensor shaped like ``x``.
    """
    lib = _library()
    if lib is None or not supports(x):
        raise ValueError("group_norm needs a channels-last 5D float32 CPU tensor and the compiled kernel")
    n, c = x.shape[:2]
    if num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups must divide the {c} channels, got {num_groups}")
    voxels = x[0, 0].numel()
    threads = max(1, min(torch.get_num_threads(), voxels))
    y = torch.empty_like(x, memory_format=torch.channels_last_3d)
    sums = torch.empty((threads, 2, c), dtype=torch.float64)
    center = torch.empty(c, dtype=torch.float32)
    scale = torch.empty(c, dtype=torch.float32)
    shift = torch.empty(c, dtype=torch.float32)
    w = weight.detach().double() if weight is not None else torch.ones(c, dtype=torch.float64)
    b = bias.detach().double() if bias is not None else torch.zeros(c, dtype=torch.float64)
    bounds = [(voxels * i) // threads for i in range(threads + 1)]
    for k in range(n):
        xp, yp = x[k].data_ptr(), y[k].data_ptr()

        def partial_sums(tb: int, te: int, xp=xp) -> None:
            for part in range(tb, te):
                lib.group_norm_sums(
                    xp, c, bounds[part], bounds[part + 1], sums[part, 0].data_ptr(), sums[part, 1].data_ptr()
                )

        parallel.split(partial_sums, 0, threads, threads)
        total = sums.sum(0).view(2, num_groups, c // num_groups).sum(-1)  # (2, groups), float64
        count = voxels * (c // num_groups)
        mean = total[0] / count
        var = (total[1] / count - mean * mean).clamp_min(0.0)
        rstd = torch.rsqrt(var + eps).repeat_interleave(c // num_groups)
        center.copy_(mean.repeat_interleave(c // num_groups))
        scale.copy_(w * rstd)
        shift.copy_(b)
        cp, sp, hp = center.data_ptr(), scale.data_ptr(), shift.data_ptr()

        def normalise(vb: int, ve: int, xp=xp, yp=yp, cp=cp, sp=sp, hp=hp) -> None:
            lib.group_norm_apply(xp, yp, c, vb, ve, cp, sp, hp, int(silu))

        parallel.split(normalise, 0, voxels, threads)
    return y


__all__ = ["available", "group_norm", "supports"]
