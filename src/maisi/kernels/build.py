"""Compile a C source of this package into a shared library on first use, and load it with ctypes.

The library is built for the machine it runs on (``-O3 -march=native``, or without ``-march=native`` where the
compiler refuses it) with the system C compiler (``$CC``, else ``cc``), into ``$MAISI_HOME/kernels`` (default
``~/.cache/maisi/kernels``) under a name that hashes the source, the compiler, the flags and the machine, so an
edited source or another CPU gets its own build. The file is written atomically (compiled to a temporary name,
then renamed), so concurrent processes never load a half-written library. Without a compiler the kernel is simply unavailable: :func:`load` returns None and
:func:`unavailable_reason` says why; nothing else in maisi depends on it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLAGS = ("-O3", "-march=native", "-std=c99", "-ffp-contract=fast", "-fno-trapping-math", "-fPIC", "-shared")

_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}
_reasons: dict[str, str] = {}


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$MAISI_HOME/kernels`` or ``~/.cache/maisi/kernels``."""
    home = os.environ.get("MAISI_HOME")
    return (Path(home) if home else Path.home() / ".cache" / "maisi") / "kernels"


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _library_path(name: str, source: bytes, cc: str) -> Path:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256()
    for part in (
        source,
        cc.encode(),
        version.encode(),
        " ".join(FLAGS).encode(),
        platform.machine().encode(),
    ):
        key.update(part)
        key.update(b"\0")
    cpu = Path("/proc/cpuinfo")
    if cpu.exists():  # -march=native: a build belongs to its CPU model and flags
        lines = [ln for ln in cpu.read_text().splitlines() if ln.startswith(("model name", "flags"))][:2]
        key.update("\n".join(lines).encode())
    return cache_dir() / f"{name}-{key.hexdigest()[:16]}.so"


def _compile(name: str) -> ctypes.CDLL:
    src = HERE / f"{name}.c"
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH")
    lib = _library_path(name, src.read_bytes(), cc)
    if not lib.exists():
        lib.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{lib.name}.", suffix=".tmp", dir=lib.parent)
        os.close(fd)
        try:
            run = _run(cc, FLAGS, tmp, src)
            if run.returncode != 0 and "march" in run.stderr:  # some compilers lack -march=native
                run = _run(cc, tuple(f for f in FLAGS if f != "-march=native"), tmp, src)
            if run.returncode != 0:
                raise RuntimeError(f"{cc} failed on {src.name}: {run.stderr.strip()[:500]}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, lib)
            for old in lib.parent.glob(f"{name}-*.so"):  # builds of earlier sources or other CPUs
                if old != lib:
                    old.unlink(missing_ok=True)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return ctypes.CDLL(str(lib))


def _run(cc: str, flags: tuple[str, ...], out: str, src: Path) -> subprocess.CompletedProcess:
    return subprocess.run([cc, *flags, "-o", out, str(src)], capture_output=True, text=True, timeout=300)


#: the C type of each letter of a signature: p pointer, i int, l long
_CTYPES = {"p": ctypes.c_void_p, "i": ctypes.c_int, "l": ctypes.c_long}


def load(name: str, signatures: dict[str, str] | None = None) -> ctypes.CDLL | None:
    """The compiled library of ``maisi/kernels/<name>.c`` (built on first use), or None when it cannot be built.

    Args:
        signatures: function name -> argument types, one letter each (``p`` pointer, ``i`` int, ``l`` long); the
            functions return nothing. They are declared to ctypes so that calls convert and check arguments.
    """
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = _compile(name)
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                _loaded[name] = None
                _reasons[name] = str(err)
        lib = _loaded[name]
        if lib is not None:
            for fn, args in (signatures or {}).items():
                f = getattr(lib, fn)
                if f.restype is not None:  # not declared yet (ctypes' default result type is int)
                    f.argtypes = [_CTYPES[a] for a in args]
                    f.restype = None
        return lib


def unavailable_reason(name: str) -> str | None:
    """Why :func:`load` returned None for ``name`` (None when it loaded or was not tried)."""
    return _reasons.get(name)


__all__ = ["cache_dir", "load", "unavailable_reason"]
