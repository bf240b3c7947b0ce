"""The official mask database of a weights folder: the candidate-mask list resolved to the extracted label maps.

``DIR/datasets/candidate_masks_flexible_size_and_spacing_{4000,3000}.json`` is a JSON list; each entry names its
label map by ``pseudo_label_filename`` (and optionally ``label_filename``), relative to the folder the mask archive is
extracted into (the official ``all_mask_files_base_dir``), and describes it by ``dim``, ``spacing``, ``label_list``
and, for the DDPM list, ``top_region_index`` / ``bottom_region_index``. The names are input text: each must resolve
inside that folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maisi.errors import DataError
from maisi.io import read_json
from maisi.networks.variants import VARIANTS, HubFile, MaskArchive


def _database_spec(root: Path, variant: str | None) -> tuple[str, HubFile, MaskArchive]:
    """(variant, candidate list, mask archive) of the folder's variant or the one named."""
    if variant is None:
        from maisi.networks.official import official_variant

        variant = official_variant(root)
    spec = VARIANTS.get(variant)
    if spec is None:
        raise DataError(f"unknown official variant {variant!r}; known: {sorted(VARIANTS)}")
    if spec.candidates is None or spec.archive is None:
        raise DataError(f"{root}: the official variant {variant!r} has no mask database (CT variants only)")
    return variant, spec.candidates, spec.archive


def _contained(folder: Path, top: Path, name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: expected a relative file name, got {name!r}")
    path = (folder / name).resolve()
    if not path.is_relative_to(top):
        raise DataError(f"{where}: {name!r} lies outside {folder}; refusing the candidate list")
    return str(path)


def mask_folder(directory: str | os.PathLike, variant: str | None = None, *, extract: bool = True) -> Path:
    """The extracted mask folder of an official weights folder, extracting the downloaded archive first when it is
    there but not extracted yet (once, safely: :func:`maisi.networks.archive.extract_zip`).

    Raises:
        DataError: neither the folder nor the archive is there (or ``extract`` is False).
    """
    root = Path(directory)
    name, _, archive = _database_spec(root, variant)
    folder = root / archive.folder
    if not folder.is_dir():
        if not (extract and (root / archive.file.path).is_file()):
            raise DataError(
                f"{folder}: mask folder not found (the mask database needs `maisi download {name}` without "
                "--models-only)"
            )
        from maisi.networks.archive import extract_zip

        extract_zip(root / archive.file.path, folder, member_root=archive.member_root)
    return folder


def load_candidate_list(
    directory: str | os.PathLike,
    variant: str | None = None,
    *,
    extract: bool = True,
    check_files: bool = True,
) -> list[dict[str, Any]]:
    """The entries of the official candidate-mask list of a weights folder, each resolved to its label map.

    Args:
        directory: the weights folder holding ``datasets/`` (as written by ``maisi download rflow-ct``).
        variant: ``'rflow-ct'`` (4000-entry list) or ``'ddpm-ct'`` (3000 entries); default: the folder's variant.
        extract: extract the downloaded archive when its folder is missing (see :func:`mask_folder`).
        check_files: require every named file to exist.

    Returns:
        A copy of each entry with ``path`` (absolute, resolved path of ``pseudo_label_filename``) added, and
        ``label_path`` when the entry has ``label_filename``; in list order.

    Raises:
        DataError (one line): no list or mask folder, a malformed list, an entry whose name resolves outside the
            mask folder, or (``check_files``) files missing from it.
    """
    root = Path(directory)
    name, candidates, _ = _database_spec(root, variant)
    list_path = root / candidates.path
    if not list_path.is_file():
        raise DataError(
            f"{list_path}: candidate mask list not found (run `maisi download {name}` without --models-only)"
        )
    folder = mask_folder(root, name, extract=extract)
    entries = read_json(list_path, what="candidate mask list")
    if not isinstance(entries, list):
        raise DataError(f"{list_path}: expected a JSON list of entries, got {type(entries).__name__}")
    top = folder.resolve()
    out = []
    for i, entry in enumerate(entries):
        where = f"{list_path}: entry {i}"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
        item = dict(entry)
        item["path"] = _contained(
            folder, top, entry.get("pseudo_label_filename"), f"{where} pseudo_label_filename"
        )
        if "label_filename" in entry:
            item["label_path"] = _contained(folder, top, entry["label_filename"], f"{where} label_filename")
        out.append(item)
    if check_files:
        missing = [e["path"] for e in out if not os.path.isfile(e["path"])]
        if missing:
            raise DataError(
                f"{list_path}: {len(missing)} of {len(out)} label maps missing from {folder} (first: {missing[0]}); "
                f"remove the folder and run `maisi download {name}` again"
            )
    return out
