"""The one generic training loop: ``train(cfg) -> TrainResult`` for every task.

A run folder (``train.run_dir``) holds

- ``config.json``: the resolved config;
- ``tensorboard/``: losses, learning rate, gradient norms, validation metrics and three orthogonal slices of
  inputs, reconstructions and samples;
- ``checkpoints/step_N/``: see :mod:`maisi.training.checkpointing` (every ``train.ckpt_every`` steps and at the
  end, atomic, the last ``train.keep_last`` kept);
- ``model/``: the final model set (:func:`maisi.networks.model_set.save_model_set` layout; EMA weights of the
  trained network) that generation loads;
- ``final.txt``: the line ``final: step=N val_loss=X`` that the run also prints.

Re-running the same command resumes from the newest checkpoint: weights, optimiser and grad-scaler states, EMA,
step, RNG states and data position are restored, so the resumed run equals an uninterrupted one. A non-finite loss
(or gradient, without a grad scaler) stops the run before the optimiser step, leaving the checkpoints intact.

One optimiser step: for each optimiser group of the task (the VAE has two: generator, then discriminator once
its warm-up is over), ``train.grad_accum`` micro-batches are forwarded under autocast and back-propagated
(DDP synchronises on the last one), gradients are unscaled, clipped to ``train.grad_clip`` and applied with the
learning rate ``lr * lr_factor(step)`` (linear warm-up, then ``train.lr_schedule``); then the EMA is updated.
Validation uses the EMA weights (``train.ema_decay > 0``), which are also the ones shipped in ``model/``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from maisi.config import Config, load_config, save_config, to_dict
from maisi.errors import ConfigError, MaisiError
from maisi.networks.checkpoint import Component, load_state_strict
from maisi.networks.model_set import ModelSet, save_model_set
from maisi.training import distributed
from maisi.training.checkpointing import (
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from maisi.training.datasets import TRAIN_STREAM, BatchPlan, rank_slots, sample_generator
from maisi.training.ema import EMA
from maisi.training.logging import RunLogger
from maisi.training.optim import (
    autocast,
    autocast_dtype,
    lr_factor,
    make_optimizer,
    set_grad_checkpointing,
    set_lr,
)
from maisi.training.tasks import Task, make_task

CONFIG_NAME = "config.json"
FINAL_NAME = "final.txt"
MODEL_DIR = "model"
#: train.* keys that may change between an interrupted run and its resumption
#: train keys a resumed run may change: they do not change what is learned (activation checkpointing recomputes
#: the same values)
RESUMABLE_KEYS = (
    "max_steps",
    "ckpt_every",
    "keep_last",
    "val_every",
    "log_every",
    "num_workers",
    "run_dir",
    "grad_checkpointing",
)


class TrainingDiverged(MaisiError):
    """The loss (or a gradient) became NaN or infinite; the run stopped without saving."""


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    Attributes:
        step: optimiser steps done in total.
        val_loss: final validation loss (EMA weights when EMA is on).
        metrics: every final validation metric.
        run_dir: the run folder.
        model_dir: the final model set (``run_dir/model``).
        steps_per_second: optimiser steps per second of this invocation (training time only).
        resumed_from: the checkpoint step this invocation started from, if any.
        initial_val_loss: validation loss of the initial weights (fresh runs only).
        history: the logged training means, one dict per logging step.
    """

    step: int
    val_loss: float
    metrics: dict[str, float]
    run_dir: Path
    model_dir: Path
    steps_per_second: float
    resumed_from: int | None = None
    initial_val_loss: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def train(cfg: Config, *, device: str | torch.device | None = None, progress: bool = True) -> TrainResult:
    """Train ``cfg.train.task`` on ``cfg.train.data`` into ``cfg.train.run_dir`` (resuming if it holds a run).

    Under ``torchrun`` every process calls this; only rank 0 writes files.

    Args:
        cfg: the resolved config.
        device: ``"cpu"``, ``"cuda"`` or a device; default CUDA when available.
        progress: show a tqdm bar (rank 0).

    Raises:
        ConfigError: invalid training options, or a run folder holding a different run.
        DataError: unusable training data.
        TrainingDiverged: a non-finite loss.
    """
    check_train_config(cfg)
    info = distributed.setup(device)
    try:
        return Trainer(cfg, info, progress=progress).run()
    finally:
        distributed.teardown(info)


def check_train_config(cfg: Config) -> None:
    """Raise a ConfigError naming the first invalid ``train.*`` value."""
    tc = cfg.train
    checks = [
        ("max_steps", tc.max_steps >= 1, "must be >= 1"),
        ("seed", tc.seed >= 0, "must be >= 0"),
        ("batch_size", tc.batch_size >= 1, "must be >= 1"),
        ("grad_accum", tc.grad_accum >= 1, "must be >= 1"),
        ("keep_last", tc.keep_last >= 1, "must be >= 1"),
        ("lr", tc.lr > 0 and math.isfinite(tc.lr), "must be a positive number"),
        ("warmup_steps", tc.warmup_steps >= 0, "must be >= 0"),
        ("ema_decay", 0 <= tc.ema_decay < 1, "must be in [0, 1)"),
        ("modality_dropout", 0 <= tc.modality_dropout <= 1, "must be in [0, 1]"),
        ("num_workers", tc.num_workers >= 0, "must be >= 0"),
        ("patch_size", all(p >= 1 for p in tc.patch_size), "must be positive"),
    ]
    for key, ok, problem in checks:
        if not ok:
            raise ConfigError(f"train.{key}: {getattr(tc, key)!r} {problem}")
    if not tc.run_dir:
        raise ConfigError("train.run_dir is empty; pass --run-dir")


class Trainer:
    """State of one training invocation (see :func:`train`)."""

    def __init__(self, cfg: Config, info: distributed.DistInfo, *, progress: bool) -> None:
        self.cfg, self.tc, self.info = cfg, cfg.train, info
        self.device = info.device
        self.run_dir = Path(self.tc.run_dir)
        self.progress = progress
        self.amp = autocast_dtype(self.tc.amp, self.device)
        self._check_run_dir()
        self.task: Task = make_task(cfg, device=self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.tc.seed)  # initial weights depend only on the seed
            self.task.setup()
        models = self.task.models
        self.groups = self.task.groups()
        self.trained = list(dict.fromkeys(g.module for g in self.groups))
        if self.tc.grad_checkpointing is not None:
            for name in self.trained:
                set_grad_checkpointing(models[name], self.tc.grad_checkpointing)
        self.optimizers = {
            g.name: make_optimizer(models[g.module].parameters(), self.tc) for g in self.groups
        }
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        self.ema = EMA(models[self.task.primary], decay=self.tc.ema_decay) if self.tc.ema_decay > 0 else None
        self.plan = BatchPlan(
            [self.task.bucket_key(c) for c in self.task.train_cases],
            global_batch=self.tc.batch_size * info.world_size,
            seed=self.tc.seed,
        )
        self.step = 0
        self.resumed_from: int | None = None
        self._resume()
        self.nets = {
            k: distributed.wrap(self.task.training_module(k), info) if k in self.trained else m
            for k, m in models.items()
        }
        self.logger = RunLogger(self.run_dir, enabled=info.is_main)

    # ---------------------------------------------------------------- resume

    def _check_run_dir(self) -> None:
        """A run folder with checkpoints must hold the same run (only the RESUMABLE_KEYS may differ)."""
        saved = self.run_dir / CONFIG_NAME
        if not saved.is_file() or not list_checkpoints(self.run_dir):
            return
        old = to_dict(load_config(files=[saved]))
        new = to_dict(self.cfg)
        for section in ("generate", "evaluate", "preset"):
            old.pop(section, None)
            new.pop(section, None)
        for key in RESUMABLE_KEYS:
            old["train"].pop(key, None)
            new["train"].pop(key, None)
        diff = _first_difference(old, new)
        if diff:
            raise ConfigError(
                f"{self.run_dir}: holds a run with a different config ({diff}); resume with the same options "
                "or choose another --run-dir"
            )

    def _resume(self) -> None:
        latest = list_checkpoints(self.run_dir)
        step = distributed.broadcast_object(latest[-1][0] if latest else None, self.info)
        if step is None:
            return
        ckpt = load_checkpoint(checkpoint_dir(self.run_dir, step))
        state = ckpt.state
        for name in self.trained:
            if name not in ckpt.weights:
                raise ConfigError(f"{ckpt.path}: has no {name!r} weights; it is not a {self.task.name!r} run")
            load_state_strict(self.task.models[name], ckpt.weights[name], source=str(ckpt.path / name))
        for g in self.groups:
            self.optimizers[g.name].load_state_dict(state["optimizers"][g.name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"], self.device)
        self.task.load_state_dict(state.get("task", {}))
        if int(state.get("world_size", self.info.world_size)) != self.info.world_size:
            import warnings

            warnings.warn(
                f"resuming a run trained on {state['world_size']} processes on {self.info.world_size}: the data "
                "order changes from here on",
                stacklevel=2,
            )
        self.step = self.resumed_from = ckpt.step

    # ---------------------------------------------------------------- main loop

    def run(self) -> TrainResult:
        tc, info = self.tc, self.info
        if info.is_main:
            save_config(self.cfg, self.run_dir / CONFIG_NAME, overwrite=True)
        distributed.barrier(info)
        self._train_mode()
        bar = tqdm(
            total=tc.max_steps,
            initial=self.step,
            desc=f"train {self.task.name}",
            disable=not (self.progress and info.is_main),
            dynamic_ncols=True,
        )
        initial = None
        if self.step == 0 and tc.val_every > 0:  # the baseline the run improves on
            initial = self._validate(None, previews=False)["val_loss"]
        batches = self._batches()
        window: dict[str, float] = defaultdict(float)
        counts: dict[str, int] = defaultdict(int)
        train_time, steps_done = 0.0, 0
        last_batch, val, history = None, None, []
        while self.step < tc.max_steps:
            start = time.perf_counter()
            logs, last_batch = self._train_step(batches)
            train_time += time.perf_counter() - start
            self.step += 1
            steps_done += 1
            for k, v in logs.items():
                window[k] += v
                counts[k] += 1
            bar.update(1)
            if _due(self.step, tc.log_every) or self.step == tc.max_steps:
                means = self._reduce_means({k: v / counts[k] for k, v in window.items()})
                means["steps_per_second"] = steps_done / max(train_time, 1e-9)
                self.logger.scalars(self.step, means, prefix="train/")
                bar.set_postfix(loss=f"{means.get('loss', float('nan')):.4g}", lr=f"{means['lr']:.2e}")
                history.append({"step": self.step, **means})
                window.clear()
                counts.clear()
            if _due(self.step, tc.val_every) and self.step < tc.max_steps:
                val = (self.step, self._validate(last_batch, previews=_due(self.step, tc.ckpt_every)))
            if _due(self.step, tc.ckpt_every) or self.step == tc.max_steps:
                self._save()
        bar.close()
        if val is None or val[0] != self.step:
            val = (self.step, self._validate(last_batch, previews=True))
        model_dir = self._finish(val[1])
        self.logger.close()
        return TrainResult(
            step=self.step,
            val_loss=val[1]["val_loss"],
            metrics=val[1],
            run_dir=self.run_dir,
            model_dir=model_dir,
            steps_per_second=steps_done / train_time if train_time > 0 else 0.0,
            resumed_from=self.resumed_from,
            initial_val_loss=initial,
            history=history,
        )

    def _batches(self):
        """Micro-batches from the current data position to the end of the run, on the device."""
        from torch.utils.data import DataLoader

        accum = self.tc.grad_accum
        source = _BatchSource(self.task, self.plan, self.tc.seed, self.info, self.tc.batch_size)
        loader = DataLoader(
            source,
            sampler=range(self.step * accum, self.tc.max_steps * accum),
            batch_size=None,
            num_workers=self.tc.num_workers,
            generator=torch.Generator(),  # keeps the loader's seed draw off the global RNG (resume equivalence)
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _train_step(self, batches) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        tc, task = self.tc, self.task
        accum = tc.grad_accum
        micro = [next(batches) for _ in range(accum)]
        caches: list[dict] = [{} for _ in micro]
        lr = tc.lr * lr_factor(self.step, warmup=tc.warmup_steps, total=tc.max_steps, schedule=tc.lr_schedule)
        logs: dict[str, float] = defaultdict(float)
        logs["lr"] = lr
        for gi, group in enumerate(self.groups):
            if self.step < group.start_step:
                continue
            opt = self.optimizers[group.name]
            set_lr(opt, lr)
            opt.zero_grad(set_to_none=True)
            net = self.nets[group.module]
            bad = None
            for i, (batch, cache) in enumerate(zip(micro, caches)):
                last = i == accum - 1
                sync = (
                    net.no_sync()
                    if isinstance(net, nn.parallel.DistributedDataParallel) and not last
                    else (contextlib.nullcontext())
                )
                with sync:
                    with autocast(self.device, self.amp):
                        loss, parts = task.loss(group.name, self.nets, batch, cache, self.step)
                    value = float(loss.detach())
                    if not math.isfinite(value) and bad is None:
                        bad = f"{group.name} loss = {value}"
                    self.scaler.scale(loss / accum).backward()
                logs["loss" if gi == 0 else f"{group.name}/loss"] += value / accum
                for k, v in parts.items():
                    logs[f"{group.name}/{k}"] += float(v) / accum
            self.scaler.unscale_(opt)
            params = [p for p in self.task.models[group.module].parameters() if p.requires_grad]
            norm = float(
                torch.nn.utils.clip_grad_norm_(params, tc.grad_clip if tc.grad_clip > 0 else math.inf)
            )
            if bad is None and not self.scaler.is_enabled() and not math.isfinite(norm):
                bad = f"{group.name} gradient norm = {norm}"
            self._stop_if_diverged(bad)
            logs[f"{group.name}/grad_norm"] = norm
            self.scaler.step(opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.task.models[self.task.primary])
        return dict(logs), micro[-1]

    def _stop_if_diverged(self, reason: str | None) -> None:
        flag = torch.tensor([0.0 if reason is None else 1.0], device=self.device)
        if float(distributed.all_reduce_sum(flag, self.info)[0]) == 0:
            return
        found = list_checkpoints(self.run_dir)
        last = f"{found[-1][1]}" if found else "none (no checkpoint was written yet)"
        what = reason or "non-finite loss on another process"
        raise TrainingDiverged(
            f"non-finite value at step {self.step + 1} ({what}); stopped before the update. Last good checkpoint: "
            f"{last}. Lower train.lr or set train.grad_clip, then re-run the same command to resume"
        )

    def _reduce_means(self, values: dict[str, float]) -> dict[str, float]:
        if not self.info.distributed:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        t = distributed.all_reduce_sum(t, self.info) / self.info.world_size
        return dict(zip(keys, t.tolist()))

    # ---------------------------------------------------------------- evaluation, saving

    def _train_mode(self) -> None:
        for name, model in self.task.models.items():
            model.train(name in self.trained)

    def _eval_nets(self) -> dict[str, nn.Module]:
        nets = dict(self.task.models)
        for name in self.trained:
            nets[name].eval()
        if self.ema is not None:
            nets[self.task.primary] = self.ema.model
        return nets

    def _validate(self, batch: dict[str, torch.Tensor] | None, *, previews: bool) -> dict[str, float]:
        info, task = self.info, self.task
        nets = self._eval_nets()
        sums: dict[str, float] = defaultdict(float)
        count = 0
        with torch.no_grad(), autocast(self.device, self.amp):
            for index, case in enumerate(task.val_cases):
                if index % info.world_size != info.rank:
                    continue
                for k, v in task.validate_case(nets, case, index).items():
                    sums[k] += v
                count += 1
        keys = distributed.broadcast_object(sorted(sums), info)
        totals = torch.tensor(
            [sums.get(k, 0.0) for k in keys] + [count], dtype=torch.float64, device=self.device
        )
        totals = distributed.all_reduce_sum(totals, info)
        metrics = {k: float(totals[i] / totals[-1]) for i, k in enumerate(keys)}
        self.logger.scalars(self.step, metrics, prefix="val/")
        if previews and batch is not None and info.is_main:
            with torch.no_grad():
                self.logger.volumes(self.step, task.previews(nets, batch))
        self.logger.flush()
        self._train_mode()
        return metrics

    def _save(self) -> None:
        if self.info.is_main:
            state: dict[str, Any] = {
                "step": self.step,
                "batches": self.step * self.tc.grad_accum,
                "world_size": self.info.world_size,
                "task_name": self.task.name,
                "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_state(self.device),
                "task": self.task.state_dict(),
            }
            models = {
                name: (self.task.models[name], getattr(self.task.model_cfg, name)) for name in self.trained
            }
            save_checkpoint(self.run_dir, self.step, models=models, state=state, keep_last=self.tc.keep_last)
        distributed.barrier(self.info)

    def _finish(self, metrics: dict[str, float]) -> Path:
        model_dir = self.run_dir / MODEL_DIR
        if self.info.is_main:
            from maisi.io import atomic_write

            nets = self._eval_nets()
            components = {}
            for name, saved in self.task.saved_components(nets).items():
                extra = {**saved.extra, "task": self.task.name, "step": self.step}
                components[name] = Component(
                    name=name, model=saved.model, config=saved.config, path=model_dir / name, extra=extra
                )
            ms = ModelSet(config=self.task.model_cfg, components=components, layout="maisi", root=model_dir)
            save_model_set(model_dir, ms, overwrite=True)
            line = f"final: step={self.step} val_loss={metrics['val_loss']:.6g}"
            atomic_write(self.run_dir / FINAL_NAME, lambda p: p.write_text(line + "\n"), overwrite=True)
            self._train_mode()
            print(line, flush=True)
        distributed.barrier(self.info)
        return model_dir


class _BatchSource:
    """``source[n]``: this rank's share of global batch ``n``, built by the task (picklable for workers)."""

    def __init__(
        self, task: Task, plan: BatchPlan, seed: int, info: distributed.DistInfo, batch_size: int
    ) -> None:
        self.task, self.plan, self.seed = task, plan, seed
        self.slots = rank_slots(batch_size * info.world_size, info.rank, info.world_size)

    def __getitem__(self, n: int) -> dict[str, torch.Tensor]:
        indices = self.plan.batch(n)
        cases = [self.task.train_cases[indices[s]] for s in self.slots]
        gens = [sample_generator(self.seed, TRAIN_STREAM, n, s) for s in self.slots]
        return self.task.make_batch(cases, gens)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            d = _first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
            if d:
                return d
        return None
    return None if a == b else f"{path}: {a!r} before, {b!r} now"
