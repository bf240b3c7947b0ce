"""What a weights folder holds, without loading anything: its layout, official variant, components, dataset files,
and which generation flows and mask sources they support (the requirements in
:data:`maisi.networks.variants.FLOWS`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from maisi.errors import CheckpointError, MaisiError
from maisi.io import read_json
from maisi.networks.variants import FLOWS, VARIANTS

#: flows a folder in maisi's own layout can support (its datasets live elsewhere: ``maisi masks index``)
MAISI_FLOWS = ("paired", "image-only", "mask-model-v1", "mask-model-v2")


@dataclass(frozen=True)
class Inventory:
    """The survey of one weights folder (for one official variant when it holds several).

    Attributes:
        layout: ``'official'`` (NVIDIA's ``models/*.pt`` and ``datasets/``), ``'maisi'`` (component folders), or
            ``'none'``.
        variant: the official variant surveyed (None for maisi's layout).
        variants: every official variant the folder holds files of (see
            :func:`maisi.networks.official.official_variants`).
        components: component -> file or folder present (``mask_unet_v2``: the AdaGN mask generator).
        datasets: dataset role -> path present (``anatomy_sizes``, ``candidates``, ``mask_archive``, and
            ``mask_folder`` once the archive is extracted).
        flows: every flow the variant can support -> what the folder lacks for it (empty: supported).
    """

    root: Path
    layout: str
    variant: str | None
    variants: tuple[str, ...]
    components: dict[str, Path]
    datasets: dict[str, Path]
    flows: dict[str, tuple[str, ...]]

    @property
    def supported(self) -> list[str]:
        """The flows the folder supports, in :data:`~maisi.networks.variants.FLOWS` order."""
        return [f for f, missing in self.flows.items() if not missing]


def _flows(names: tuple[str, ...], have: set[str]) -> dict[str, tuple[str, ...]]:
    return {f: tuple(r for r in FLOWS[f] if r not in have) for f in names}


def _maisi_inventory(d: Path) -> Inventory:
    from maisi.networks.builders import COMPONENTS
    from maisi.networks.checkpoint import CONFIG_NAME

    components: dict[str, Path] = {}
    for name in COMPONENTS:
        if (d / name / CONFIG_NAME).is_file():
            components[name] = d / name
    if "mask_unet" in components:
        try:
            kind = read_json(d / "mask_unet" / CONFIG_NAME).get("config", {}).get("variant")
        except (MaisiError, AttributeError):
            kind = None
        if kind == "adagn":  # the 2026 mask generator: its requirements are those of mask-model-v2
            components["mask_unet_v2"] = components.pop("mask_unet")
    return Inventory(d, "maisi", None, (), components, {}, _flows(MAISI_FLOWS, set(components)))


def survey(directory: str | os.PathLike, variant: str | None = None) -> Inventory:
    """Survey a weights folder (``DIR`` holding ``models/`` and ``datasets/``, or maisi's component folders).

    Args:
        variant: the official variant to survey (default: the folder's, :func:`~maisi.networks.official.official_variant`).

    Raises:
        CheckpointError: the folder does not exist, or ``variant`` is unknown.
    """
    from maisi.networks.archive import archive_folder_state
    from maisi.networks.builders import COMPONENTS
    from maisi.networks.checkpoint import CONFIG_NAME
    from maisi.networks.official import official_dir, official_variant, official_variants

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: weights folder not found")
    if variant is None and any((d / c / CONFIG_NAME).is_file() for c in COMPONENTS):
        return _maisi_inventory(d)
    name = variant or official_variant(d)
    if name not in VARIANTS:
        raise CheckpointError(f"unknown official variant {name!r}; known: {sorted(VARIANTS)}")
    spec = VARIANTS[name]
    odir = official_dir(d) or d / "models"
    components = {c: odir / f.name for c, f in spec.model_files().items() if (odir / f.name).is_file()}
    datasets = {r: d / f.path for r, f in spec.dataset_files().items() if (d / f.path).is_file()}
    if spec.archive is not None and archive_folder_state(d / spec.archive.folder) != "missing":
        datasets["mask_folder"] = d / spec.archive.folder
    if not components and not datasets and variant is None:
        return Inventory(d, "none", None, (), {}, {}, {})
    have = set(components) | set(datasets)
    return Inventory(
        d, "official", name, tuple(official_variants(d)), components, datasets, _flows(spec.flows, have)
    )
