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
    want (off by default there: not yet measured on a GPU). CPU (on by default, except for MAISI autoencoders,
    whose MONAI blocks copy their outputs back to NCDHW): oneDNN's own layout, so no convolution reorders its
    input and output (1.1-2x faster convolutions, most with few channels); PyTorch's
    channels-last GroupNorm computes the variance in one pass and loses precision when a group's mean is large
    against its spread, so each group norm first subtracts an estimate of its group means
    (:func:`precise_group_norms`), which leaves the result unchanged and the one-pass variance accurate.
``compile`` (float rounding, ~1e-4 relative)
    ``torch.compile`` of the UNet, ControlNet and VAE (``"default"``, ``"reduce-overhead"`` = CUDA graphs for the
    sampling loop, ``"max-autotune"``); on CPU with weight freezing. Compiling takes minutes on a small CPU, so it
    is off by default and pays only over many steps or samples; compiled code is dropped when the block ends.
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class Speedups:
    """Which speed-ups :func:`accelerate` applies (the defaults are the ones that pay on a CPU and a GPU).

    Attributes:
        cache_control: compute the ControlNet conditioning embedding once per sampling run (exact).
        onednn: CPU: every 3D convolution through oneDNN.
        channels_last: weights (and so activations) in channels-last 3D format; ``None`` (default) = on a CPU
            except for MAISI autoencoders, off on CUDA.
        compile: ``None`` or a ``torch.compile`` mode (:data:`COMPILE_MODES`).
        threads: intra-op threads for the block; ``None`` keeps the current setting.
        overlap_write: write a sample's files in a background thread while the next one is generated.
    """

    cache_control: bool = True
    onednn: bool = True
    channels_last: bool | None = None
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
        return cls(cache_control=False, onednn=False, channels_last=False, compile=None, overlap_write=False)

    def replace(self, **changes) -> Speedups:
        return dataclasses.replace(self, **changes)


#: every switch off (the reference numerics of maisi's own networks)
PLAIN = Speedups.plain()


@contextlib.contextmanager
def accelerate(
    modules: Sequence[nn.Module | None], speedups: Speedups | None, *, device: torch.device | str = "cpu"
) -> Iterator[None]:
    """Apply ``speedups`` to ``modules`` (UNet, ControlNet, VAE, ...) for the block; restore them afterwards.

    The modules keep their parameters, state dicts and results (within the stated tolerances); only how they
    compute changes, and nothing of it outlives the block.

    Args:
        modules: networks to speed up (``None`` entries are skipped; a module given twice is handled once).
        speedups: the switches; ``None`` means :data:`PLAIN`.
        device: where the modules run (``onednn`` applies on CPU only).
    """
    speedups = PLAIN if speedups is None else speedups
    device = torch.device(device)
    unique: list[nn.Module] = []
    for m in modules:
        if m is not None and all(m is not u for u in unique):
            unique.append(m)
    with contextlib.ExitStack() as stack:
        if speedups.threads is not None:
            stack.enter_context(_threads(speedups.threads))
        for m in unique:
            last = _use_channels_last(m, speedups.channels_last, device)
            if speedups.cache_control:
                stack.enter_context(cached_control_embedding(m))
            if last:
                stack.enter_context(channels_last(m))
                if device.type == "cpu":
                    stack.enter_context(precise_group_norms(m))
            if speedups.onednn and device.type == "cpu" and speedups.compile is None:
                stack.enter_context(onednn_convolutions(m, channels_last=last))
        if speedups.compile is not None:
            stack.enter_context(compiled(unique, mode=speedups.compile, device=device))
        yield


def _use_channels_last(module: nn.Module, switch: bool | None, device: torch.device) -> bool:
    """``channels_last`` for one module: as switched, or by default on a CPU except for MAISI autoencoders, whose
    MONAI blocks end in ``convert_to_tensor`` and so copy channels-last activations back to NCDHW after every block
    (measured: the official VAE decoded 128^3 4% slower channels-last than plain)."""
    if device.type not in ("cpu", "cuda"):
        return False
    if switch is not None:
        return switch
    if device.type != "cpu":
        return False
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return not isinstance(module, AutoencoderKlMaisi)


# ---------------------------------------------------------------------------------------------------- ControlNet


class _CachedEmbedding(nn.Module):
    """Memo of a module whose output depends only on its input: the last two (input, output) pairs are kept.

    An input matches a kept one when it is the same tensor object or has the same shape, dtype and values; the kept
    inputs are referenced (not copied), which is safe because the pipeline builds the conditioning once per run and
    never changes it in place.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.entries: list[tuple[torch.Tensor, torch.Tensor, tuple]] = []
        self.hits = 0

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


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b))


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


# ---------------------------------------------------------------------------------------------------- oneDNN


def _onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.aten, "mkldnn_convolution")


class _OneDNNConv:
    """Forward of one ``nn.Conv3d`` straight to oneDNN: contiguous NCDHW in and out, or channels-last in and out
    when ``channels_last`` (an input some other operation left in NCDHW, such as CPU ``avg_pool3d``, is converted).
    """

    def __init__(self, conv: nn.Conv3d, channels_last: bool = False) -> None:
        self.conv = conv
        self.channels_last = channels_last

    def usable(self, x: torch.Tensor) -> bool:
        conv = self.conv
        return (
            x.device.type == "cpu"
            and x.dim() == 5
            and x.dtype == torch.float32
            and conv.weight.dtype == torch.float32
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
            and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
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


class _ShiftedGroupNorm:
    """Forward of one ``nn.GroupNorm`` that stays precise on channels-last CPU input.

    Group normalisation ignores a constant added to a group, so the input first has an estimate of each group's mean
    subtracted (the mean over a strided subsample of about 4096 voxels); PyTorch's one-pass channels-last kernel then
    works on values centred near zero, where its variance is accurate. Anything else takes the module's forward.
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
        n, c = x.shape[:2]
        groups = norm.num_groups
        stride = max(1, round((x[0, 0].numel() / self.SAMPLE) ** (1 / 3)))
        sample = x[:, :, ::stride, ::stride, ::stride]
        shift = sample.reshape(n, groups, -1).mean(-1).repeat_interleave(c // groups, dim=1)
        return nn.functional.group_norm(
            x - shift.view(n, c, 1, 1, 1), groups, norm.weight, norm.bias, norm.eps
        )


@contextlib.contextmanager
def precise_group_norms(module: nn.Module) -> Iterator[int]:
    """Make every ``nn.GroupNorm`` of ``module`` precise on channels-last CPU input for the block
    (:class:`_ShiftedGroupNorm`); yields how many were patched."""
    norms = [m for m in module.modules() if isinstance(m, nn.GroupNorm)]
    for norm in norms:
        norm.forward = _ShiftedGroupNorm(norm)
    try:
        yield len(norms)
    finally:
        for norm in norms:
            norm.__dict__.pop("forward", None)


# ---------------------------------------------------------------------------------------------------- layout


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


# ---------------------------------------------------------------------------------------------------- compile


@contextlib.contextmanager
def compiled(modules: Sequence[nn.Module], *, mode: str = "default", device: torch.device | str = "cpu"):
    """``torch.compile`` each module's forward for the block (CPU: inductor with weight freezing, which needs
    inference mode); compiled code is discarded at the end, so later weight changes are always seen."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {list(COMPILE_MODES)}, got {mode!r}")
    import torch._dynamo
    import torch._inductor.config as inductor_config

    device = torch.device(device)
    patches = {"freezing": True} if device.type == "cpu" else {}
    with inductor_config.patch(patches):
        for m in modules:
            m.forward = torch.compile(type(m).forward.__get__(m), mode=mode, dynamic=False)
        try:
            yield
        finally:
            for m in modules:
                m.__dict__.pop("forward", None)
            torch._dynamo.reset()


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


def fast_dtypes(device: torch.device | str) -> tuple[str, ...]:
    """The compute dtypes that run at full speed on ``device`` (by name, as ``GenerateConfig.dtype``)."""
    device = torch.device(device)
    if device.type == "cuda":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ("float32", "float16") + (("bfloat16",) if bf16 else ())
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
    return (
        f"dtype {dtype} has no hardware support on this {torch.device(device).type} (no AVX512-BF16/AMX); "
        "convolutions run far slower than float32; use --dtype float32"
    )


__all__ = [
    "COMPILE_MODES",
    "PLAIN",
    "Speedups",
    "accelerate",
    "cached_control_embedding",
    "channels_last",
    "compiled",
    "cpu_flags",
    "dtype_warning",
    "fast_dtypes",
    "onednn_convolutions",
    "precise_group_norms",
]
