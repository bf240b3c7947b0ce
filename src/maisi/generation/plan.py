"""The plan of a generation run: everything decided once, before any network is loaded or any voxel sampled.

:func:`plan_generation` validates the request, resolves the device and this process's share of the samples,
inspects the weights folder (without loading it), chooses the mask source and the networks it needs, the device
and precision (``auto``: the GPU in half precision where there is one), and the memory plan
(:func:`maisi.memory.plan_memory`: each stage's estimate, the decode that fits ``max_memory``; a request that
cannot fit is refused here, before anything is loaded). The plan is data: ``maisi generate --dry-run`` prints it
beside the resolved config, and every sidecar records the parts that determine a sample (the request digest) and
the memory plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from maisi.config.schema import Config, GenerateConfig
from maisi.generation.masks.choice import (
    check_source,
    choose_source_kind,
    make_mask_source,
    mask_generator,
)
from maisi.generation.masks.file import LabelReading
from maisi.generation.mr import check_modality_weights, image_only_for_mr
from maisi.generation.request import check_body_region, modality_id, validate_request
from maisi.generation.seeds import shard
from maisi.generation.weights import IMAGE_COMPONENTS, WeightsInfo, inspect_weights, network_configs
from maisi.memory import MemoryPlan, default_device, default_dtype, parse_memory, plan_memory
from maisi.runtime import ProcessEnv, process_env, resolve_device

#: request keys that do not change what a sample is (left out of the request digest)
NOT_IDENTITY = (
    "output_dir",
    "num_samples",
    "device",
    "preview",
    "batch_size",
    "export",
    "max_memory",
    "decode_splits",
)


@dataclass(frozen=True)
class Plan:
    """What one ``generate`` call will do.

    Attributes:
        request: the validated request (``cfg.generate``, with ``device`` and ``dtype`` resolved).
        reading: how user label maps are read (``cfg.data``: ``label_set``, ``unknown_labels``, ``one_hot``).
        weights: the weights folder, inspected.
        device: where the networks run.
        mask_source: ``file``, ``database``, ``model`` or ``phantom`` (or a custom source's name).
        components: the networks to load.
        indices: the samples this process makes (every ``world_size``-th of the requested ones).
        modality: modality class id.
        regions: requested body-region indices.
        keep_ids: MAISI ids written to the label file (empty: all).
        warnings: what validation found (field of view, size), said once per run.
        process: this process's place in a torchrun launch.
        memory: the memory plan (:func:`with_run_memory`; None until then).
    """

    request: GenerateConfig
    reading: LabelReading
    weights: WeightsInfo
    device: str
    mask_source: str
    components: tuple[str, ...]
    indices: tuple[int, ...]
    modality: int
    regions: tuple[int, ...]
    keep_ids: tuple[int, ...]
    warnings: tuple[str, ...] = ()
    process: ProcessEnv = field(default_factory=ProcessEnv)
    memory: MemoryPlan | None = None

    def weights_identity(self) -> dict[str, Any]:
        return self.weights.identity(self.components)

    def digest(self, index: int, identity: dict[str, Any] | None = None) -> str:
        """SHA-256 over what determines sample ``index``: the request (minus :data:`NOT_IDENTITY`), the weights'
        identity and the index."""
        from maisi.config import to_dict

        request = {k: v for k, v in to_dict(self.request).items() if k not in NOT_IDENTITY}
        weights = self.weights_identity() if identity is None else identity
        blob = json.dumps(
            {"request": request, "weights": weights, "index": index}, sort_keys=True, default=str
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-ready data (``--dry-run``)."""
        return {
            "weights": {"path": str(self.weights.root), "layout": self.weights.layout},
            "device": self.device,
            "dtype": self.request.dtype,
            "mask_source": self.mask_source,
            "components": list(self.components),
            "samples": list(self.indices),
            "rank": self.process.rank,
            "world_size": self.process.world_size,
            "modality_id": self.modality,
            "warnings": list(self.warnings),
            "memory": self.memory.describe() if self.memory is not None else None,
        }

    def with_memory(self, model_cfg: Any, grid: Sequence[int] | None = None) -> Plan:
        """This plan with its memory plan for ``grid`` (default the requested output size), decided from the
        networks' configs ``model_cfg``; its warnings join the plan's.

        Raises:
            RequestError: the request cannot fit ``max_memory`` (one line: the estimate, the stage, the budget).
        """
        gen = self.request
        if grid is not None:
            gen = dataclasses.replace(gen, output_size=tuple(int(n) for n in grid))
        memory = plan_memory(
            model_cfg,
            gen,
            budget_bytes=parse_memory(gen.max_memory) if gen.max_memory is not None else None,
            device=self.device,
            components=self.components,
            decode_window=gen.decode_window,
            decode_overlap=gen.decode_overlap,
            num_splits=gen.decode_splits,
            mask_source=self.mask_source,
        )
        warnings = tuple(dict.fromkeys([*self.warnings, *memory.warnings]))
        return dataclasses.replace(self, memory=memory, warnings=warnings)


def plan_generation(
    cfg: Config,
    *,
    weights: WeightsInfo | None = None,
    mask_source: str | None = None,
    indices: Sequence[int] | None = None,
) -> Plan:
    """Decide a run from a resolved config; raises a one-line :class:`~maisi.errors.MaisiError` on bad input.

    Args:
        cfg: the resolved config (``cfg.generate`` is the request; ``cfg.data`` says how user label maps are
            read).
        weights: the weights, when already known (a loaded model set); default: ``cfg.generate.weights``
            inspected.
        mask_source: the name of a custom mask source that replaces the request's.
        indices: which samples to make (default all ``num_samples``); this process takes its share.
    """
    gen = cfg.generate
    info = weights or inspect_weights(gen.weights)  # reads config files only
    kind = mask_source or image_only_for_mr(gen, info, choose_source_kind(gen, info))
    # the modality against the weights before the grid: a CT request on MR weights is told that, not its CT sizes
    mr_warnings = check_modality_weights(gen, info, kind, preset=cfg.preset)
    checked = validate_request(gen, check_grid=not (kind == "file" and not gen.fit_mask))
    checked.warnings += mr_warnings
    process = process_env()
    device = resolve_device(default_device() if gen.device == "auto" else gen.device, process.local_rank)
    dtype = default_dtype(device) if gen.dtype == "auto" else gen.dtype
    if mask_source is None:
        check_source(kind, gen, info)
    reading = LabelReading(str(cfg.data.label_set), cfg.data.unknown_labels, cfg.data.one_hot)
    if kind in ("file", "database"):
        reading.check()
    components = IMAGE_COMPONENTS
    if kind == "model":
        components += ("mask_vae", "mask_unet_v2" if mask_generator(gen, info) == "v2" else "mask_unet")
    if kind == "none":
        components = tuple(c for c in IMAGE_COMPONENTS if c != "controlnet")
    wanted = range(gen.num_samples) if indices is None else indices
    return Plan(
        request=dataclasses.replace(gen, device=str(device), dtype=dtype),
        reading=reading,
        weights=info,
        device=str(device),
        mask_source=kind,
        components=components,
        indices=tuple(shard(list(wanted), process.rank, process.world_size)),
        modality=modality_id(gen.modality),
        regions=tuple(check_body_region(gen.body_region)),
        keep_ids=tuple(checked.keep_ids),
        warnings=tuple(checked.warnings),
        process=process,
    )


def describe_run(cfg: Config) -> dict[str, Any]:
    """The plan of a run as ``maisi generate --dry-run`` prints it, memory plan included: a user mask kept on its
    own grid is read for that grid; no network is loaded."""
    plan = plan_generation(cfg)
    source = None
    if plan.mask_source == "file" and not plan.request.fit_mask:
        source = make_mask_source("file", plan.request, weights=plan.weights, reading=plan.reading)
    return with_run_memory(plan, cfg, source).describe()


def with_run_memory(plan: Plan, cfg: Config, source: Any = None, model_cfg: Any = None) -> Plan:
    """``plan`` with its memory plan, decided from the networks' configs before any network is loaded (after the
    output folder is checked, so that output problems are said first).

    Args:
        source: the mask source once made: a user mask kept on its own grid (``source.sample``) decides the grid;
            default the requested output size.
        model_cfg: the networks' configs when loaded (default: read from the weights' config files).

    Raises:
        RequestError: the request cannot fit ``max_memory``.
    """
    fixed = getattr(source, "sample", None)
    grid = fixed.shape if fixed is not None and plan.mask_source == "file" else None
    nets = model_cfg or network_configs(plan.weights, components=plan.components, base=cfg.model)
    return plan.with_memory(nets, grid=grid)
