"""Helpers of the fault suite: the CLI run in-process or as a real process, and the checks every fault case makes
of the disk afterwards (no temporary left, no sample without its sidecar, inputs byte-identical)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from maisi import cli

#: a micro request every generation case starts from (with ``--weights`` and ``--output-dir`` added)
GENERATE = [
    "generate",
    "--preset",
    "tiny",
    "--output-size",
    "64",
    "64",
    "32",
    "--spacing",
    "3",
    "3",
    "3",
    "--body-region",
    "abdomen",
    "--steps",
    "1",
    "--no-qc",
    "--no-preview",
]
PHANTOM = ["--mask-source", "phantom"]


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float


def run_cli(argv: list[str], capsys) -> Result:
    """``maisi.cli.main(argv)`` in this process, with its exit code, output and wall time."""
    capsys.readouterr()
    start = time.perf_counter()
    rc = cli.main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    return Result(rc, captured.out, captured.err, seconds)


def error_message(result: Result, command: str) -> str:
    """The message of a run that failed as the CLI promises: exit 2 and exactly one line ``maisi CMD: error: ...``
    on stderr (no traceback)."""
    lines = result.err.strip().splitlines()
    assert result.rc == 2, (result.rc, result.err)
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    prefix = f"maisi {command}: error: "
    assert lines[0].startswith(prefix), lines[0]
    return lines[0][len(prefix) :]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> its SHA-256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def temporaries(folder: Path) -> list[str]:
    """Hidden temporary files of interrupted writes (``maisi.io.atomic_path`` names them ``.NAME.XXXX.tmp...``)."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def complete_samples(out: Path) -> set[int]:
    """The indices of the complete samples in a generation folder, after checking that nothing partial is there:
    no temporary, no sample file without its sidecar, and every file a sidecar lists present."""
    assert temporaries(out) == [], temporaries(out)
    sidecars = {int(p.name[7:12]): p for p in out.glob("sample_?????.json")}
    for p in out.glob("sample_*"):
        index = int(p.name[7:12])
        assert index in sidecars, f"{p.name}: a sample file without its sidecar"
    for sidecar in sidecars.values():
        for name in json.loads(sidecar.read_text())["files"].values():
            assert (out / name).is_file(), f"{sidecar.name} lists {name}, which is missing"
    return set(sidecars)


def nothing_written(out: Path) -> None:
    """A run that failed before its work created nothing: not even its output folder."""
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def no_samples(out: Path) -> None:
    """A run that failed during its work wrote no sample: at most its ``config.json`` and (hidden, empty) sample locks,
    which the next run takes over."""
    if out.exists():
        left = sorted(p.name for p in out.iterdir())
        assert all(n == "config.json" or (n.startswith(".sample_") and n.endswith(".lock")) for n in left), (
            left
        )


def wait_for(condition, *, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 20 ms; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)
