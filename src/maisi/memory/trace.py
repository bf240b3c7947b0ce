"""Peak tensor memory of a computation, measured on the ``meta`` device: shapes only, no data, no time.

:func:`trace_peak` runs a function on meta tensors (networks built under ``torch.device("meta")``) and follows every
tensor storage that the computation creates, from the operator that allocates it to the moment Python drops its
last reference, as a caching allocator would see it. The peak of the live bytes is the activation memory of the
computation (its inputs and parameters, created before, are not counted). Attention through
``scaled_dot_product_attention`` is counted as a fused kernel computes it (output and a log-sum-exp per query, no
``N x N`` matrix), which is what every device maisi runs on uses for fp32/fp16 inputs.

With ``autocast`` the casts autocast makes are made too (meta tensors have no autocast of their own): matrix
products and convolutions in half precision (parameters cast once, as autocast caches them), norms and softmax in
float32.

A 3D convolution that the CPU Winograd path would take (:func:`maisi.performance.winograd_eligible`, at least
:data:`~maisi.performance.convolutions.WINOGRAD_MIN_TILES` output tiles) is recorded with the size of its transformed
kernel, which that path keeps for the length of an :func:`~maisi.performance.accelerate` block.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map


@dataclass
class Trace:
    """What :func:`trace_peak` saw.

    Attributes:
        peak: the most bytes of storages created by the computation alive at once.
        live: bytes still alive when the function returned (its outputs, caches it filled).
        winograd_kernels: ``id(weight) -> bytes`` of the transformed kernels the CPU Winograd path would keep.
        winograd_scratch: bytes of the per-thread scratch that path would grow to (at the threads set now).
    """

    peak: int = 0
    live: int = 0
    winograd_kernels: dict[int, int] = field(default_factory=dict)
    winograd_scratch: int = 0

    @property
    def winograd_bytes(self) -> int:
        """The transformed kernels and the scratch together."""
        return sum(self.winograd_kernels.values()) + self.winograd_scratch


class _Allocations(TorchDispatchMode):
    """Counts the bytes of the storages that operators create, until the last tensor on each is freed."""

    def __init__(self, trace: Trace) -> None:
        super().__init__()
        self.trace = trace
        self.refs: dict[int, int] = {}  # storage key -> live tensors on it
        self.sizes: dict[int, int] = {}
        self.seen: set[int] = set()  # ids of tensors with a finaliser

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        external = {_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t, external)
        return out

    def _track(self, t: torch.Tensor, external: set[int]) -> None:
        key = _key(t)
        if key not in self.refs:
            if key in external:
                return  # a view or in-place result on memory made outside the trace
            self.refs[key] = 0
            self.sizes[key] = t.untyped_storage().nbytes()
            self.trace.live += self.sizes[key]
            self.trace.peak = max(self.trace.peak, self.trace.live)
        if id(t) not in self.seen:
            self.seen.add(id(t))
            self.refs[key] += 1
            weakref.finalize(t, self._release, key, id(t))

    def _release(self, key: int, tensor_id: int) -> None:
        self.seen.discard(tensor_id)
        self.refs[key] -= 1
        if self.refs[key] == 0:
            del self.refs[key]
            self.trace.live -= self.sizes.pop(key)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata


#: operators autocast runs in half precision, and those it runs in float32 (CUDA's lists, for what MAISI uses)
_HALF_OPS = {
    torch.conv3d,
    torch.conv_transpose3d,
    torch.matmul,
    torch.bmm,
    torch.baddbmm,
    torch.einsum,
    F.linear,
    F.scaled_dot_product_attention,
}
_FLOAT_OPS = {F.group_norm, F.layer_norm, F.softmax, torch.softmax, F.log_softmax}


class _Operators(TorchFunctionMode):
    """Counts ``scaled_dot_product_attention`` as a fused kernel allocates, notes the 3D convolutions the CPU
    Winograd path would keep a transformed kernel of, and (with ``autocast``) casts as autocast would: inputs of
    matrix products and convolutions to half precision (parameters once, as autocast caches them), of norms and
    softmax to float32. Meta tensors have no autocast of their own."""

    def __init__(self, trace: Trace, autocast: torch.dtype | None = None) -> None:
        super().__init__()
        self.trace = trace
        self.autocast = autocast
        self.cast_cache: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast is not None:
            if func in _HALF_OPS:
                args, kwargs = self._cast((args, kwargs), self.autocast)
            elif func in _FLOAT_OPS:
                args, kwargs = self._cast((args, kwargs), torch.float32)
        if func is F.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            v = args[2] if len(args) > 2 else kwargs["value"]
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            # the log-sum-exp per query that flash / memory-efficient kernels keep
            torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
            return out
        if func in (F.conv3d, torch.conv3d):
            self._note_convolution(*args, **kwargs)
        return func(*args, **kwargs)

    def _cast(self, tree, dtype: torch.dtype):
        def cast(t):
            if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dtype == dtype:
                return t
            if isinstance(t, nn.Parameter) and t.requires_grad:  # autocast caches casts of parameters
                key = id(t)
                if key not in self.cast_cache or self.cast_cache[key].dtype != dtype:
                    self.cast_cache[key] = t.to(dtype)
                return self.cast_cache[key]
            return t.to(dtype)

        return tree_map(cast, tree)

    def _note_convolution(self, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> None:
        from maisi.kernels.winograd import TILE
        from maisi.performance.convolutions import (
            WINOGRAD_MAX_CHANNEL_PRODUCT,
            WINOGRAD_MIN_CHANNELS,
            WINOGRAD_MIN_TILES,
        )

        c_out, c_in = int(weight.shape[0]), int(weight.shape[1])
        eligible = (
            tuple(weight.shape[2:]) == (3, 3, 3)
            and _triple(stride) == (1, 1, 1)
            and _triple(padding) == (1, 1, 1)
            and _triple(dilation) == (1, 1, 1)
            and groups == 1
            and min(c_in, c_out) >= WINOGRAD_MIN_CHANNELS
            and c_in * c_out <= WINOGRAD_MAX_CHANNEL_PRODUCT
            and math.prod(-(-int(s) // TILE) for s in x.shape[2:]) >= WINOGRAD_MIN_TILES
        )
        if eligible:
            from maisi.kernels import winograd

            self.trace.winograd_kernels[id(weight)] = winograd.POSITIONS * c_in * c_out * 4
            tiles = math.prod(-(-int(s) // TILE) for s in x.shape[2:])
            if c_in * c_out <= winograd.FUSED_MAX_CHANNEL_PRODUCT and c_out % 8 == 0:
                per_thread = winograd.POSITIONS * winograd.FUSED_TILES * (c_in + c_out) * 4
                scratch = per_thread * torch.get_num_threads()
            else:
                per_tile = winograd.POSITIONS * (c_in + c_out) * 4
                scratch = max(1, min(tiles, winograd.CHUNK_BYTES // per_tile)) * per_tile
            self.trace.winograd_scratch = max(self.trace.winograd_scratch, scratch)


def _triple(v: Any) -> tuple[int, ...]:
    if isinstance(v, str):
        return ()
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * 3


@contextlib.contextmanager
def tracing(trace: Trace, *, autocast: torch.dtype | None = None) -> Iterator[Trace]:
    """Count into ``trace`` what the block allocates (run it on meta tensors, under ``torch.no_grad()``);
    ``autocast`` (float16 / bfloat16) casts as autocast would, its cache of parameter casts held for the block."""
    ops = _Operators(trace, autocast)
    with ops, _Allocations(trace):
        yield trace
        ops.cast_cache.clear()


def trace_peak(
    fn: Callable[..., Any], *args: Any, autocast: torch.dtype | None = None, **kwargs: Any
) -> Trace:
    """Run ``fn(*args, **kwargs)`` (on meta tensors, without gradients) and return its :class:`Trace`.

    The outputs are dropped before returning, so ``live`` counts what ``fn`` left elsewhere (a cache it filled).
    """
    trace = Trace()
    with torch.no_grad(), tracing(trace, autocast=autocast):
        out = fn(*args, **kwargs)
        del out
    return trace


__all__ = ["Trace", "trace_peak", "tracing"]
