"""The memory plan of a generation run: the decode settings that fit a budget, decided before anything is loaded.

:func:`plan_memory` estimates each stage (:mod:`maisi.memory.estimate`) and chooses, for the image VAE (and the
mask VAE when the mask model runs):

1. the whole latent in one pass (the official whole-volume decode, no stitching) with the fewest slabs
   (``num_splits``, :mod:`maisi.memory.slabs`) that fit;
2. otherwise the windows that fit with the least decoding work (windows x window voxels: the fewest, largest
   windows), overlapping by :data:`PLANNED_OVERLAP`, each with the fewest slabs that fit.

On CUDA, when even that does not fit beside every network, the networks idle in a stage wait on the host
(``offload``: the official ``low_vram`` behaviour). A request whose smallest plan exceeds the budget is refused at
once (:class:`~maisi.errors.RequestError`, one line with the estimate and the budget). Settings the user gave
(``decode_window``, ``decode_overlap``, ``num_splits``) are kept, with a warning when they exceed the budget.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from maisi.errors import RequestError
from maisi.memory.budget import available_memory, default_dtype, format_bytes
from maisi.memory.estimate import (
    DecodeSettings,
    Request,
    StageEstimate,
    conditioning_held,
    decode_stage,
    fixed_stages,
    sampling_activations,
    weight_bytes,
)

#: slab counts tried, fewest first
SPLITS = (1, 2, 4, 8, 16, 32, 64)
#: overlap of planned windows: the official large-window setting (80^3 windows at 0.4 in its ControlNet
#: configuration); the stitching error it leaves is measured in ``benchmarks/bench_decode_plan.py``
PLANNED_OVERLAP = 0.4
#: the smallest planned window (latent voxels per axis)
MIN_WINDOW = 8

IMAGE = ("vae", "unet", "controlnet")


@dataclass(frozen=True)
class MemoryPlan:
    """The settings a run uses and what each stage is estimated to need.

    Attributes:
        device: where the networks run.
        budget: bytes the run may use on ``device``.
        estimates: each stage's estimate, in run order.
        decode: the image VAE's decode settings.
        mask_decode: the mask VAE's (None without the mask model).
        offload: idle networks wait on the host between stages (CUDA).
        warnings: settings the user gave that exceed the budget.
    """

    device: str
    budget: int
    estimates: tuple[StageEstimate, ...]
    decode: DecodeSettings
    latent: tuple[int, int, int]
    mask_decode: DecodeSettings | None = None
    mask_latent: tuple[int, int, int] | None = None
    offload: bool = False
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def stages(self) -> dict[str, int]:
        """Stage name -> estimated peak bytes on the device."""
        return {e.name: e.device for e in self.estimates}

    @property
    def peak(self) -> int:
        return max(self.stages.values())

    @property
    def decode_window(self) -> tuple[int, int, int]:
        """The image decode window in latent voxels (the whole latent: one pass)."""
        return tuple(self.decode.clipped(self.latent))

    @property
    def decode_overlap(self) -> float:
        return self.decode.overlap

    @property
    def num_splits(self) -> int:
        return self.decode.num_splits

    def codec_options(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`maisi.latents.LatentCodec.from_model_set` (image VAE); the window as given
        (the codec tiles when the latent has more voxels than the window, as the official sliding window does)."""
        return {
            "decode_window": tuple(self.decode.window),
            "decode_overlap": self.decode_overlap,
            "output_device": self.decode.output_device,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-ready: budget, peak, each stage's estimate and the settings chosen (``--dry-run``, sidecar)."""
        out: dict[str, Any] = {
            "device": self.device,
            "budget_bytes": self.budget,
            "budget_gib": round(self.budget / 2**30, 2),
            "peak_bytes": self.peak,
            "peak_gib": round(self.peak / 2**30, 2),
            "stages": {e.name: e.describe() for e in self.estimates},
            "decode": self.decode.describe(self.latent),
            "offload": self.offload,
        }
        if self.mask_decode is not None:
            out["mask_decode"] = self.mask_decode.describe(self.mask_latent)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def summary(self) -> str:
        """One line for the log: peak against budget and the decode settings."""
        d = self.decode.describe(self.latent)
        how = (
            "one pass"
            if d["windows"] == 1
            else f"{d['windows']} windows of {'x'.join(map(str, d['window']))}"
        )
        return (
            f"memory plan: peak {format_bytes(self.peak)} of {format_bytes(self.budget)} on {self.device} "
            f"({max(self.estimates, key=lambda e: e.device).name}); decode {how}, {d['num_splits']} slab(s)"
            + (", idle networks on the host" if self.offload else "")
        )


def plan_memory(
    model_cfg: Any,
    request: Any,
    *,
    budget_bytes: int | None = None,
    device: str = "cpu",
    components: Sequence[str] = IMAGE,
    decode_window: Sequence[int] | None = None,
    decode_overlap: float | None = None,
    num_splits: int | None = None,
    mask_source: str | None = None,
) -> MemoryPlan:
    """Choose decode settings that fit ``budget_bytes`` and estimate every stage; nothing is loaded or allocated.

    Args:
        model_cfg: the networks' :class:`~maisi.config.schema.ModelConfig`.
        request: the :class:`~maisi.config.schema.GenerateConfig` (output size, batch size, guidance, dtype).
        budget_bytes: bytes the run may use on ``device`` (``--max-memory``); default :func:`available_memory`.
        device: ``cpu`` or ``cuda[:N]``.
        components: the networks the run loads (``mask_unet`` / ``mask_unet_v2`` present: the mask model runs;
            without ``unet`` the run only decodes).
        decode_window, decode_overlap, num_splits: settings the user gave explicitly (kept; a warning when the
            plan then exceeds the budget).
        mask_source: where the label maps come from (the generation plan's; ``phantom`` maps have no tumours, so
            guidance needs no second map); default ``request.mask_source``.

    Raises:
        RequestError: when the smallest plan exceeds the budget (one line: the estimate, the stage, the budget).
    """
    kind = (
        "cpu" if str(device).startswith("cpu") else "cuda" if str(device).startswith("cuda") else str(device)
    )
    budget = int(budget_bytes) if budget_bytes is not None else available_memory(device)
    if getattr(request, "dtype", None) == "auto":  # as the generation plan resolves it
        request = dataclasses.replace(request, dtype=default_dtype(device))
    req = Request.of(request, components, mask_source)
    d = model_cfg.vae.downsample
    bad = [s for s in req.output_size if s % d]
    if bad:
        raise RequestError(f"output size {req.output_size} must be a multiple of {d} on every axis")
    latent = tuple(s // d for s in req.output_size)
    explicit = _Explicit(decode_window, decode_overlap, num_splits)
    mask_latent = tuple(int(s) for s in model_cfg.mask_latent_shape[1:]) if req.mask_model else None

    offloads = (False, True) if kind == "cuda" else (False,)
    best: MemoryPlan | None = None
    for offload in offloads:
        plan = _plan(model_cfg, req, kind, budget, latent, mask_latent, explicit, offload, str(device))
        others = [e for e in plan.estimates if e.name != "decode"]
        if plan.peak <= budget or (explicit.given and all(e.device <= budget for e in others)):
            return plan  # the user's decode settings win (with a warning)
        if best is None or plan.peak < best.peak:
            best = plan
    worst = max(best.estimates, key=lambda e: e.device)
    raise RequestError(
        f"request needs at least {format_bytes(best.peak)} (stage {worst.name}: "
        + ", ".join(f"{k} {format_bytes(v)}" for k, v in worst.parts.items() if v)
        + f"), budget {format_bytes(budget)} on {device}; make --output-size or --batch-size smaller, or give "
        "more --max-memory"
    )


@dataclass(frozen=True)
class _Explicit:
    window: Sequence[int] | None
    overlap: float | None
    splits: int | None

    @property
    def given(self) -> bool:
        return self.window is not None or self.splits is not None


def _resident(model_cfg: Any, req: Request, kind: str, offload: bool) -> dict[str, int]:
    names = (
        ["vae"]
        + (["unet"] if req.sampling else [])
        + (["controlnet"] if req.control and req.sampling else [])
    )
    if req.mask_model:
        names += ["mask_vae", req.mask_model]
    w = {c: weight_bytes(c, model_cfg) for c in names}
    everything = sum(w.values())
    if not offload:
        return dict.fromkeys(("mask model", "mask decode", "sampling", "decode", "writing"), everything)
    return {
        "mask model": w.get(req.mask_model, 0),
        "mask decode": w.get("mask_vae", 0),
        "sampling": w.get("unet", 0) + w.get("controlnet", 0),
        "decode": w["vae"],
        "writing": 0,
    }


def _plan(model_cfg, req, kind, budget, latent, mask_latent, explicit, offload, device) -> MemoryPlan:
    # the cheapest possible decode first, without the networks: a request whose output alone exceeds the budget
    # is refused before any network is built or traced (in well under a second)
    smallest = DecodeSettings((MIN_WINDOW,) * 3, PLANNED_OVERLAP, SPLITS[-1])
    floor = decode_stage(model_cfg, req, smallest, device=kind, resident=0, kernels=0)
    if floor.device > budget and not explicit.given:
        return MemoryPlan(device, budget, (floor,), smallest, latent, offload=offload)
    resident = _resident(model_cfg, req, kind, offload)
    kernels = _kernels(model_cfg, req, kind)
    stages = fixed_stages(model_cfg, req, device=kind, resident=resident, kernels=kernels)
    held = conditioning_held(req)
    warnings: list[str] = []

    def image_stage(settings: DecodeSettings) -> StageEstimate:
        return decode_stage(
            model_cfg,
            req,
            settings,
            device=kind,
            resident=resident["decode"],
            kernels=kernels["decode"],
            held=held,
        )

    decode, est = _choose(image_stage, latent, budget, explicit, req, model_cfg.vae)
    if explicit.given and est.device > budget:
        warnings.append(
            f"decode window {'x'.join(map(str, decode.clipped(latent)))} with {decode.num_splits} slab(s) needs "
            f"about {format_bytes(est.device)}, more than the budget of {format_bytes(budget)}"
        )
    mask_decode = None
    mask_est = []
    if mask_latent is not None:
        mask_values = 4 if model_cfg.mask_vae.out_channels * math.prod(mask_latent) * 4**3 <= 2**28 else 2

        def mask_stage(settings: DecodeSettings) -> StageEstimate:
            return decode_stage(
                model_cfg, req, settings, device=kind, resident=resident["mask decode"], kernels=0,
                component="mask_vae", latent=mask_latent, output_bytes_per_value=mask_values,
            )  # fmt: skip

        mask_decode, m = _choose(
            mask_stage, mask_latent, budget, _Explicit(None, None, None), req, model_cfg.mask_vae
        )
        mask_est = [m]
    ordered = [s for s in stages if s.name == "mask model"] + mask_est
    ordered += [s for s in stages if s.name in ("conditioning", "sampling")] + [est]
    ordered += [s for s in stages if s.name == "writing"]
    return MemoryPlan(
        device=device,
        budget=budget,
        estimates=tuple(ordered),
        decode=decode,
        latent=latent,
        mask_decode=mask_decode,
        mask_latent=mask_latent,
        offload=offload,
        warnings=tuple(warnings),
    )


def _kernels(model_cfg: Any, req: Request, kind: str) -> dict[str, int]:
    """Winograd kernels :func:`maisi.performance.accelerate` keeps on a CPU (sampling networks, then the VAE's
    too) and what computing adds besides tensors."""
    from maisi.memory.estimate import FIRST_USE_CPU, meta_network
    from maisi.memory.trace import trace_peak

    if kind != "cpu":
        return {"sampling": 0, "decode": 0}
    if req.half:  # no Winograd path under autocast
        return {"sampling": FIRST_USE_CPU, "decode": FIRST_USE_CPU}

    sampling = sampling_activations(model_cfg, req)[1] if req.sampling else 0
    vae = meta_network("vae", model_cfg)
    # a 16^3-latent window: every level of the decoder is then large enough for the Winograd path
    z = torch.empty(1, model_cfg.vae.latent_channels, 16, 16, 16, device="meta")
    vae_trace = trace_peak(vae.decode, z)
    vae_kernels = sum(vae_trace.winograd_kernels.values())
    # one scratch buffer per thread, grown to the largest need: the sampling trace's already holds the UNet's
    scratch = max(vae_trace.winograd_scratch - (_sampling_scratch(model_cfg, req) if req.sampling else 0), 0)
    return {
        "sampling": sampling + FIRST_USE_CPU,
        "decode": sampling + vae_kernels + scratch + FIRST_USE_CPU,
    }


def _sampling_scratch(model_cfg: Any, req: Request) -> int:
    from maisi.memory.estimate import _key, _sampling_trace

    latent = tuple(s // model_cfg.vae.downsample for s in req.output_size)
    tr = _sampling_trace(
        _key(model_cfg), latent, req.batch, req.guidance > 0, req.control, req.uncond_control, req.half
    )
    return tr.winograd_scratch


def _work(settings: DecodeSettings, latent: Sequence[int], downsample: int) -> float:
    """Relative decoding work: decoded voxels over every window, plus the halo rows of each slab."""
    window = settings.clipped(latent)
    n = settings.windows(latent) if settings.tiled(latent) else 1
    rows = window[0] * downsample
    halo = 1 + 2 * settings.num_splits / rows
    return n * math.prod(window) * halo


def _choose(
    stage, latent, budget, explicit: _Explicit, req: Request, vae_cfg
) -> tuple[DecodeSettings, StageEstimate]:
    """The decode settings with the least work among those that fit (module doc); the user's where given."""
    overlap = explicit.overlap if explicit.overlap is not None else PLANNED_OVERLAP
    if explicit.window is not None:
        window = tuple(int(w) for w in explicit.window)
        splits = [explicit.splits] if explicit.splits is not None else list(SPLITS)
        options = [DecodeSettings(window, overlap, s) for s in splits]
        fits = [o for o in options if stage(o).device <= budget]
        chosen = fits[0] if fits else options[-1]
        return chosen, stage(chosen)
    splits = [explicit.splits] if explicit.splits is not None else list(SPLITS)
    whole = tuple(latent)
    for s in splits:
        settings = DecodeSettings(whole, overlap, s)
        est = stage(settings)
        if est.device <= budget:
            return settings, est
    sizes = sorted({w for w in range(MIN_WINDOW, max(latent), 4)} | {max(latent)})
    candidates = []
    for s in splits:
        # the largest cubic window that fits with s slabs (memory grows with the window)
        lo, hi = 0, len(sizes) - 1
        found = None
        while lo <= hi:
            mid = (lo + hi) // 2
            settings = DecodeSettings((sizes[mid],) * 3, overlap, s)
            if stage(settings).device <= budget:
                found, lo = settings, mid + 1
            else:
                hi = mid - 1
        if found is not None:
            candidates.append(found)
    if not candidates:
        smallest = DecodeSettings((MIN_WINDOW,) * 3, overlap, splits[-1])
        return smallest, stage(smallest)
    best = min(candidates, key=lambda c: (_work(c, latent, vae_cfg.downsample), c.num_splits))
    return best, stage(best)


__all__ = ["MIN_WINDOW", "PLANNED_OVERLAP", "SPLITS", "MemoryPlan", "plan_memory"]
