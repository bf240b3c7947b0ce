"""The CLI surface: help, info, dry-run, errors, and one real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from maisi.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_info_prints_versions_devices_weights(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for section in ("versions:", "devices:", "cpu features:", "native kernels", "weights:"):
        assert section in out
    assert "torch" in out and "monai" in out and "device=cpu" in out
    assert "winograd3d" in out and "group_norm" in out
    import torch

    if not torch.cuda.is_available():  # what generate's auto device and precision resolve to here
        assert "generate defaults" in out and "device=cpu, dtype=float32, max_memory=" in out


def test_every_command_has_a_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def test_subprocess_entry_point():
    r = subprocess.run([sys.executable, "-m", "maisi", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "versions:" in r.stdout


def test_subprocess_error_exit_code_and_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "maisi", "info", "--weights", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "weights folder not found" in r.stderr


def test_config_dry_run_helpers(capsys):
    import argparse

    from maisi.cli.common import add_config_args, print_config, resolve_config

    p = argparse.ArgumentParser()
    add_config_args(p)
    args = p.parse_args(["--preset", "tiny", "generate.steps=3"])
    cfg = resolve_config(args, extra={"generate": {"seed": 5}})
    print_config(cfg)
    out = json.loads(capsys.readouterr().out)
    assert out["preset"] == "tiny" and out["generate"]["steps"] == 3 and out["generate"]["seed"] == 5
