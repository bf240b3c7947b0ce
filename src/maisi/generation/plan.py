"""The plan of a generation run: everything decided once, before any network is loaded or any voxel sampled.

:func:`plan_generation` validates the request, resolves the device and this process's share of the samples,
inspects the weights folder (without loading it), chooses the mask source and the networks it needs. The plan is
data: ``maisi generate --dry-run`` prints it beside the resolved config, and every sidecar records the parts that
determine a sample (the request digest).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from maisi.config.schema import Config, GenerateConfig
from maisi.generation.masks.choice import check_source, choose_source_kind, mask_generator
from maisi.generation.masks.file import LabelReading
from maisi.generation.mr import check_modality_weights, image_only_for_mr
from maisi.generation.request import check_body_region, modality_id, validate_request
from maisi.generation.seeds import shard
from maisi.generation.weights import IMAGE_COMPONENTS, WeightsInfo, inspect_weights
from maisi.runtime import ProcessEnv, process_env, resolve_device

#: request keys that do not change what a sample is (left out of the request digest)
NOT_IDENTITY = ("output_dir", "num_samples", "device", "preview", "batch_size", "export")


@dataclass(frozen=True)
class Plan:
    """What one ``generate`` call will do.

    Attributes:
        request: the validated request (``cfg.generate``).
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
            "mask_source": self.mask_source,
            "components": list(self.components),
            "samples": list(self.indices),
            "rank": self.process.rank,
            "world_size": self.process.world_size,
            "modality_id": self.modality,
            "warnings": list(self.warnings),
        }


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
    device = resolve_device(gen.device, process.local_rank)
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
        request=gen,
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
