"""Fit a generation run into the memory there is: estimate each stage, choose decode settings, refuse early.

- :func:`plan_memory` -> :class:`MemoryPlan`: each stage's estimated peak (mask model, mask decode, conditioning,
  sampling, decode, writing), the decode window / overlap / slabs chosen, whether idle networks wait on the host;
  a request that cannot fit raises :class:`~maisi.errors.RequestError` before anything is loaded.
- :func:`applied`: run a plan (slab decoding of the VAEs, idle networks on the host) for a ``with`` block.
- :func:`parse_memory`, :func:`available_memory`: ``--max-memory`` and its default.
- :func:`default_device`, :func:`default_dtype`, :func:`cuda_bf16_fast`: where and in what precision to run.

Typical use (the generation plan)::

    mplan = plan_memory(cfg.model, cfg.generate, budget_bytes=parse_memory("16GB"), device="cuda",
                        components=plan.components)
    codec = LatentCodec.from_model_set(model_set, **mplan.codec_options(), device=..., dtype=...)
    with applied(mplan, model_set, device="cuda"):
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from maisi.memory.budget import (
    available_memory,
    cuda_bf16_fast,
    default_device,
    default_dtype,
    format_bytes,
    parse_memory,
)
from maisi.memory.estimate import DecodeSettings, StageEstimate
from maisi.memory.offload import offloading
from maisi.memory.plan import PLANNED_OVERLAP, MemoryPlan, plan_memory
from maisi.memory.slabs import SlabDecoder, decoding_in_slabs


@contextlib.contextmanager
def applied(plan: MemoryPlan, model_set: Any, *, device: torch.device | str) -> Iterator[None]:
    """Run ``plan`` for the block: the VAEs' decoders in ``plan``'s slabs, and with ``plan.offload`` each stage's
    networks on ``device`` only while they work. Window and overlap go to the codecs
    (:meth:`MemoryPlan.codec_options`)."""

    def net(name: str):
        return model_set[name] if name in model_set else None

    with contextlib.ExitStack() as stack:
        if net("vae") is not None:
            stack.enter_context(decoding_in_slabs(net("vae"), plan.decode.num_splits))
        if plan.mask_decode is not None and net("mask_vae") is not None:
            stack.enter_context(decoding_in_slabs(net("mask_vae"), plan.mask_decode.num_splits))
        if plan.offload:
            stages = [[net("mask_unet")], [net("mask_vae")], [net("unet"), net("controlnet")], [net("vae")]]
            stack.enter_context(offloading([s for s in stages if any(m is not None for m in s)], device))
        yield


__all__ = [
    "PLANNED_OVERLAP",
    "DecodeSettings",
    "MemoryPlan",
    "SlabDecoder",
    "StageEstimate",
    "applied",
    "available_memory",
    "cuda_bf16_fast",
    "decoding_in_slabs",
    "default_device",
    "default_dtype",
    "format_bytes",
    "offloading",
    "parse_memory",
    "plan_memory",
]
