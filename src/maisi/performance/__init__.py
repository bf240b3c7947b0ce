"""Switchable speed-ups for sampling and decoding, applied to the networks for the length of a ``with`` block.

Each switch leaves the results equal to the plain path within a stated tolerance (``tests/test_performance_*``):

``cache_control`` (exact)
    The ControlNet's conditioning embedding (a stack of convolutions over the label map at IMAGE resolution) depends
    only on the label map, yet MONAI recomputes it at every sampler step. It is computed once and reused: bit for
    bit the same output, about a quarter of a ControlNet+UNet step saved on a CPU at 128^3.
``onednn`` (float rounding, ~1e-5 relative)
    CPU only. PyTorch routes a 3D convolution to oneDNN only when ``batch * C * D * H`` exceeds a threshold tuned
    for 2D images, so the deep, small levels of the 3D UNet fall back to its slow im2col kernel (4-8x slower per
    call there). Every ``Conv3d`` is sent to oneDNN instead.
``channels_last`` (float rounding, ~1e-5 relative)
    Weights and activations in ``torch.channels_last_3d`` (NDHWC). CUDA: what cuDNN's fp16/bf16 tensor-core kernels
    want (off by default there: not yet measured on a GPU). CPU (on by default): oneDNN's and the Winograd
    kernel's layout, so no convolution reorders its input and output (1.1-2x faster convolutions, most with few
    channels). PyTorch's channels-last CPU GroupNorm computes the variance in one float pass and loses precision
    when a group's mean is large against its spread, so group norms run a kernel with float64 statistics
    (:mod:`maisi.kernels.group_norm`, fused with the SiLU that follows inside residual blocks), or without a C
    compiler first subtract an estimate of their group means (:func:`precise_group_norms`). MONAI's MAISI
    autoencoder blocks copy their outputs back to NCDHW (``convert_to_tensor``); for the block they run an
    equivalent forward that keeps the layout (:func:`layout_preserving_blocks`).
``winograd`` (float rounding, ~1e-5 relative)
    CPU only. 3x3x3 convolutions with 32 to 256 input and output channels (so each cached transformed kernel stays
    under 57 MB) on volumes of at least 16^3 are computed by Winograd F(4x4x4, 3x3x3)
    (:mod:`maisi.kernels.winograd`): 8x fewer multiplications, 1.5-4x faster than oneDNN at the MAISI shapes.
    Needs a C compiler the first time (the kernel is built for the machine); without one the switch does nothing.
``compile`` (float rounding, ~1e-4 relative)
    ``torch.compile`` of the UNet, ControlNet and VAE (their ``forward``; the VAE's ``decode``, which the codec
    calls) in ``"default"``, ``"reduce-overhead"`` (CUDA graphs for the sampling loop; the cached ControlNet
    conditioning stays outside the graphs) or ``"max-autotune"`` mode; on CPU with weight freezing. Compiling takes
    minutes on a small CPU, so it is off by default and pays only over many steps or samples; compiled code is
    dropped when the outermost block ends (inner blocks over the same networks compile nothing).
``threads``
    ``torch.set_num_threads`` for the block (default: leave PyTorch's choice).

Reduced precision is chosen by ``GenerateConfig.dtype``; :func:`dtype_warning` says when it would be slow (a CPU
without AVX512-BF16/AMX runs bf16/fp16 convolutions hundreds of times slower than fp32).

Typical use::

    with accelerate([unet, controlnet, vae], Speedups(), device="cpu"):
        latent = sample(denoiser, scheduler, noise, num_steps=30)
        image = codec.decode(latent)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maisi.performance.control import cached_control_embedding
from maisi.performance.convolutions import onednn_convolutions, winograd_convolutions, winograd_eligible
from maisi.performance.layout import channels_last, layout_preserving_blocks, precise_group_norms

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Speedups:
    """Which speed-ups :func:`accelerate` applies (the defaults are the ones that pay on a CPU and a GPU).

    Attributes:
        cache_control: compute the ControlNet conditioning embedding once per sampling run (exact).
        onednn: CPU: every 3D convolution through oneDNN.
        channels_last: weights (and so activations) in channels-last 3D format; ``None`` (default) = on a CPU,
            off on CUDA.
        winograd: CPU: 3x3x3 convolutions by Winograd F(4, 3); ``None`` (default) = on a CPU where the kernel
            builds.
        compile: ``None`` or a ``torch.compile`` mode (:data:`COMPILE_MODES`).
        threads: intra-op threads for the block; ``None`` keeps the current setting.
        overlap_write: write a sample's files in a background thread while the next one is generated.
    """

    cache_control: bool = True
    onednn: bool = True
    channels_last: bool | None = None
    winograd: bool | None = None
    compile: str | None = None
    threads: int | None = None
    overlap_write: bool = True

    def __post_init__(self) -> None:
        if self.compile is not None and self.compile not in COMPILE_MODES:
            raise ValueError(f"compile must be None or one of {list(COMPILE_MODES)}, got {self.compile!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    @classmethod
    def plain(cls) -> Speedups:
        """Every switch off: the networks run exactly as built."""
        return cls(
            cache_control=False,
            onednn=False,
            channels_last=False,
            winograd=False,
            compile=None,
            overlap_write=False,
        )

    def replace(self, **changes) -> Speedups:
        return dataclasses.replace(self, **changes)


#: every switch off (the reference numerics of maisi's own networks)
PLAIN = Speedups.plain()

#: modules inside an :func:`accelerate` block now
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()


@contextlib.contextmanager
def accelerate(
    modules: Sequence[nn.Module | None], speedups: Speedups | None, *, device: torch.device | str = "cpu"
) -> Iterator[None]:
    """Apply ``speedups`` to ``modules`` (UNet, ControlNet, VAE, ...) for the block; restore them afterwards.

    The modules keep their parameters, state dicts and results (within the stated tolerances); only how they
    compute changes, and nothing of it outlives the block. Blocks nest: a module already inside a block is left as
    the outer block set it up, so a caller can hold one block (and its cached transformed Winograd kernels, its
    compiled code) over many calls of a function that opens its own; an inner block whose modules are all set up
    already does nothing at all.

    Args:
        modules: networks to speed up (``None`` entries are skipped; a module given twice is handled once).
        speedups: the switches; ``None`` means :data:`PLAIN`.
        device: where the modules run (``onednn`` applies on CPU only).
    """
    speedups = PLAIN if speedups is None else speedups
    device = torch.device(device)
    unique: list[nn.Module] = []
    for m in modules:
        if m is not None and m not in _ACTIVE and all(m is not u for u in unique):
            unique.append(m)
    if not unique:  # every module is set up by an outer block: nothing to do (and nothing to undo at the end)
        yield
        return
    with contextlib.ExitStack() as stack:
        _ACTIVE.update(unique)
        stack.callback(lambda: _ACTIVE.difference_update(unique))
        if speedups.threads is not None:
            stack.enter_context(_threads(speedups.threads))
        eager_cpu = device.type == "cpu" and speedups.compile is None
        for m in unique:
            last = _use_channels_last(speedups.channels_last, device)
            if speedups.cache_control:
                stack.enter_context(cached_control_embedding(m))
            if last:
                stack.enter_context(channels_last(m))
                stack.enter_context(layout_preserving_blocks(m))
                if device.type == "cpu":
                    stack.enter_context(precise_group_norms(m))
            if speedups.onednn and eager_cpu:
                stack.enter_context(onednn_convolutions(m, channels_last=last))
            if speedups.winograd is not False and eager_cpu:
                stack.enter_context(winograd_convolutions(m, required=bool(speedups.winograd)))
        if speedups.compile is not None:
            stack.enter_context(compiled(unique, mode=speedups.compile, device=device))
        yield


def _use_channels_last(switch: bool | None, device: torch.device) -> bool:
    """``channels_last`` as switched, or by default on a CPU only (never measured on a GPU)."""
    if device.type not in ("cpu", "cuda"):
        return False
    if switch is not None:
        return switch
    return device.type == "cpu"


# ---------------------------------------------------------------------------------------------------- compile


#: the methods :func:`compiled` compiles: ``forward``, and ``decode`` of an autoencoder (what
#: :class:`maisi.latents.LatentCodec` calls; its ``forward`` encodes and decodes)
COMPILED_METHODS = ("forward", "decode")


@contextlib.contextmanager
def compiled(modules: Sequence[nn.Module], *, mode: str = "default", device: torch.device | str = "cpu"):
    """``torch.compile`` each module's ``forward`` (an autoencoder's ``decode`` too) for the block (CPU: inductor
    with weight freezing, which needs inference mode); compiled code is discarded at the end, so later weight
    changes are always seen. With no modules nothing is compiled, and nothing discarded."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    if not modules:
        yield
        return
    import torch._dynamo
    import torch._inductor.config as inductor_config

    device = torch.device(device)
    patches = {"freezing": True} if device.type == "cpu" else {}
    with inductor_config.patch(patches):
        done: list[tuple[nn.Module, str]] = []
        for m in modules:
            for name in _compiled_methods(m):
                setattr(m, name, torch.compile(getattr(type(m), name).__get__(m), mode=mode, dynamic=False))
                done.append((m, name))
        try:
            yield
        finally:
            for m, name in done:
                m.__dict__.pop(name, None)
            torch._dynamo.reset()


def _compiled_methods(m: nn.Module) -> list[str]:
    names = ["forward"]
    if isinstance(getattr(m, "decoder", None), nn.Module) and callable(getattr(type(m), "decode", None)):
        names.append("decode")
    return names


# ---------------------------------------------------------------------------------------------------- threads, dtype


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where it does not exist)."""
    path = Path("/proc/cpuinfo")
    if not path.exists():
        return frozenset()
    for line in path.read_text().splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cuda_bf16_fast(device: torch.device | str | int | None = None) -> bool:
    """Whether a CUDA device computes bf16 natively (compute capability 8.0 or later: Ampere, Hopper, ...).

    ``torch.cuda.is_bf16_supported()`` also counts emulation, under which a V100 or T4 runs 3D convolutions in a
    slow fallback kernel.
    """
    if not torch.cuda.is_available():
        return False
    if isinstance(device, (str, torch.device)):
        device = torch.device(device)
        if device.type != "cuda":
            return False
        device = device.index
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def fast_dtypes(device: torch.device | str) -> tuple[str, ...]:
    """The compute dtypes that run at full speed on ``device`` (by name, as ``GenerateConfig.dtype``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("float32", "float16") + (("bfloat16",) if cuda_bf16_fast(device) else ())
    if device.type == "cpu":
        flags = cpu_flags()
        out = ["float32"]
        if flags & {"avx512_bf16", "amx_bf16"}:
            out.append("bfloat16")
        if flags & {"avx512_fp16", "amx_fp16"}:
            out.append("float16")
        return tuple(out)
    return ("float32",)


def dtype_warning(device: torch.device | str, dtype: str) -> str | None:
    """A one-line warning when ``dtype`` would be slow on ``device`` (None when it is fine)."""
    if dtype == "float32" or dtype in fast_dtypes(device):
        return None
    device = torch.device(device)
    if device.type == "cuda":
        return (
            f"dtype {dtype} is emulated on this GPU (compute capability below 8.0): 3D convolutions fall back to a "
            "slow kernel; use --dtype float16"
        )
    return (
        f"dtype {dtype} has no hardware support on this {device.type} (no AVX512-BF16/AMX); "
        "convolutions run far slower than float32; use --dtype float32"
    )


__all__ = [
    "COMPILED_METHODS",
    "COMPILE_MODES",
    "PLAIN",
    "Speedups",
    "accelerate",
    "cached_control_embedding",
    "channels_last",
    "compiled",
    "cpu_flags",
    "cuda_bf16_fast",
    "dtype_warning",
    "fast_dtypes",
    "layout_preserving_blocks",
    "onednn_convolutions",
    "precise_group_norms",
    "winograd_convolutions",
    "winograd_eligible",
]
