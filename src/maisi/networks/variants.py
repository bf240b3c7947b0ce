"""NVIDIA's official MAISI variants as data: for each, the hub files by role and where they land on disk.

This table is the one home of these facts; :data:`maisi.networks.official.OFFICIAL_FILES` (component -> file name),
:func:`maisi.networks.hub.download`, the folder inventory (:mod:`maisi.networks.inventory`) and the candidate-list
loader (:mod:`maisi.networks.mask_files`) all read it.

The official layout (``scripts/download_model_data.py`` and the ``configs/environment_*.json`` files of
NVIDIA-Medtech/NV-Generate-CTMR): a weights folder ``DIR`` holds ``DIR/models/*.pt`` and ``DIR/datasets/...``; every
file sits at the same path under ``DIR`` as in its hub repository. The mask archive is unpacked beside itself into
``DIR/datasets/all_masks_flexible_size_and_spacing_4000/`` (the official ``all_mask_files_base_dir``), and the
candidate list's ``pseudo_label_filename`` / ``label_filename`` entries are relative to that folder.

Facts not confirmed by an official source are marked in comments; see :data:`UNCONFIRMED`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType

CT_REPO = "nvidia/NV-Generate-CT"
MR_REPO = "nvidia/NV-Generate-MR"
MR_BRAIN_REPO = "nvidia/NV-Generate-MR-Brain"


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repository; it lands at the same relative ``path`` under the weights folder.

    ``optional``: a file whose hosting is not confirmed; when the hub does not hold it, ``maisi download`` notes
    it and goes on instead of failing.
    """

    repo: str
    path: str
    optional: bool = False

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name


@dataclass(frozen=True)
class MaskArchive:
    """The zip of real label maps that the mask database retrieves from.

    Attributes:
        file: the archive on the hub (and on disk, at ``file.path``).
        folder: where its content is extracted, relative to the weights folder (the official
            ``all_mask_files_base_dir``).
        member_root: the one top-level folder the archive's members are expected under; it is stripped, so the
            members land directly in ``folder``. An archive without that top folder is extracted as it is.
    """

    file: HubFile
    folder: str
    member_root: str


@dataclass(frozen=True)
class OfficialVariant:
    """An official model variant.

    Attributes:
        models: component name -> checkpoint, for the networks maisi's model sets build and load
            (``mask_unet_v2``: the 2026 AdaGN mask generator, ``mask_generation_diffusion_unet_v2.pt``).
        anatomy_sizes: ``all_anatomy_size_conditions.json`` (organ-size vectors of real masks).
        candidates: the candidate-mask list of the mask database (JSON list of entries).
        archive: the mask archive the candidate list points into.
        flows: the generation flows the variant can support (see :data:`FLOWS`).
    """

    name: str
    modality: str
    models: Mapping[str, HubFile]
    anatomy_sizes: HubFile | None = None
    candidates: HubFile | None = None
    archive: MaskArchive | None = None
    flows: tuple[str, ...] = ("image-only",)

    def model_files(self) -> dict[str, HubFile]:
        """Every checkpoint by role."""
        return dict(self.models)

    def dataset_files(self) -> dict[str, HubFile]:
        """Every dataset file by role (``anatomy_sizes``, ``mask_archive``, ``candidates``), those the variant has."""
        out = {"anatomy_sizes": self.anatomy_sizes, "candidates": self.candidates}
        out["mask_archive"] = self.archive.file if self.archive is not None else None
        return {k: v for k, v in out.items() if v is not None}

    def files(self, *, models_only: bool = False) -> list[HubFile]:
        """What ``maisi download`` fetches: the checkpoints, then (unless ``models_only``) the datasets."""
        out = list(self.model_files().values())
        if not models_only:
            out += list(self.dataset_files().values())
        return list(dict.fromkeys(out))


def _ct_models(diffusion: str) -> dict[str, HubFile]:
    return {
        "vae": HubFile(CT_REPO, "models/autoencoder_v1.pt"),
        "unet": HubFile(CT_REPO, f"models/diff_unet_3d_{diffusion}.pt"),
        "controlnet": HubFile(CT_REPO, f"models/controlnet_3d_{diffusion}.pt"),
        "mask_vae": HubFile(CT_REPO, "models/mask_generation_autoencoder.pt"),
        "mask_unet": HubFile(CT_REPO, "models/mask_generation_diffusion_unet.pt"),
    }


# Unconfirmed: which repository and path host the v2 mask generator. The official README lists NV-Generate-CT as
# the weights of `rflow-mask`, and configs/environment_rflow-ct.json expects models/mask_generation_diffusion_unet_v2.pt;
# scripts/download_model_data.py does not fetch it (yet).
_MASK_UNET_V2 = HubFile(CT_REPO, "models/mask_generation_diffusion_unet_v2.pt", optional=True)
_MASK_ARCHIVE = MaskArchive(
    file=HubFile(CT_REPO, "datasets/all_masks_flexible_size_and_spacing_4000.zip"),
    folder="datasets/all_masks_flexible_size_and_spacing_4000",
    # inferred: the official find_masks extracts the zip into datasets/ and then reads this folder
    member_root="all_masks_flexible_size_and_spacing_4000",
)
_ANATOMY_SIZES = HubFile(CT_REPO, "datasets/all_anatomy_size_conditions.json")
_CT_FLOWS = ("paired", "image-only", "mask-model-v1", "mask-model-v2", "mask-database")

VARIANTS: Mapping[str, OfficialVariant] = MappingProxyType(
    {
        "rflow-ct": OfficialVariant(
            name="rflow-ct",
            modality="ct",
            models={**_ct_models("rflow-ct"), "mask_unet_v2": _MASK_UNET_V2},
            anatomy_sizes=_ANATOMY_SIZES,
            candidates=HubFile(CT_REPO, "datasets/candidate_masks_flexible_size_and_spacing_4000.json"),
            archive=_MASK_ARCHIVE,
            flows=_CT_FLOWS,
        ),
        "ddpm-ct": OfficialVariant(
            name="ddpm-ct",
            modality="ct",
            models={**_ct_models("ddpm-ct"), "mask_unet_v2": _MASK_UNET_V2},
            anatomy_sizes=_ANATOMY_SIZES,
            # the official ddpm-ct list has 3000 entries and points into the same 4000-mask archive
            candidates=HubFile(CT_REPO, "datasets/candidate_masks_flexible_size_and_spacing_3000.json"),
            archive=_MASK_ARCHIVE,
            flows=_CT_FLOWS,
        ),
        "rflow-mr": OfficialVariant(
            name="rflow-mr",
            modality="mr",
            models={
                "vae": HubFile(MR_REPO, "models/autoencoder_v2.pt"),
                "unet": HubFile(MR_REPO, "models/diff_unet_3d_rflow-mr.pt"),
            },
        ),
        "rflow-mr-brain": OfficialVariant(
            name="rflow-mr-brain",
            modality="mr",
            models={
                # the brain model runs on the CT VAE, fetched from the CT repository
                "vae": HubFile(CT_REPO, "models/autoencoder_v1.pt"),
                "unet": HubFile(MR_BRAIN_REPO, "models/diff_unet_3d_rflow-mr-brain_v1.pt"),
            },
        ),
    }
)

#: flow -> what a folder must hold for it: component names (``models`` keys) and dataset roles
#: (``candidates``; ``mask_folder`` = the extracted mask archive)
FLOWS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "paired": ("vae", "unet", "controlnet"),
        "image-only": ("vae", "unet"),
        "mask-model-v1": ("mask_vae", "mask_unet"),
        "mask-model-v2": ("mask_vae", "mask_unet_v2"),
        "mask-database": ("mask_folder", "candidates"),
    }
)

#: table entries no official source confirms, for the record (``maisi info`` and the docs cite them)
UNCONFIRMED: Mapping[str, str] = MappingProxyType(
    {
        "mask_unet_v2": f"{_MASK_UNET_V2.repo}/{_MASK_UNET_V2.path}: hub repository and path inferred (README "
        "lists NV-Generate-CT for rflow-mask; environment_rflow-ct.json names the local path)",
        "archive member_root": f"{_MASK_ARCHIVE.member_root}/: inferred from the official extraction into datasets/",
    }
)


def variant_spec(name: str) -> OfficialVariant:
    """The table entry of an official variant; ``KeyError`` listing the known ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown official variant {name!r}; known: {sorted(VARIANTS)}") from None
