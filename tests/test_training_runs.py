"""Whole runs: resume equivalence, NaN stop, the CLI, and DDP (two gloo processes under torchrun) on CPU.

All runs train the tiny VAE (generator and discriminator optimisers both active, EMA on) on 16^3 patches of five
32^3 phantoms, a few steps each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from maisi.cli import main
from maisi.config import load_config
from maisi.errors import ConfigError
from maisi.training import TrainingDiverged, train
from maisi.training.checkpointing import STATE_NAME, latest_checkpoint, list_checkpoints
from maisi.training.tasks.vae import VAETask

VAE_OPTIONS = [
    "train.patch_size=[16,16,16]",
    "train.adv_warmup_steps=1",
    "train.val_every=0",
    "train.log_every=1",
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for these tiny networks: with two, runs slowed down several-fold whenever other
    processes competed for the 2 cores (measured: ~60 s vs ~500 s of CPU for the task tests)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    from maisi.data.phantom import write_phantoms

    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(num=5, output_dir=out, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0), seed=0)
    return out


def _cfg(phantoms, run_dir, *overrides):
    return load_config(
        preset="tiny",
        overrides=[
            "train.task=vae",
            f"train.data={phantoms}",
            f"train.run_dir={run_dir}",
            *VAE_OPTIONS,
            *overrides,
        ],
    )


def _weights(ckpt_dir, component):
    from safetensors.torch import load_file

    return load_file(str(ckpt_dir / component / "model.safetensors"))


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_resume_equals_uninterrupted_run(phantoms, tmp_path, monkeypatch):
    n = 3
    opts = [f"train.max_steps={2 * n}", f"train.ckpt_every={n}", "train.batch_size=1", "train.grad_accum=2"]
    straight = train(_cfg(phantoms, tmp_path / "straight", *opts), device="cpu", progress=False)

    real = VAETask.make_batch
    calls = {"n": 0}

    def interrupted(self, cases, generators):
        calls["n"] += 1
        if calls["n"] > 2 * n:  # the first micro-batch of step n + 1: the process is killed
            raise KeyboardInterrupt
        return real(self, cases, generators)

    monkeypatch.setattr(VAETask, "make_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(phantoms, tmp_path / "resumed", *opts), device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed")] == [n]
    monkeypatch.setattr(VAETask, "make_batch", real)
    resumed = train(_cfg(phantoms, tmp_path / "resumed", *opts), device="cpu", progress=False)

    assert resumed.resumed_from == n and resumed.step == straight.step == 2 * n
    a, b = latest_checkpoint(tmp_path / "straight"), latest_checkpoint(tmp_path / "resumed")
    for component in ("vae", "discriminator"):
        assert _max_diff(_weights(a.path, component), _weights(b.path, component)) <= 1e-6
    assert _max_diff(a.state["ema"]["weights"], b.state["ema"]["weights"]) <= 1e-6
    exp_avg = [s["exp_avg"] for s in a.state["optimizers"]["generator"]["state"].values()]
    exp_avg_b = [s["exp_avg"] for s in b.state["optimizers"]["generator"]["state"].values()]
    assert all(torch.allclose(x, y, atol=1e-6, rtol=0) for x, y in zip(exp_avg, exp_avg_b))
    assert resumed.val_loss == pytest.approx(straight.val_loss, abs=1e-6)

    # the same folder with a different recipe is refused
    with pytest.raises(ConfigError, match="train.lr"):
        train(_cfg(phantoms, tmp_path / "resumed", *opts, "train.lr=0.01"), device="cpu", progress=False)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(phantoms, tmp_path, monkeypatch):
    real = VAETask.loss

    def poisoned(self, group, nets, batch, cache, step):
        loss, parts = real(self, group, nets, batch, cache, step)
        return (loss * float("nan") if step == 3 else loss), parts

    monkeypatch.setattr(VAETask, "loss", poisoned)
    run = tmp_path / "nan"
    cfg = _cfg(phantoms, run, "train.max_steps=6", "train.ckpt_every=2", "train.batch_size=1")
    with pytest.raises(
        TrainingDiverged, match=r"non-finite value at step 4 \(generator loss = nan\).*step_000002"
    ):
        train(cfg, device="cpu", progress=False)
    assert [s for s, _ in list_checkpoints(run)] == [2]
    ckpt = latest_checkpoint(run)
    assert ckpt.step == 2 and all(torch.isfinite(v).all() for v in ckpt.weights["vae"].values())
    assert not (run / "final.txt").exists() and not (run / "model").exists()


def test_cli_train_in_process(phantoms, tmp_path, capsys):
    run = tmp_path / "cli"
    argv = [
        "train",
        "mask-vae",
        "--preset",
        "tiny",
        "--data",
        str(phantoms),
        "--run-dir",
        str(run),
        "--max-steps",
        "2",
        "--seed",
        "1",
        "--no-progress",
        "train.patch_size=[16,16,16]",
    ]
    assert main([*argv, "--dry-run"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["train"]["task"] == "mask-vae" and resolved["train"]["max_steps"] == 2
    assert resolved["train"]["seed"] == 1 and not run.exists()
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("final: step=2 val_loss=") and float(line.rsplit("=", 1)[1]) > 0
    assert (run / "final.txt").read_text().strip() == line
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoints",
        "config.json",
        "final.txt",
        "model",
        "tensorboard",
    ]
    assert (run / "checkpoints" / "step_000002" / STATE_NAME).is_file()
    # bad data: one line, exit code 2
    assert (
        main(["train", "diffusion", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "x")])
        == 2
    )
    assert "training data not found" in capsys.readouterr().err


def test_cli_train_subprocess_dry_run(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "maisi",
            "train",
            "controlnet",
            "--preset",
            "tiny",
            "--max-steps",
            "7",
            "--dry-run",
            "train.weighted_loss=50",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert (
        cfg["train"]["task"] == "controlnet"
        and cfg["train"]["max_steps"] == 7
        and cfg["train"]["weighted_loss"] == 50
    )


def test_ddp_two_gloo_processes_match_one_process(phantoms, tmp_path):
    """torchrun with 2 CPU processes x batch 1 == 1 process x batch 2, after K steps of both optimisers."""
    k = 3
    opts = [f"train.max_steps={k}", f"train.ckpt_every={k}"]
    single = train(
        _cfg(phantoms, tmp_path / "single", *opts, "train.batch_size=2"), device="cpu", progress=False
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "maisi",
        "train",
        "vae",
        "--preset",
        "tiny",
        "--data",
        str(phantoms),
        "--run-dir",
        str(tmp_path / "ddp"),
        "--device",
        "cpu",
        "--no-progress",
        *VAE_OPTIONS,
        *opts,
        "train.batch_size=1",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert out.stdout.count("final: step=3 val_loss=") == 1  # only rank 0 prints and writes
    assert len(list((tmp_path / "ddp" / "tensorboard").iterdir())) == 1
    a, b = latest_checkpoint(tmp_path / "single"), latest_checkpoint(tmp_path / "ddp")
    assert a.step == b.step == k and b.state["world_size"] == 2
    # The gradients agree to float rounding (DDP averages two batch-1 means). Adam turns a rounding difference of a
    # near-zero gradient into a visible step (its update is ~lr * sign), so the bound on the largest difference is
    # a fraction of the K * lr = 3e-3 an update can move a weight; the typical weight agrees to ~1e-8.
    for component in ("vae", "discriminator"):
        wa, wb = _weights(a.path, component), _weights(b.path, component)
        assert _max_diff(wa, wb) <= 5e-4, component
        mean = torch.cat([(wa[n] - wb[n]).abs().flatten() for n in wa]).mean()
        assert float(mean) <= 1e-7, (component, float(mean))
    ddp_val = float((tmp_path / "ddp" / "final.txt").read_text().rsplit("=", 1)[1])
    assert ddp_val == pytest.approx(single.val_loss, rel=1e-3)
