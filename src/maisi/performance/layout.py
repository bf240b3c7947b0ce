"""Memory layout on the CPU: channels-last weights, precise group norms on channels-last input, and MAISI
autoencoder blocks that keep the layout of their input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from maisi.kernels import group_norm as kernel_group_norm


class _PreciseGroupNorm:
    """Forward of one ``nn.GroupNorm`` that stays precise on channels-last CPU input.

    With the compiled kernel (:mod:`maisi.kernels.group_norm`: float64 statistics, one write pass) where it builds;
    otherwise the input first has an estimate of each group's mean subtracted (the mean over a strided subsample of
    about 4096 voxels; group normalisation ignores a constant added to a group), so PyTorch's one-pass
    channels-last kernel works on values centred near zero, where its variance is accurate. Anything else takes
    the module's forward.
    """

    SAMPLE = 4096

    def __init__(self, norm: nn.GroupNorm) -> None:
        self.norm = norm

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm
        if not (
            x.device.type == "cpu"
            and x.dim() == 5
            and x.dtype == torch.float32
            and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last_3d)
            and not torch.is_autocast_enabled("cpu")
        ):
            return type(norm).forward(norm, x)
        if kernel_group_norm.supports(x):
            return kernel_group_norm.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        n, c = x.shape[:2]
        groups = norm.num_groups
        stride = max(1, round((x[0, 0].numel() / self.SAMPLE) ** (1 / 3)))
        sample = x[:, :, ::stride, ::stride, ::stride]
        shift = sample.reshape(n, groups, -1).mean(-1).repeat_interleave(c // groups, dim=1)
        return nn.functional.group_norm(
            x - shift.view(n, c, 1, 1, 1), groups, norm.weight, norm.bias, norm.eps
        )


def channel_sums(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-channel sum and sum of squares (float64, shape (C,)) of a channels-last float32 CPU tensor, in one
    threaded pass of the group-norm kernel's accumulation (PyTorch's reduction over every dimension but the
    innermost runs ~20x slower on such input); None where the kernel does not apply (then reduce with torch)."""
    if not kernel_group_norm.supports(x):
        return None
    from maisi.kernels import parallel

    lib = kernel_group_norm._library()
    n, c = x.shape[:2]
    voxels = x[0, 0].numel()
    threads = max(1, min(torch.get_num_threads(), voxels))
    sums = torch.zeros((n, threads, 2, c), dtype=torch.float64)
    bounds = [(voxels * i) // threads for i in range(threads + 1)]
    for k in range(n):
        xp = x[k].data_ptr()

        def part(tb: int, te: int, k=k, xp=xp) -> None:
            for i in range(tb, te):
                lib.group_norm_sums(
                    xp, c, bounds[i], bounds[i + 1], sums[k, i, 0].data_ptr(), sums[k, i, 1].data_ptr()
                )

        parallel.split(part, 0, threads, threads)
    total = sums.sum((0, 1))
    return total[0], total[1]


def normalise_channels(
    x: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, *, silu: bool = False
) -> torch.Tensor | None:
    """``(x - center[c]) * scale[c] + shift[c]`` (then SiLU) of a channels-last float32 CPU tensor in one threaded
    pass of the group-norm kernel, for statistics computed elsewhere; None where the kernel does not apply."""
    if not kernel_group_norm.supports(x):
        return None
    from maisi.kernels import parallel

    lib = kernel_group_norm._library()
    n, c = x.shape[:2]
    voxels = x[0, 0].numel()
    threads = max(1, min(torch.get_num_threads(), voxels))
    y = torch.empty_like(x, memory_format=torch.channels_last_3d)
    center, scale, shift = (t.detach().to("cpu", torch.float32).contiguous() for t in (center, scale, shift))
    cp, sp, hp = center.data_ptr(), scale.data_ptr(), shift.data_ptr()
    for k in range(n):
        xp, yp = x[k].data_ptr(), y[k].data_ptr()

        def run(vb: int, ve: int, xp=xp, yp=yp) -> None:
            lib.group_norm_apply(xp, yp, c, vb, ve, cp, sp, hp, int(silu))

        parallel.split(run, 0, voxels, threads)
    return y


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d)


def _norm_silu(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``silu(norm(x))``, fused in one pass by the compiled kernel for a group norm on channels-last input."""
    if isinstance(norm, nn.GroupNorm) and not x.is_contiguous() and kernel_group_norm.supports(x):
        return kernel_group_norm.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps, silu=True)
    return F.silu(norm(x))


@contextlib.contextmanager
def precise_group_norms(module: nn.Module) -> Iterator[int]:
    """Make every ``nn.GroupNorm`` of ``module`` precise on channels-last CPU input for the block
    (:class:`_PreciseGroupNorm`); yields how many were patched."""
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    for norm in norms:
        norm.forward = _PreciseGroupNorm(norm)
    try:
        yield len(norms)
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)


@contextlib.contextmanager
def channels_last(module: nn.Module) -> Iterator[None]:
    """Store the 5D parameters of ``module`` channels-last for the block (restored to contiguous afterwards, so
    state dicts can be saved with safetensors)."""
    params = [p for p in module.parameters() if p.dim() == 5]
    with torch.no_grad():
        for p in params:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    try:
        yield
    finally:
        with torch.no_grad():
            for p in params:
                p.data = p.data.contiguous()


def _resblock_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MaisiResBlock.forward`` without its final copy to NCDHW (same operations, norm and SiLU fused)."""
    h = block.conv1(_norm_silu(block.norm1, x))
    h = block.conv2(_norm_silu(block.norm2, h))
    if block.in_channels != block.out_channels:
        x = block.nin_shortcut(x)
    return x + h


def _upsample_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``MaisiUpsample.forward`` without its final copy to NCDHW."""
    if not block.use_convtranspose:
        x = F.interpolate(x, scale_factor=2.0, mode="trilinear")
    return block.conv(x)


def _unet_resblock_forward(block: nn.Module, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """``DiffusionUNetResnetBlock.forward`` with each group norm and SiLU fused (same operations otherwise)."""
    h = _norm_silu(block.norm1, x)
    if block.upsample is not None or block.downsample is not None:
        resample = block.upsample if block.upsample is not None else block.downsample
        last = _is_channels_last(x)
        x, h = resample(x), resample(h)
        if last:  # CPU pooling returns NCDHW, and the sum below would take x's layout
            x, h = (t.contiguous(memory_format=torch.channels_last_3d) for t in (x, h))
    h = block.conv1(h)
    temb = block.time_emb_proj(block.nonlinearity(emb))
    h = h + temb.reshape(*temb.shape, *([1] * (h.dim() - 2)))
    h = block.conv2(_norm_silu(block.norm2, h))
    return block.skip_connection(x) + h


@contextlib.contextmanager
def layout_preserving_blocks(module: nn.Module) -> Iterator[int]:
    """For the block, MONAI's MAISI autoencoder residual and upsampling blocks keep the memory layout of their
    input, and the residual blocks (autoencoder and diffusion UNet) fuse each group norm with the SiLU after it.

    The autoencoder blocks' ``forward`` ends in MONAI's ``convert_to_tensor``, which copies a channels-last result
    back to NCDHW, so a channels-last autoencoder would pay two layout copies per block; the replacements run the
    same operations without that copy, and on channels-last CPU input a norm and its SiLU in one pass of the
    compiled kernel (:func:`maisi.kernels.group_norm.group_norm`). Other modules pass; yields how many blocks were
    patched.
    """
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import MaisiResBlock, MaisiUpsample
    from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock

    forwards = {
        MaisiResBlock: _resblock_forward,
        MaisiUpsample: _upsample_forward,
        DiffusionUNetResnetBlock: _unet_resblock_forward,
    }
    blocks = [
        m
        for m in module.modules()
        if type(m) in forwards
        and (type(m) is not DiffusionUNetResnetBlock or type(m.nonlinearity) is nn.SiLU)
    ]
    for block in blocks:
        block.forward = forwards[type(block)].__get__(block)
    try:
        yield len(blocks)
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)


__all__ = [
    "channel_sums",
    "channels_last",
    "normalise_channels",
    "layout_preserving_blocks",
    "precise_group_norms",
]
