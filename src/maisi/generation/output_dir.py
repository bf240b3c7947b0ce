"""The output folder of a run, checked before any network is loaded, and shared safely by concurrent runs.

Before the work: the folder is (or can be made) a folder, a probe file can be written and removed there, and the
disk holds the estimated size of the samples this process will write. During it: each sample is claimed with an
exclusive lock on ``.sample_NNNNN.lock`` (``fcntl.flock``, released by the kernel when a process dies, even by
``kill -9``), so two runs into one folder make disjoint samples and together a complete set; the process holding a
sample's lock removes the temporaries of maisi's own naming that an interrupted earlier run left for it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from maisi.data.intensity import is_mr
from maisi.errors import CheckpointError, OutputError

try:  # POSIX; elsewhere samples are not locked (one run per folder)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: bytes per voxel of a written sample: int16 image and uint8 label, gzip-compressed (``.nii.gz``) or not
BYTES_PER_VOXEL = {".nii.gz": 1.2, ".nii": 3.0}
#: the preview PNG and the sidecar, per sample
SMALL_FILES_BYTES = 2 * 1024**2


def estimated_bytes(voxels: int, samples: int, *, ext: str = ".nii.gz") -> int:
    """What ``samples`` samples of ``voxels`` voxels take on disk (gzip: the usual ratio for CT and labels)."""
    return int(samples * (voxels * BYTES_PER_VOXEL.get(ext, 3.0) + SMALL_FILES_BYTES))


def prepare_output_dir(folder: str | os.PathLike, *, needed_bytes: int = 0) -> Path:
    """Prove, without leaving anything behind, that ``folder`` can be written with room for ``needed_bytes``: a
    probe file is written and removed in it, or (when it does not exist yet) in its nearest existing parent.

    Raises:
        OutputError: one line naming the folder: a file in its place (or in a parent's), not writable (read-only,
            a virtual file system), or too little free space.
    """
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise OutputError(f"{d}: exists and is not a folder; choose another --output-dir")
    base = d
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise OutputError(f"{d}: cannot be created ({base} is a file); choose another --output-dir")
    try:
        fd, probe = tempfile.mkstemp(prefix=".maisi-probe.", dir=base)
        try:
            os.write(fd, b"maisi")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{d}: cannot write there ({e.strerror or e})") from None
    free = shutil.disk_usage(base).free
    if needed_bytes > free:
        raise OutputError(
            f"{d}: {_gib(free)} free, the samples need about {_gib(needed_bytes)}; free space or choose another "
            "--output-dir"
        )
    return d


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{math.ceil(n / 2**20)} MiB"


class SampleLock:
    """The claim of one process on sample ``index`` of ``folder`` (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, index: int) -> None:
        self.folder = Path(folder)
        self.index = int(index)
        self.path = self.folder / f".sample_{self.index:05d}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Claim the sample; False when another live process holds it."""
        if fcntl is None:
            return True
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def held_elsewhere(self) -> bool:
        """Whether another process holds the claim now (the lock file is not created to find out)."""
        if fcntl is None:
            return False
        try:
            fd = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing the only descriptor of a lock taken here releases it
        return False

    def release(self, *, done: bool) -> None:
        """Give the claim up (``done``: the sample is complete and the lock file is removed)."""
        if self.fd is None:
            return
        if done:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete the temporaries of this sample that an interrupted run left (``.sample_NNNNN*.tmp*``, the
        naming of :func:`maisi.io.atomic_path`); only the lock holder calls this. Returns what was removed."""
        stem = f".sample_{self.index:05d}"
        stale = [p for p in self.folder.glob(f"{stem}[._]*") if ".tmp" in p.name and p.is_file()]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale


def check_outputs(plan: Any, todo: list[int]) -> list[int]:
    """Check the weights hold the plan's components, then the output folder (writable, room for the samples, no
    input among the outputs) and the samples there: complete ones of this request are skipped, those of another
    request or half-written by a dead run refused (one line each); one another live run is writing is left to it."""
    import math

    from maisi.io import refuse_overwriting_inputs

    missing = [c for c in plan.components if c not in plan.weights.components]
    if missing:  # what loading them would say, said before the sample files are looked at
        raise CheckpointError(f"{plan.weights.root}: missing components {missing}")
    gen, identity = plan.request, plan.weights_identity()
    paths = {i: sample_files(plan, i) for i in todo}
    refuse_overwriting_inputs(
        [p for ps in paths.values() for p in ps.values()] + [Path(gen.output_dir) / "config.json"],
        [gen.mask, gen.initial_noise, gen.mask_database],
    )
    left = [i for i in todo if _state(plan, i, paths[i], identity) == "absent"]
    prepare_output_dir(gen.output_dir, needed_bytes=estimated_bytes(math.prod(gen.output_size), len(left)))
    return left


def _state(plan: Any, index: int, paths: dict[str, Path], identity: dict[str, Any]) -> str:
    """:func:`~maisi.generation.outputs.existing_state` of a sample, except that one another live run holds the
    lock of is left to the claims (it is being written: its files may be there before its sidecar)."""
    from maisi.generation.outputs import existing_state
    from maisi.io import OutputExistsError

    try:
        return existing_state(paths, plan.digest(index, identity))
    except OutputExistsError:
        if SampleLock(plan.request.output_dir, index).held_elsewhere():
            return "absent"  # claim_samples skips it, or finds it complete once the other run is done
        raise


def claim_samples(
    plan: Any, batch: list[int], claims: dict[int, SampleLock], identity: dict[str, Any]
) -> list[int]:
    """The samples of ``batch`` this process claims: not locked by another run and not completed meanwhile
    (stale temporaries of an interrupted run are removed for each)."""
    from maisi.generation.outputs import existing_state

    mine = []
    for i in batch:
        lock = SampleLock(plan.request.output_dir, i)
        if not lock.acquire():
            continue  # another run is making it
        if existing_state(sample_files(plan, i), plan.digest(i, identity)) == "complete":
            lock.release(done=True)
            continue
        lock.remove_stale_temporaries()
        claims[i] = lock
        mine.append(i)
    return mine


def sample_files(plan: Any, index: int) -> dict[str, Path]:
    """The files of sample ``index`` of a plan (no label file for image-only generation)."""
    from maisi.generation.outputs import sample_paths

    gen = plan.request
    return sample_paths(
        gen.output_dir,
        index,
        image_ext=gen.image_ext,
        label_ext=gen.label_ext if plan.mask_source != "none" else None,
        preview=gen.preview,
    )


def write_claimed(plan: Any, claims: dict[int, SampleLock], s: Any) -> None:
    """Write one sample (nothing of it is left when a write fails) and give up its claim once complete."""
    from maisi.generation.outputs import write_sample

    window = (0.0, float(np.percentile(s.image, 99.5)) or 1.0) if is_mr(plan.modality) else None
    try:
        s.paths = write_sample(
            sample_files(plan, s.index),
            image=s.image,
            label=s.label,
            affine=s.affine,
            spacing=s.spacing,
            sidecar=s.metadata,
            preview_label=s.condition,
            window=window,
        )
    except OSError as e:
        where = e.filename or plan.request.output_dir
        raise OutputError(
            f"{where}: cannot write sample {s.index} ({e.strerror or e}); the run stopped"
        ) from None
    lock = claims.pop(s.index, None)
    if lock is not None:
        lock.release(done=True)
