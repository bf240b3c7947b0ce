"""Downloading NVIDIA's official MAISI files (``nvidia/NV-Generate-CT``, ``-MR``, ``-MR-Brain`` on the Hugging Face hub).

What each variant fetches is the table in :mod:`maisi.networks.variants`. Files land at their repository path under
the weights folder (``DIR/models/*.pt``, ``DIR/datasets/...``: the official layout), are checked against the hub's
sizes and SHA-256 hashes, resume from partial downloads (``*.part``), and are moved into place atomically; the mask
archive is then extracted once (:mod:`maisi.networks.archive`). The hub is pluggable: :class:`HuggingFaceHub` talks
to the real hub; :class:`FolderHub` serves a local folder ``ROOT/<owner>/<name>/<path>`` (the tests' fake hub, and
usable as an offline mirror).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from maisi.errors import DownloadError
from maisi.io import sha256_file
from maisi.networks.variants import CT_REPO, VARIANTS, HubFile

#: the CT repository (the default of earlier versions' ``--repo``)
HUB_REPO = CT_REPO
_CHUNK = 1 << 20
#: staging folder of :class:`HuggingFaceHub` beside each file (removed after a complete download)
STAGING = ".hf-download"


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
            if type(e).__name__ in ("GatedRepoError", "RepositoryNotFoundError"):
                raise DownloadError(
                    f"{repo}: access refused ({_one_line(e)}); accept the licence on "
                    f"https://huggingface.co/{repo} and set HF_TOKEN"
                ) from None
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
        """Download into a staging folder beside ``partial`` (the hub client resumes its own incomplete file
        there), then move the file onto ``partial``: no second copy in a cache."""
        from huggingface_hub import hf_hub_download

        try:
            got = Path(
                hf_hub_download(
                    repo_id=repo,
                    filename=path,
                    revision=self.revision,
                    token=self.token,
                    local_dir=partial.parent / STAGING,
                )
            )
        except Exception as e:
            raise DownloadError(f"download of {repo}/{path} failed (no network?): {_one_line(e)}") from None
        if got.is_symlink():  # older hub clients link large files into their cache
            shutil.copyfile(got, partial)
            got.unlink()
        else:
            os.replace(got, partial)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _verified(path: Path, remote: RemoteFile) -> bool:
    if remote.size is not None and path.stat().st_size != remote.size:
        return False
    return remote.sha256 is None or sha256_file(path) == remote.sha256


def _partial(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _check_space(target: Path, plan: list[tuple[HubFile, str, RemoteFile]]) -> None:
    """Refuse to start when the bytes still to transfer exceed the free space of the weights folder's disk."""
    need = 0
    for f, _, remote in plan:
        if remote.size is None:
            continue
        dest, partial = target / f.path, _partial(target / f.path)
        if dest.is_file() and dest.stat().st_size == remote.size:
            continue
        have = partial.stat().st_size if partial.is_file() else 0
        need += remote.size - (have if have <= remote.size else 0)
    free = shutil.disk_usage(target).free
    if need > free:
        raise DownloadError(
            f"{target}: the download needs {need / 2**30:.2f} GiB more, only {free / 2**30:.2f} GiB free"
        )


def _fetch(hub: Hub, repo: str, remote: RemoteFile, dest: Path) -> bool:
    """Bring ``dest`` to the hub's version of the file; True when bytes were transferred."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and _verified(dest, remote):
        return False
    partial = _partial(dest)
    if partial.exists() and remote.size is not None and partial.stat().st_size > remote.size:
        partial.unlink()  # longer than the real file: cannot be a prefix of it
    hub.fetch(repo, remote.path, partial)
    if not _verified(partial, remote):
        got = partial.stat().st_size
        partial.unlink()
        raise DownloadError(
            f"{dest}: downloaded file does not match the hub (size {got} vs {remote.size}, or SHA-256 differs); "
            "removed, run the command again"
        )
    os.replace(partial, dest)
    return True


@dataclass(frozen=True)
class Downloaded:
    """What :func:`download` left in the weights folder.

    Attributes:
        files: every file of the variant, present and verified, in table order (checkpoints, then datasets).
        fetched: those this call transferred (empty when a re-run found everything in place).
        extracted: the mask folder the archive was extracted into (empty with ``models_only``).
        missing_optional: ``repo/path`` of optional files the hub does not hold (skipped, see
            :data:`maisi.networks.variants.UNCONFIRMED`).
    """

    directory: Path
    files: list[Path]
    fetched: list[Path]
    extracted: list[Path]
    missing_optional: list[str]


def download(
    variant: str = "rflow-ct",
    *,
    directory: str | os.PathLike | None = None,
    hub: Hub | None = None,
    repo: str | None = None,
    models_only: bool = False,
    progress: bool = True,
) -> Downloaded:
    """Fetch everything the official download fetches for ``variant`` into ``directory``, then extract the mask
    archive.

    Files already present and matching the hub's size and hash are kept; partial files (``*.part``) are resumed;
    the free disk space is checked before the transfer and before the extraction.

    Args:
        variant: ``rflow-ct``, ``ddpm-ct``, ``rflow-mr`` or ``rflow-mr-brain`` (:data:`~maisi.networks.variants.VARIANTS`).
        directory: the weights folder (default :func:`default_weights_dir`).
        repo: fetch every file from this repository (a mirror holding the official paths) instead of the table's.
        models_only: the checkpoints only, no datasets (like the official ``--model_only``).

    Raises:
        DownloadError: unknown variant, no network, a required file missing on the hub, a size/hash mismatch, too
            little disk space, or an unsafe or corrupt archive.
    """
    if variant not in VARIANTS:
        raise DownloadError(f"unknown weights {variant!r}; available: {sorted(VARIANTS)}")
    spec = VARIANTS[variant]
    hub = hub or HuggingFaceHub()
    target = Path(directory) if directory is not None else default_weights_dir(variant)
    target.mkdir(parents=True, exist_ok=True)
    listings: dict[str, dict[str, RemoteFile]] = {}
    plan: list[tuple[HubFile, str, RemoteFile]] = []
    missing_optional: list[str] = []
    for f in spec.files(models_only=models_only):
        source = repo or f.repo
        if source not in listings:
            listings[source] = hub.files(source)
        remote = listings[source].get(f.path)
        if remote is None:
            if f.optional:
                missing_optional.append(f"{source}/{f.path}")
                continue
            raise DownloadError(f"{source}: file {f.path!r} not found on the hub")
        plan.append((f, source, remote))
    _check_space(target, plan)
    files, fetched = [], []
    for f, source, remote in tqdm(plan, desc=f"maisi download {variant}", disable=not progress):
        dest = target / f.path
        if _fetch(hub, source, remote, dest):
            fetched.append(dest)
        files.append(dest)
    for staging in {d.parent / STAGING for d in files}:
        shutil.rmtree(staging, ignore_errors=True)
    extracted = []
    if not models_only and spec.archive is not None:
        from maisi.networks.archive import extract_zip

        a = spec.archive
        extracted.append(
            extract_zip(target / a.file.path, target / a.folder, member_root=a.member_root).folder
        )
    return Downloaded(target, files, fetched, extracted, missing_optional)
