"""The shape of the code, checked: the import floors and the absence of import cycles (import-linter's contracts in
pyproject.toml), the size limits of the generation package, and facts that have one home in ``src/``."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "maisi"


def _sources(folder: Path = SRC) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_import_layers_and_no_cycles():
    """``lint-imports`` keeps both contracts: cli -> training/evaluation/export -> generation ->
    data/latents/networks -> performance -> config -> diffusion/kernels -> shared primitives, and no cycle among
    the modules of any package."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run(
        [exe],
        capture_output=True,
        text=True,
        cwd=ROOT,  # reads the contracts of pyproject.toml there
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


def test_generation_files_and_functions_stay_small():
    """pipeline.py under 400 lines; no function of the generation package over 80 lines."""
    assert len((SRC / "generation" / "pipeline.py").read_text().splitlines()) < 400
    long = []
    for path in _sources(SRC / "generation"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 80:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({length} lines)")
    assert long == []


@pytest.mark.parametrize(
    "pattern,home",
    [
        # the VAE's downsampling factor: VAEConfig.downsample
        (r"2\s*\*\*\s*\(\s*len\(", "config/schema.py"),
        # the latent scale factor read from a checkpoint (the official files), translated into the VAE config
        (r"extras?\[\s*[\"']scale_factor[\"']\s*\]", "networks/official.py"),
    ],
)
def test_facts_have_one_home(pattern, home):
    found = [
        f"{p.relative_to(SRC)}:{i}"
        for p in _sources()
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]
    assert len(found) == 1 and found[0].startswith(home), found
