"""Downloading NVIDIA's official MAISI checkpoints (``nvidia/NV-Generate-CT`` on the Hugging Face hub).

Files land in ``DIR/models/`` (the official layout that :func:`maisi.networks.model_set.load_model_set` reads),
are checked against the hub's sizes and SHA-256 hashes, resume from partial downloads, and are moved into place
atomically. The hub is pluggable: :class:`HuggingFaceHub` talks to the real hub; :class:`FolderHub` serves a local
folder with the same layout (used by the tests, and usable as an offline mirror).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from maisi.errors import MaisiError
from maisi.io import sha256_file
from maisi.networks.official import OFFICIAL_FILES

HUB_REPO = "nvidia/NV-Generate-CT"
_CHUNK = 1 << 20


class DownloadError(MaisiError):
    """A download failed (no network, missing file, size or hash mismatch)."""


def default_weights_dir(variant: str) -> Path:
    """Where ``maisi download VARIANT`` puts files by default: ``$MAISI_HOME/VARIANT`` or ``~/.cache/maisi/VARIANT``."""
    home = os.environ.get("MAISI_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "maisi"
    return base / variant


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repository: its path in the repository, size in bytes and SHA-256 (when the hub knows)."""

    path: str
    size: int | None
    sha256: str | None


class Hub(Protocol):
    """What :func:`download` needs from a hub."""

    def files(self, repo: str) -> dict[str, RemoteFile]: ...

    def fetch(self, repo: str, path: str, partial: Path) -> None:
        """Complete ``partial`` (which may hold a prefix of the file) with the rest of the file."""


class FolderHub:
    """A hub served from a local folder ``ROOT/<owner>/<name>/<path>`` (an offline mirror or a test fixture)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def files(self, repo: str) -> dict[str, RemoteFile]:
        base = self.root / repo
        if not base.is_dir():
            raise DownloadError(f"{base}: repository {repo!r} not found in the local hub folder")
        out = {}
        for p in sorted(base.rglob("*")):
            if p.is_file():
                rel = p.relative_to(base).as_posix()
                out[rel] = RemoteFile(rel, p.stat().st_size, sha256_file(p))
        return out

    def fetch(self, repo: str, path: str, partial: Path) -> None:
        src = self.root / repo / path
        done = partial.stat().st_size if partial.exists() else 0
        with src.open("rb") as fin, partial.open("ab") as fout:
            fin.seek(done)
            shutil.copyfileobj(fin, fout, _CHUNK)


class HuggingFaceHub:
    """The real Hugging Face hub through ``huggingface_hub`` (which resumes interrupted transfers itself)."""

    def __init__(self, *, token: str | None = None, revision: str | None = None) -> None:
        self.token = token
        self.revision = revision

    def files(self, repo: str) -> dict[str, RemoteFile]:
        from huggingface_hub import HfApi

        try:
            info = HfApi(token=self.token).model_info(repo, revision=self.revision, files_metadata=True)
        except Exception as e:  # the hub client raises many network error types
            raise DownloadError(
                f"cannot reach the Hugging Face hub for {repo!r} (no network?): {_one_line(e)}"
            ) from None
        out = {}
        for s in info.siblings or []:
            lfs = getattr(s, "lfs", None)
            sha = getattr(lfs, "sha256", None) if lfs is not None else None
            out[s.rfilename] = RemoteFile(s.rfilename, getattr(s, "size", None), sha)
        return out

    def fetch(self, repo: str, path: str, partial: Path) -> None:
        from huggingface_hub import hf_hub_download

        try:
            got = hf_hub_download(
                repo_id=repo,
                filename=path,
                revision=self.revision,
                token=self.token,
                cache_dir=partial.parent / ".hf-cache",
            )
        except Exception as e:
            raise DownloadError(f"download of {repo}/{path} failed (no network?): {_one_line(e)}") from None
        shutil.copyfile(got, partial)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _verified(path: Path, remote: RemoteFile) -> bool:
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    return remote.sha256 is None or sha256_file(path) == remote.sha256


def download(
    variant: str = "rflow-ct",
    *,
    directory: str | os.PathLike | None = None,
    hub: Hub | None = None,
    repo: str = HUB_REPO,
    progress: bool = True,
) -> list[Path]:
    """Fetch the official checkpoints of ``variant`` into ``directory/models/``.

    Files already present and matching the hub's size and hash are kept; partial files (``*.part``) are resumed.

    Returns:
        The paths of the checkpoint files, in component order.

    Raises:
        DownloadError: unknown variant, no network, a file missing on the hub, or a size/hash mismatch.
    """
    if variant not in OFFICIAL_FILES:
        raise DownloadError(f"unknown weights {variant!r}; available: {sorted(OFFICIAL_FILES)}")
    hub = hub or HuggingFaceHub()
    target = Path(directory) if directory is not None else default_weights_dir(variant)
    models = target / "models"
    models.mkdir(parents=True, exist_ok=True)
    remote = hub.files(repo)
    out = []
    names = list(dict.fromkeys(OFFICIAL_FILES[variant].values()))
    for name in tqdm(names, desc=f"maisi download {variant}", disable=not progress):
        rpath = f"models/{name}"
        if rpath not in remote:
            raise DownloadError(f"{repo}: file {rpath!r} not found on the hub")
        dest = models / name
        if dest.exists() and _verified(dest, remote[rpath]):
            out.append(dest)
            continue
        partial = models / f"{name}.part"
        if (
            partial.exists()
            and remote[rpath].size is not None
            and partial.stat().st_size > remote[rpath].size
        ):
            partial.unlink()  # longer than the real file: cannot be a prefix of it
        hub.fetch(repo, rpath, partial)
        if not _verified(partial, remote[rpath]):
            got = partial.stat().st_size
            partial.unlink()
            raise DownloadError(
                f"{dest}: downloaded file does not match the hub (size {got} vs {remote[rpath].size}, or SHA-256 "
                "differs); removed, run the command again"
            )
        os.replace(partial, dest)
        out.append(dest)
    return out
