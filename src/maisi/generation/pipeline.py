"""``generate()``: plan -> load -> for each sample: mask -> sampling -> decode -> quality check -> write, streamed.

One call makes samples ``0 .. num_samples - 1`` (under ``torchrun``, this process's share of them). The run flows
one way: :func:`~maisi.generation.plan.plan_generation` decides everything that can be decided from the request
and the weights folder; the masks of a file or database are read before any network is loaded; then each sample
is made, written (its sidecar last) and handed on as soon as it is done, so the memory of a run does not grow with
its number of samples. What a sample used (seeds, mask, warnings, timings) is recorded as it happens.

Sample ``i`` depends only on ``(seed, i)``: its mask, its initial latent and its sampler noise come from generators
seeded by :func:`maisi.generation.seeds.derive_seed`, so it is the same whatever the batch, the process or the
number of processes. A sample that fails the quality check is made again with a fresh seed and mask (``attempt``
1, 2, ...) up to ``qc_retries`` times; the last attempt is kept and the outcome recorded.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from maisi.config.schema import Config
from maisi.data.intensity import unit_to_output
from maisi.generation.masks import MaskSample, MaskSource, make_mask_source
from maisi.generation.plan import Plan, plan_generation, with_run_memory
from maisi.generation.sample import Sample
from maisi.generation.seeds import derive_seed, torch_generator
from maisi.generation.sidecar import Outcome, build_sidecar
from maisi.generation.synthesis import sampling_networks, synthesise
from maisi.memory import applied
from maisi.performance import Speedups, accelerate, dtype_warning
from maisi.runtime import compute_dtype

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """Everything loaded for one run."""

    plan: Plan
    model_set: Any
    scheduler: Any
    codec: Any
    source: MaskSource
    initial_noise: torch.Tensor | None
    noise_source: str | None
    identity: dict[str, Any]
    progress: bool
    speedups: Speedups
    claims: dict[int, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device(self.plan.device)


def generate(cfg: Config, **options: Any) -> list[Sample]:
    """Generate image/label pairs and return every sample with its arrays (see :func:`stream` for the options;
    a long run is better streamed, so that its memory does not grow with its number of samples).

    Returns:
        The samples this process made, by index (samples already complete in ``output_dir`` are skipped).
    """
    return list(stream(cfg, **options))


def stream(
    cfg: Config,
    *,
    model_set: Any = None,
    initial_noise: torch.Tensor | np.ndarray | None = None,
    indices: Sequence[int] | None = None,
    write: bool = True,
    mask_source: MaskSource | None = None,
    return_unit: bool = False,
    progress: bool = False,
    speedups: Speedups | None = None,
    keep_arrays: bool = True,
    on_written: Callable[[Sample], Any] | None = None,
    on_plan: Callable[[Plan], Any] | None = None,
) -> Iterator[Sample]:
    """Make the samples of a request, yielding each once it is written (or made, with ``write=False``).

    Args:
        cfg: the resolved config: ``cfg.generate`` is the request, ``cfg.model`` the base network config for
            official weights, ``cfg.data`` how a user's label maps are read.
        model_set: loaded weights (:func:`maisi.networks.model_set.load_model_set`); default loads the components
            the plan needs from ``cfg.generate.weights`` (``demo``, ``rflow-ct``, ``ddpm-ct`` or a folder).
        initial_noise: fixed initial latents ``(N, C, x, y, z)`` (sample ``i`` uses row ``i``) or ``(C, x, y, z)``;
            default ``cfg.generate.initial_noise`` (a file) or seeded noise. Quality-check retries are off with it.
        indices: which samples to make (default ``range(num_samples)``); under torchrun each process makes every
            ``WORLD_SIZE``-th of them.
        write: write files into ``output_dir`` (samples already complete there are skipped, not redone).
        mask_source: use this source instead of the one the request names.
        return_unit: keep the [0, 1] image before rounding (``Sample.unit``).
        progress: show progress bars.
        speedups: :class:`maisi.performance.Speedups` (default ``Speedups()``); :data:`maisi.performance.PLAIN`
            turns every one off.
        keep_arrays: keep the image and label arrays of written samples (False: only paths and metadata).
        on_written: called with each sample as soon as its files are complete (from the writer's thread when
            writes overlap sampling), e.g. to report it while the next one is made.
        on_plan: called once with the run's plan (memory plan included) when the networks are loaded, before the
            first sample.
    """
    from maisi.generation.output_dir import check_outputs, claim_samples
    from maisi.generation.outputs import BackgroundWriter, write_run_config
    from maisi.generation.weights import describe_model_set

    known = describe_model_set(model_set) if model_set is not None else None
    plan = plan_generation(
        cfg, weights=known, mask_source=getattr(mask_source, "name", None), indices=indices
    )
    todo = list(plan.indices)
    if write:  # the output folder is checked before any network is loaded
        todo = check_outputs(plan, todo)
    run = _start(plan, cfg, model_set, initial_noise, mask_source, progress, speedups or Speedups())
    plan = run.plan  # with its memory plan
    _announce(plan, on_plan)
    if write:
        write_run_config(cfg, plan.request.output_dir)
    slow = dtype_warning(run.device, plan.request.dtype)
    said: set[str] = set()
    _say_once([slow] if slow else [], said, plan)
    release = functools.partial(_release, keep_arrays=keep_arrays or not write)
    writer = BackgroundWriter(
        functools.partial(_write_and_report, run, on_written),
        background=write and run.speedups.overlap_write,
    )
    # one speed-up block for the whole run: networks are prepared (layouts, Winograd kernels) once, not per batch
    try:
        with (
            accelerate(sampling_networks(run.model_set, run.codec), run.speedups, device=run.device),
            applied(plan.memory, run.model_set, device=run.device),
        ):
            for start in range(0, len(todo), plan.request.batch_size):
                batch = todo[start : start + plan.request.batch_size]
                if write:  # samples another run has claimed (or finished meanwhile) are left to it
                    batch = claim_samples(run.plan, batch, run.claims, run.identity)
                for s in _make_batch(run, batch, return_unit) if batch else ():
                    _say_once(s.metadata["warnings"], said, plan)
                    yield from map(release, writer.submit(s) if write else [s])
            yield from map(release, writer.finish())
    finally:
        writer.close()
        for lock in run.claims.values():  # samples not made (an error, an interruption): free for a rerun
            lock.release(done=False)


def _start(
    plan: Plan,
    cfg: Config,
    model_set: Any,
    initial_noise: torch.Tensor | np.ndarray | None,
    source: MaskSource | None,
    progress: bool,
    speedups: Speedups,
) -> _Run:
    """Read the masks and the fixed noise, plan the memory, then load the networks the plan names and set them up
    as the memory plan says."""
    from maisi.diffusion import scheduler_from_config
    from maisi.generation.noise import load_noise
    from maisi.generation.weights import check_model_keys, load_weights
    from maisi.latents import LatentCodec

    gen = plan.request
    noise_source = None
    if initial_noise is None and gen.initial_noise:
        initial_noise, noise_source = load_noise(gen.initial_noise), str(gen.initial_noise)
    elif initial_noise is not None:
        initial_noise, noise_source = torch.as_tensor(initial_noise).float(), "argument"
    make = functools.partial(
        make_mask_source, plan.mask_source, gen, weights=plan.weights, reading=plan.reading
    )
    if source is None and plan.mask_source != "model":
        source = make()  # masks are read and checked before the (possibly large) weights are loaded
    # the memory plan (a user mask's own grid known now): refused here if it cannot fit, before any loading
    plan = with_run_memory(plan, cfg, source, getattr(model_set, "config", None))
    if model_set is None:
        model_set = load_weights(plan.weights, components=plan.components, base=cfg.model, device=plan.device)
        check_model_keys(cfg, model_set, plan.components)
    for name in plan.components:
        if name in ("vae", "unet", "controlnet"):  # the mask networks go to the device in their own stage
            model_set[name].to(plan.device).eval()
    if source is None:  # the mask model, decoding as the memory plan says
        mask = plan.memory.mask_decode
        decode = {} if mask is None else {"decode": mask.window, "overlap": mask.overlap}
        source = make(model_set=model_set, device=plan.device, progress=progress, **decode)
    codec = LatentCodec.from_model_set(
        model_set,
        **plan.memory.codec_options(),
        device=plan.device,
        dtype=compute_dtype(gen.dtype),
        progress=progress,
    )
    if initial_noise is not None:  # every sample's fixed latent checked before anything is written
        from maisi.generation.noise import noise_for

        fixed = getattr(source, "sample", None)  # a user mask decides the grid
        grid = fixed.shape if fixed is not None else gen.output_size
        for i in plan.indices:
            noise_for(initial_noise, i, (codec.latent_channels, *codec.latent_shape(grid)))
    return _Run(
        plan=plan,
        model_set=model_set,
        scheduler=scheduler_from_config(model_set.config.scheduler),
        codec=codec,
        source=source,
        initial_noise=initial_noise,
        noise_source=noise_source,
        identity=plan.weights_identity(),
        progress=progress,
        speedups=speedups,
    )


def _announce(plan: Plan, on_plan: Callable[[Plan], Any] | None) -> None:
    """The run's plan, logged and handed to ``on_plan`` (first process only)."""
    if plan.process.is_main:
        log.info("maisi generate: %s", plan.memory.summary())
        if on_plan is not None:
            on_plan(plan)


def _say_once(warnings: Sequence[str], said: set[str], plan: Plan) -> None:
    """Log what changed once per run (not once per sample) and on the first process only."""
    for w in warnings:
        if w not in said:
            said.add(w)
            if plan.process.is_main:
                log.warning("maisi generate: %s", w)


def _noise(run: _Run, index: int, attempt: int, size: Sequence[int]) -> tuple[torch.Tensor, int | None]:
    """The initial latent of one attempt and the seed it was drawn with (None for fixed noise)."""
    from maisi.diffusion import randn
    from maisi.generation.noise import noise_for

    shape = (run.codec.latent_channels, *run.codec.latent_shape(size))
    if run.initial_noise is not None:
        return noise_for(run.initial_noise, index, shape), None
    seed = derive_seed(run.plan.request.seed, index, attempt, stream="noise")
    return randn(shape, generator=torch_generator(seed)), seed


@dataclass
class _Attempt:
    """One attempt at one sample, as made."""

    mask: MaskSample
    unit: torch.Tensor
    timings: dict[str, Any]
    seeds: dict[str, int | None]


def _attempt(run: _Run, indices: list[int], attempts: list[int]) -> list[_Attempt]:
    """Masks, sampling and decode of one batch (samples on one grid are sampled together)."""
    gen = run.plan.request
    t0 = time.perf_counter()
    masks = [run.source(i, a) for i, a in zip(indices, attempts)]
    t_mask = (time.perf_counter() - t0) / len(indices)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, m in enumerate(masks):
        groups.setdefault(m.shape, []).append(k)
    out: list[Any] = [None] * len(indices)
    for ks in groups.values():
        drawn = [_noise(run, indices[k], attempts[k], masks[k].shape) for k in ks]
        sampler_seeds = [derive_seed(gen.seed, indices[k], attempts[k], stream="sampler") for k in ks]
        unit, timings = synthesise(
            run.model_set,
            run.scheduler,
            run.codec,
            [masks[k] for k in ks],
            torch.stack([noise for noise, _ in drawn]),
            steps=gen.steps,
            modality=run.plan.modality,
            guidance=gen.guidance,
            controlnet_scale=gen.controlnet_scale,
            requested_regions=run.plan.regions,
            step_generators=[torch_generator(s) for s in sampler_seeds],
            device=run.device,
            dtype=gen.dtype,
            progress=run.progress,
            speedups=run.speedups,
        )
        for j, k in enumerate(ks):
            seeds = {"noise": drawn[j][1], "mask": masks[k].info.get("seed"), "sampler": sampler_seeds[j]}
            times = {"mask_s": round(t_mask, 4), **timings, "batch": len(ks)}
            out[k] = _Attempt(mask=masks[k], unit=unit[j, 0], timings=times, seeds=seeds)
    return out


def _check(run: _Run, made: _Attempt, attempt: int, history: list[dict]) -> tuple[np.ndarray, dict | None]:
    """The image in output units and its quality check (CT with a label map only); appends the attempt to
    ``history``."""
    from maisi.generation.qc import check_organ_medians, qc_reason

    t0 = time.perf_counter()
    image, _ = unit_to_output(made.unit.numpy(), run.plan.modality)
    qc = check_organ_medians(image, made.mask.label) if qc_reason(run.plan) is None else None
    made.timings["qc_s"] = round(time.perf_counter() - t0, 4)
    passed = None if qc is None else qc["passed"]
    history.append({"attempt": attempt, "passed": passed, "mask_source": made.mask.source})
    return image, qc


def _make_batch(run: _Run, indices: list[int], return_unit: bool) -> list[Sample]:
    """Samples of one batch, each retried alone (new seeds, new mask) while its quality check fails."""
    from maisi.generation.qc import qc_reason
    from maisi.generation.request import fov_warnings

    gen = run.plan.request
    retries = gen.qc_retries if (qc_reason(run.plan) is None and run.initial_noise is None) else 0
    samples = []
    for index, made in zip(indices, _attempt(run, indices, [0] * len(indices))):
        history: list[dict] = []
        attempt = 0
        image, qc = _check(run, made, attempt, history)
        while qc is not None and not qc["passed"] and attempt < retries:
            attempt += 1
            made = _attempt(run, [index], [attempt])[0]
            image, qc = _check(run, made, attempt, history)
        mask = made.mask
        outcome = Outcome(
            index=index,
            attempt=attempt,
            seeds=made.seeds,
            mask=mask,
            image=image,
            qc=qc,
            history=history,
            timings=made.timings,
            warnings=list(  # the request's, then the grid's (a user mask decides it), once each
                dict.fromkeys(
                    [
                        *run.plan.warnings,
                        *fov_warnings(mask.shape, mask.spacing, modality=run.plan.modality),
                        *mask.changes,
                        *mask.warnings,
                    ]
                )
            ),
        )
        facts = {
            "model_config": run.model_set.config,
            "weights": run.identity,
            "digest": run.plan.digest(index, run.identity),
            "noise_source": run.noise_source,
            "qc_reason": qc_reason(run.plan),
        }
        keep, written = run.plan.keep_ids, mask.label
        if keep and mask.label is not None:
            written = np.where(np.isin(mask.label, keep), mask.label, 0).astype(np.uint8)
        samples.append(
            Sample(
                index=index,
                image=image,
                label=written,
                condition=mask.label,
                affine=mask.affine,
                spacing=tuple(mask.spacing),
                metadata=build_sidecar(outcome, plan=run.plan, run=facts),
                unit=made.unit.numpy() if return_unit else None,
            )
        )
    return samples


def _write_and_report(run: _Run, on_written: Callable[[Sample], Any] | None, s: Sample) -> None:
    from maisi.generation.output_dir import write_claimed

    write_claimed(run.plan, run.claims, s)
    if on_written is not None:
        on_written(s)


def _release(s: Sample, *, keep_arrays: bool) -> Sample:
    """The sample as handed on: without its arrays once written, unless they are kept."""
    if keep_arrays:
        return s
    return dataclasses.replace(s, image=None, label=None, condition=None, unit=None)
