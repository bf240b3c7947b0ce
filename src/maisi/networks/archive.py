"""Extracting a downloaded zip archive safely, once, atomically.

Every member is checked before anything is written: absolute names, ``..`` components, symbolic links and other
non-regular files (from the zip's Unix mode bits), and names whose resolved path leaves the target are refused. The
disk space the members need is checked first. The archive is extracted into a hidden folder beside the target,
which is moved into place with one ``os.replace`` once complete, holding a marker file that records the archive it
came from: a re-run finds the marker and extracts nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from maisi.errors import DownloadError

#: written into an extracted folder: which archive (name, size) it holds, and how many files
MARKER = ".maisi-extracted.json"
_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class Extracted:
    """Outcome of :func:`extract_zip`: the folder, its file count, and whether this call wrote it."""

    folder: Path
    files: int
    extracted: bool


def _member_parts(archive: Path, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path components of a member, or a DownloadError naming archive and member when it is unsafe."""
    name = info.filename

    def refuse(why: str) -> DownloadError:
        return DownloadError(f"{archive}: refusing member {name!r}: {why}; nothing was extracted")

    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        raise refuse("absolute path")
    parts = tuple(p for p in re.split(r"[/\\]", name) if p not in ("", "."))
    if ".." in parts:
        raise refuse("'..' component")
    if "\0" in name:
        raise refuse("NUL byte in the name")
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:  # Unix mode bits are recorded
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            raise refuse("symbolic link")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise refuse("not a regular file or folder")
    if not parts and not info.is_dir():
        raise refuse("empty name")
    return parts


def _plan(archive: Path, zf: zipfile.ZipFile, member_root: str | None) -> list[tuple[zipfile.ZipInfo, tuple]]:
    """(member, relative parts in the target) for every member, the member root stripped when all share it."""
    members = [(info, _member_parts(archive, info)) for info in zf.infolist()]
    tops = {parts[0] for _, parts in members if parts}
    strip = member_root is not None and tops == {member_root}
    out = []
    for info, parts in members:
        rel = parts[1:] if strip else parts
        if rel:
            out.append((info, rel))
    return out


def _destinations(root: Path, plan: list[tuple[zipfile.ZipInfo, tuple]], archive: Path) -> list[Path]:
    """Where each member goes under ``root``; a DownloadError for one whose resolved path leaves ``root``."""
    top = root.resolve()
    out = []
    for info, rel in plan:
        dest = root.joinpath(*rel)
        if not dest.resolve().is_relative_to(top):
            raise DownloadError(
                f"{archive}: refusing member {info.filename!r}: resolves outside {root}; nothing was extracted"
            )
        out.append(dest)
    return out


def _fingerprint(zf: zipfile.ZipFile) -> str:
    """SHA-256 over the central directory's names, CRCs and sizes: identifies the archive without reading it."""
    h = hashlib.sha256()
    for info in zf.infolist():
        h.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
    return h.hexdigest()


def _marker_text(archive: Path, fingerprint: str, files: int) -> str:
    return json.dumps({"archive": archive.name, "fingerprint": fingerprint, "files": files}, indent=2)


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(folder: Path, plan: list[tuple[zipfile.ZipInfo, tuple]]) -> str | None:
    """None when ``folder`` holds every file of the archive at its size, else the first member that differs."""
    for info, rel in plan:
        if info.is_dir():
            continue
        p = folder.joinpath(*rel)
        if not p.is_file() or p.stat().st_size != info.file_size:
            return info.filename
    return None


def extract_zip(
    archive: str | os.PathLike, folder: str | os.PathLike, *, member_root: str | None = None
) -> Extracted:
    """Extract ``archive`` into ``folder`` once, atomically, refusing unsafe members.

    Args:
        member_root: when every member lies under this one top-level folder, it is stripped (its content lands
            directly in ``folder``); otherwise the members are extracted as they are.

    Returns:
        The folder, its file count, and ``extracted=False`` when it was already complete (marker for this archive,
        or, without a marker, every member present at its size: the marker is then added).

    Raises:
        DownloadError: an unsafe member (naming it), not enough disk space, a corrupt archive, or an existing
            folder that does not match the archive.
    """
    archive, folder = Path(archive), Path(folder)
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as e:
        raise DownloadError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        plan = _plan(archive, zf, member_root)
        n_files = sum(1 for info, _ in plan if not info.is_dir())
        fingerprint = _fingerprint(zf)
        if folder.is_dir():
            marker = _read_marker(folder)
            if marker is not None and marker.get("fingerprint") == fingerprint:
                return Extracted(folder, n_files, extracted=False)
            if marker is None:
                differs = _matches(folder, plan)
                if differs is not None:
                    raise DownloadError(
                        f"{folder} exists but does not match {archive.name} (member {differs!r} missing or of "
                        "another size); remove the folder and run again"
                    )
                (folder / MARKER).write_text(_marker_text(archive, fingerprint, n_files), encoding="utf-8")
                return Extracted(folder, n_files, extracted=False)
        folder.parent.mkdir(parents=True, exist_ok=True)
        need = sum(info.file_size for info, _ in plan)
        free = shutil.disk_usage(folder.parent).free
        if need > free:
            raise DownloadError(
                f"{archive}: extracting needs {need / 2**30:.2f} GiB, only {free / 2**30:.2f} GiB free in "
                f"{folder.parent}"
            )
        tmp = folder.parent / f".{folder.name}.extracting"
        if tmp.exists():
            shutil.rmtree(tmp)  # left by an interrupted extraction
        tmp.mkdir()
        try:
            dests = _destinations(tmp, plan, archive)
        except DownloadError:
            tmp.rmdir()
            raise
        try:
            for (info, _), dest in zip(plan, dests):
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            (tmp / MARKER).write_text(_marker_text(archive, fingerprint, n_files), encoding="utf-8")
            old = None
            if folder.exists():  # extracted from another version of the archive: swap it out
                old = folder.parent / f".{folder.name}.old"
                if old.exists():
                    shutil.rmtree(old)
                os.replace(folder, old)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DownloadError(f"{archive}: corrupt archive ({e}); remove it and run again") from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return Extracted(folder, n_files, extracted=True)


def archive_folder_state(folder: str | os.PathLike) -> str:
    """``'extracted'`` (a folder with the marker), ``'present'`` (a folder without it) or ``'missing'``."""
    f = Path(folder)
    if not f.is_dir():
        return "missing"
    return "extracted" if (f / MARKER).is_file() else "present"
