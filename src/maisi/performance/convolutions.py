"""Where 3D convolutions run on the CPU: oneDNN for every ``nn.Conv3d``, Winograd F(4, 3) for the 3x3x3 ones that
it makes faster (:mod:`maisi.kernels.winograd`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


def onednn_eligible(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether ``torch.ops.aten.mkldnn_convolution`` computes ``conv(x)``: CPU float32 input and weight, numeric
    zero padding, outside autocast (gradients flow through it as through ``nn.Conv3d``)."""
    return (
        _onednn_available()
        and x.device.type == "cpu"
        and x.dim() == 5
        and x.dtype == torch.float32
        and conv.weight.dtype == torch.float32
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and not torch.is_autocast_enabled("cpu")
    )


class _OneDNNConv:
    """Forward of one ``nn.Conv3d`` straight to oneDNN: contiguous NCDHW in and out, or channels-last in and out
    when ``channels_last`` (an input some other operation left in NCDHW, such as CPU ``avg_pool3d``, is converted).
    """

    def __init__(self, conv: nn.Conv3d, channels_last: bool = False) -> None:
        self.conv = conv
        self.channels_last = channels_last

    def usable(self, x: torch.Tensor) -> bool:
        conv = self.conv
        return onednn_eligible(conv, x) and not (
            torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        if not self.usable(x):
            return type(conv).forward(conv, x)
        x = x.contiguous(
            memory_format=torch.channels_last_3d if self.channels_last else torch.contiguous_format
        )
        return torch.ops.aten.mkldnn_convolution(
            x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups
        )


@contextlib.contextmanager
def onednn_convolutions(module: nn.Module, *, channels_last: bool = False) -> Iterator[int]:
    """Route every ``nn.Conv3d`` of ``module`` to oneDNN for the block (CPU, float32, inference); anything else
    (autocast, grad, CUDA) takes the module's own forward. Yields how many were routed.

    Activations stay contiguous NCDHW unless ``channels_last`` (use it with :func:`channels_last` and
    :func:`precise_group_norms`, as :func:`accelerate` does): PyTorch's CPU GroupNorm kernel for channels-last
    tensors computes the variance in one pass and loses precision when a group's mean is large against its spread
    (1e-2 absolute error at mean 10, std 0.1, float32).
    """
    convs = [m for m in module.modules() if type(m) is nn.Conv3d]
    if not _onednn_available():
        yield 0
        return
    for conv in convs:
        conv.forward = _OneDNNConv(conv, channels_last=channels_last)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            conv.__dict__.pop("forward", None)


#: Winograd F(4, 3) pays on the CPU from 32 channels in and out; the transformed kernel of a C_in x C_out
#: convolution takes 216 * C_in * C_out floats, so convolutions past 256 x 256 (57 MB) stay with oneDNN
WINOGRAD_MIN_CHANNELS = 32
WINOGRAD_MAX_CHANNEL_PRODUCT = 256 * 256
#: and from 64 output tiles (a 16^3 volume): below that (the UNet's deepest levels) a call saves less than the
#: kernel transform and its memory cost, and oneDNN keeps those convolutions
WINOGRAD_MIN_TILES = 64


def winograd_eligible(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 3x3x3, stride-1, padding-1, ungrouped ``nn.Conv3d`` within the Winograd channel range."""
    return (
        type(conv) is nn.Conv3d
        and tuple(conv.kernel_size) == (3, 3, 3)
        and tuple(conv.stride) == (1, 1, 1)
        and tuple(conv.padding) == (1, 1, 1)
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and min(conv.in_channels, conv.out_channels) >= WINOGRAD_MIN_CHANNELS
        and conv.in_channels * conv.out_channels <= WINOGRAD_MAX_CHANNEL_PRODUCT
    )


class _WinogradConv:
    """Forward of one eligible ``nn.Conv3d`` by Winograd F(4, 3) on CPU float32 inference input; anything else
    (grad, autocast, other dtypes or devices, volumes under :data:`WINOGRAD_MIN_TILES` tiles) takes ``fallback``.

    The transformed kernel is computed on the first call and again whenever the weight changes (its storage or
    version counter), and dropped with this object at the end of the ``with`` block.
    """

    def __init__(self, conv: nn.Conv3d, fallback: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.conv = conv
        self.fallback = fallback
        self.kernel: torch.Tensor | None = None
        self.key: tuple | None = None
        self.calls = 0

    def usable(self, x: torch.Tensor) -> bool:
        from maisi.kernels.winograd import TILE

        w = self.conv.weight
        return (
            x.device.type == "cpu"
            and x.dim() == 5
            and x.dtype == torch.float32
            and w.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
            and _tiles(x.shape[2:], TILE) >= WINOGRAD_MIN_TILES
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.usable(x):
            return self.fallback(x)
        from maisi.kernels import winograd

        w = self.conv.weight
        key = (w.data_ptr(), w._version, tuple(w.shape))
        if key != self.key:
            self.kernel, self.key = winograd.transform_weight(w), key
        self.calls += 1
        return winograd.conv3d(x, self.kernel, self.conv.bias)


def _tiles(spatial, tile: int) -> int:
    n = 1
    for s in spatial:
        n *= -(-int(s) // tile)
    return n


@contextlib.contextmanager
def winograd_convolutions(module: nn.Module, *, required: bool = False) -> Iterator[list[_WinogradConv]]:
    """Compute the eligible 3x3x3 convolutions of ``module`` (:func:`winograd_eligible`) by Winograd F(4, 3) on
    the CPU for the block; yields their forwards (each counts its ``calls``).

    The kernel is compiled on first use (:mod:`maisi.kernels.build`). Without a C compiler nothing is patched:
    silently, or with a warning when ``required``.
    """
    from maisi.kernels import winograd

    convs = [m for m in module.modules() if winograd_eligible(m)]
    if not convs or not winograd.available():
        if convs and required:
            warnings.warn(f"Winograd convolutions are off: {winograd.unavailable_reason()}", stacklevel=3)
        yield []
        return
    patched = []
    for conv in convs:
        before = conv.__dict__.get("forward")
        patched.append((conv, before))
        conv.forward = _WinogradConv(conv, before if before is not None else type(conv).forward.__get__(conv))
    try:
        yield [conv.forward for conv, _ in patched]
    finally:
        winograd.release_workspace()
        for conv, before in patched:
            if before is None:
                conv.__dict__.pop("forward", None)
            else:
                conv.forward = before


__all__ = ["onednn_convolutions", "winograd_convolutions", "winograd_eligible"]
