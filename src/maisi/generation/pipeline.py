"""``generate()``: request -> mask source -> latent sampling -> decode -> quality check -> outputs.

One call makes samples ``0 .. num_samples - 1`` (under ``torchrun``, this process's share of them). Sample ``i``
depends only on ``(seed, i)``: its mask, its initial latent and its sampler noise come from generators seeded by
:func:`maisi.generation.seeds.derive_seed`, so it is the same whatever the batch, the process or the number of
processes. A sample that fails the quality check is made again with a fresh seed and mask (``attempt`` 1, 2, ...)
up to ``qc_retries`` times; the last attempt is kept and the outcome recorded.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maisi.config.schema import Config, GenerateConfig
from maisi.errors import RequestError
from maisi.generation.masks import MaskSample, MaskSource, choose_source_kind, make_mask_source
from maisi.generation.request import check_body_region, modality_id, validate_request
from maisi.generation.seeds import derive_seed, dist_env, shard, torch_generator
from maisi.generation.synthesis import latent_shape, sampling_networks, synthesise, unit_to_hu
from maisi.performance import Speedups, accelerate, dtype_warning

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """One generated image/label pair.

    Attributes:
        index: sample index (its seed derives from it).
        image: (X, Y, Z) int16 HU (CT; float32 in [0, 1] for other modalities).
        label: (X, Y, Z) uint8 MAISI ids as written (``keep_only`` applied).
        condition: (X, Y, Z) uint8 the full label map the image was generated from.
        affine: (4, 4) RAS voxel -> world (mm).
        spacing: voxel size (mm).
        metadata: the sidecar content (parameters, seeds, weights, timings, QC, organ sizes).
        paths: written files by kind (empty when not written).
        unit: (X, Y, Z) float32 image in [0, 1] before rounding to HU (when ``return_unit``).
    """

    index: int
    image: np.ndarray
    label: np.ndarray
    condition: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    metadata: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)
    unit: np.ndarray | None = None


@dataclass
class _Run:
    """Everything fixed for one ``generate`` call."""

    gen: GenerateConfig
    model_set: Any
    scheduler: Any
    codec: Any
    source: MaskSource
    device: torch.device
    modality: int
    regions: list[int]
    keep_ids: list[int]
    initial_noise: torch.Tensor | None
    noise_source: str | None
    weights: dict[str, Any]
    progress: bool
    speedups: Speedups


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu``, ``cuda`` (``cuda:LOCAL_RANK`` under torchrun), ``cuda:N`` or ``mps``, checked to exist."""
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RequestError(f"device {name!r}: CUDA is not available here; use --device cpu")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise RequestError("device 'mps': Apple Metal is not available here; use --device cpu")
        return torch.device("mps")
    if name != "cpu":
        raise RequestError(f"device must be cpu, cuda or mps, got {name!r}")
    return torch.device("cpu")


def _load_model_set(gen: GenerateConfig, cfg: Config | None, device: torch.device):
    from maisi.generation.weights import IMAGE_COMPONENTS, MASK_COMPONENTS, available_components, load_weights

    wanted = list(IMAGE_COMPONENTS)
    sizes = any(v != -1.0 for v in gen.organ_sizes.values())
    if gen.mask_source == "model":
        wanted += list(MASK_COMPONENTS)  # required: a missing one is an error naming it
    elif gen.mask_source == "auto" and sizes and not gen.mask and not gen.mask_database:
        present = available_components(gen.weights)
        wanted += [c for c in MASK_COMPONENTS if c in present]
    model_set = load_weights(
        gen.weights, components=wanted, base=cfg.model if cfg else None, device=str(device)
    )
    if cfg is not None and model_set.layout == "maisi":
        ignored = ignored_model_keys(cfg, model_set.config, components=model_set.components)
        if ignored:
            raise RequestError(
                f"{', '.join(ignored)}: {model_set.root} is a maisi weights folder, whose network and scheduler "
                f"settings come from its own config.json, so model.* settings that differ from it do not apply; "
                f"drop them (or edit that config.json)"
            )
    return model_set


def ignored_model_keys(cfg: Config, weights_model: Any, *, components: Sequence[str]) -> list[str]:
    """``model.*`` keys (dotted) of the loaded ``components`` and their schedulers that ``cfg`` changes from its
    preset to a value the weights' own config does not have, e.g. ``model.scheduler.transform_scale`` on the
    command line with a maisi weights folder."""
    from maisi.config.loading import to_dict
    from maisi.config.presets import preset

    def flat(d: Any, prefix: str) -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}"))
        return out

    mine, base = flat(to_dict(cfg.model), "model"), flat(to_dict(preset(cfg.preset).model), "model")
    theirs = flat(to_dict(weights_model), "model")
    parts = (
        set(components)
        | {"scheduler"}
        | ({"mask_scheduler", "mask_latent_shape"} if "mask_unet" in components else set())
    )
    return sorted(
        k
        for k in mine
        if k.split(".")[1] in parts and mine[k] != base.get(k) and mine[k] != theirs.get(k, mine[k])
    )


def _codec(model_set: Any, gen: GenerateConfig, device: torch.device):
    from maisi.generation.synthesis import DTYPES
    from maisi.latents import LatentCodec

    vae_cfg = model_set.config.vae
    return LatentCodec(
        vae=model_set["vae"],
        scale_factor=vae_cfg.scale_factor,
        decode_window=gen.decode_window,
        decode_overlap=gen.decode_overlap,
        downsample=2 ** (len(vae_cfg.num_channels) - 1),
        device=device,
        dtype=DTYPES[gen.dtype],
    )


def _prepare(
    cfg: Config | GenerateConfig,
    *,
    model_set: Any,
    weights: Any,
    initial_noise: torch.Tensor | np.ndarray | None,
    mask_source: MaskSource | None,
    fit_mask_to_request: bool,
    progress: bool,
    speedups: Speedups,
) -> _Run:
    from maisi.diffusion import scheduler_from_config
    from maisi.generation.noise import load_noise
    from maisi.generation.weights import weights_identity

    gen = cfg.generate if isinstance(cfg, Config) else cfg
    full = cfg if isinstance(cfg, Config) else None
    if weights is not None:
        gen = dataclasses.replace(gen, weights=str(weights))
    label_set = full.data.label_set if full else "auto"
    early = choose_source_kind(gen)  # the kind before the weights are known (differs only for "model")
    checked = validate_request(
        gen, check_grid=not (mask_source is None and early == "file" and not fit_mask_to_request)
    )
    _, _, local_rank = dist_env()
    device = resolve_device(gen.device, local_rank)
    noise_source = None
    if initial_noise is None and gen.initial_noise:
        initial_noise, noise_source = load_noise(gen.initial_noise), str(gen.initial_noise)
    elif initial_noise is not None:
        initial_noise, noise_source = torch.as_tensor(initial_noise).float(), "argument"
    if mask_source is None and (
        gen.mask_source in ("file", "database", "phantom") or early in ("file", "database")
    ):
        # masks are read and checked before the (possibly large) weights are loaded
        mask_source = make_mask_source(
            gen, kind=early, label_set=label_set, fit_mask_to_request=fit_mask_to_request
        )
    if model_set is None:
        model_set = _load_model_set(gen, full, device)
    for m in ("vae", "unet", "controlnet"):
        model_set[m].to(device).eval()
    if mask_source is None:
        mask_source = make_mask_source(
            gen,
            kind=choose_source_kind(gen, model_set=model_set),
            model_set=model_set,
            label_set=label_set,
            fit_mask_to_request=fit_mask_to_request,
            device=str(device),
            progress=progress,
        )
    return _Run(
        gen=gen,
        model_set=model_set,
        scheduler=scheduler_from_config(model_set.config.scheduler),
        codec=_codec(model_set, gen, device),
        source=mask_source,
        device=device,
        modality=modality_id(gen.modality),
        regions=check_body_region(gen.body_region),
        keep_ids=checked.keep_ids,
        initial_noise=initial_noise,
        noise_source=noise_source,
        weights=weights_identity(model_set),
        progress=progress,
        speedups=speedups,
    )


def generate(
    cfg: Config | GenerateConfig,
    *,
    model_set: Any = None,
    weights: str | Path | None = None,
    initial_noise: torch.Tensor | np.ndarray | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int = 1,
    write: bool = True,
    mask_source: MaskSource | None = None,
    fit_mask_to_request: bool = False,
    return_unit: bool = False,
    progress: bool = False,
    speedups: Speedups | None = None,
) -> list[Sample]:
    """Generate image/label pairs.

    Args:
        cfg: the request (``cfg.generate``), or a full :class:`Config` (its ``model`` is the base for official
            weights and its ``data.label_set`` the vocabulary of a user mask).
        model_set: loaded weights (:func:`maisi.networks.model_set.load_model_set`); default loads
            ``weights`` or else ``cfg.weights`` (``demo``, ``rflow-ct``, ``ddpm-ct`` or a folder).
        weights: weights name or folder, overriding ``cfg.weights``.
        initial_noise: fixed initial latents ``(N, C, x, y, z)`` (sample ``i`` uses row ``i``) or ``(C, x, y, z)``;
            default ``cfg.initial_noise`` (a file) or seeded noise. Quality-check retries are off with it.
        indices: which samples to make (default ``range(num_samples)``); under torchrun each process makes every
            ``WORLD_SIZE``-th of them.
        batch_size: samples sampled together (results equal single runs up to float rounding).
        write: write files into ``cfg.output_dir`` (samples already complete there are skipped, not redone).
        mask_source: use this source instead of the one the request names.
        fit_mask_to_request: fit a ``--mask`` file to ``output_size``/``spacing`` instead of its nearest valid grid.
        return_unit: keep the [0, 1] image before rounding (``Sample.unit``).
        progress: show progress bars.
        speedups: :class:`maisi.performance.Speedups` (default ``Speedups()``: the ControlNet conditioning computed
            once, packed oneDNN convolutions on CPU, files written while the next sample is made);
            :data:`maisi.performance.PLAIN` turns every one off.

    Returns:
        The samples this process made, by index (skipped ones are not returned).
    """
    if batch_size < 1:
        raise RequestError(f"batch_size must be >= 1, got {batch_size}")
    run = _prepare(
        cfg,
        model_set=model_set,
        weights=weights,
        initial_noise=initial_noise,
        mask_source=mask_source,
        fit_mask_to_request=fit_mask_to_request,
        progress=progress,
        speedups=Speedups() if speedups is None else speedups,
    )
    rank, world, _ = dist_env()
    todo = shard(list(range(run.gen.num_samples)) if indices is None else list(indices), rank, world)
    if write:
        todo = _skip_complete(run, todo)
        _write_run_config(cfg, run)
    samples = []
    logged: set[str] = set()
    slow = dtype_warning(run.device, run.gen.dtype)
    if slow:
        log.warning("maisi generate: %s", slow)
    # one speed-up block for the whole run: networks are prepared (layouts, Winograd kernels) once, not per batch
    networks = sampling_networks(run.model_set, run.codec)
    with (
        _Writer(background=write and run.speedups.overlap_write) as writer,
        accelerate(networks, run.speedups, device=run.device),
    ):
        for start in range(0, len(todo), batch_size):
            for s in _make_batch(
                run, todo[start : start + batch_size], rank=rank, world=world, return_unit=return_unit
            ):
                for w in s.metadata["warnings"]:
                    if w not in logged:  # say what changed once per run, not once per sample
                        logged.add(w)
                        log.warning("maisi generate: %s", w)
                if write:
                    writer.submit(_write, run, s)
                samples.append(s)
    return samples


class _Writer:
    """Runs the writes of finished samples in one background thread (compression releases the GIL, so the next
    sample is sampled and decoded meanwhile), or inline; leaving the block waits for every write and re-raises the
    first error."""

    def __init__(self, *, background: bool) -> None:
        self.background = background
        self.pool: Any = None
        self.futures: list[Any] = []

    def __enter__(self) -> _Writer:
        if self.background:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maisi-write")
        return self

    def submit(self, fn, *args) -> None:
        if self.pool is None:
            fn(*args)
        else:
            self.futures.append(self.pool.submit(fn, *args))

    def __exit__(self, exc_type, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            if exc_type is None:  # an error of the main loop wins over a write error
                for f in self.futures:
                    f.result()


def _skip_complete(run: _Run, todo: list[int]) -> list[int]:
    from maisi.generation.outputs import existing_state, sample_paths
    from maisi.generation.sidecar import request_digest

    left = []
    for i in todo:
        paths = sample_paths(
            run.gen.output_dir,
            i,
            image_ext=run.gen.image_ext,
            label_ext=run.gen.label_ext,
            preview=run.gen.preview,
        )
        if existing_state(paths, request_digest(run.gen, run.weights, i)) == "absent":
            left.append(i)
    return left


def _write_run_config(cfg: Config | GenerateConfig, run: _Run) -> None:
    """The resolved config beside the samples (first run in a folder only; every sidecar holds the request)."""
    from maisi.config import to_dict
    from maisi.io import write_json

    resolved = dataclasses.replace(cfg, generate=run.gen) if isinstance(cfg, Config) else run.gen
    path = Path(run.gen.output_dir) / "config.json"
    if not path.exists():
        try:
            write_json(path, to_dict(resolved))
        except FileExistsError:
            pass  # another process wrote it first


def _noise(run: _Run, index: int, attempt: int, size: Sequence[int]) -> torch.Tensor:
    from maisi.diffusion import randn
    from maisi.generation.noise import noise_for

    shape = latent_shape(run.model_set, size)
    if run.initial_noise is not None:
        return noise_for(run.initial_noise, index, shape)
    return randn(shape, generator=torch_generator(derive_seed(run.gen.seed, index, attempt, stream="noise")))


def _attempt(
    run: _Run, indices: list[int], attempts: list[int]
) -> list[tuple[MaskSample, torch.Tensor, dict]]:
    """Masks, sampling and decode of one batch; ``(mask, unit image (X, Y, Z), timings)`` per sample."""
    t0 = time.perf_counter()
    masks = [run.source(i, a) for i, a in zip(indices, attempts)]
    t_mask = (time.perf_counter() - t0) / len(indices)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, m in enumerate(masks):
        groups.setdefault(tuple(m.label.shape), []).append(k)
    out: list[Any] = [None] * len(indices)
    for ks in groups.values():  # one batch per grid
        noise = torch.stack([_noise(run, indices[k], attempts[k], masks[k].label.shape) for k in ks])
        gens = [
            torch_generator(derive_seed(run.gen.seed, indices[k], attempts[k], stream="sampler")) for k in ks
        ]
        unit, timings = synthesise(
            run.model_set,
            run.scheduler,
            run.codec,
            [masks[k] for k in ks],
            noise,
            steps=run.gen.steps,
            modality=run.modality,
            guidance=run.gen.guidance,
            controlnet_scale=run.gen.controlnet_scale,
            requested_regions=run.regions,
            step_generators=gens,
            device=run.device,
            dtype=run.gen.dtype,
            progress=run.progress,
            speedups=run.speedups,
        )
        for j, k in enumerate(ks):
            out[k] = (masks[k], unit[j, 0], {"mask_s": round(t_mask, 4), **timings, "batch": len(ks)})
    return out


def _finish(
    run: _Run,
    mask: MaskSample,
    unit: torch.Tensor,
    timings: dict,
    attempt: int,
    history: list[dict],
) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
    """HU image and quality check of one attempt; appends the attempt to ``history``."""
    from maisi.generation.qc import check_organ_medians

    t0 = time.perf_counter()
    is_ct = run.gen.modality.startswith("ct")
    unit_np = unit.numpy()
    image = unit_to_hu(unit_np) if is_ct else unit_np.astype(np.float32)
    qc = check_organ_medians(image, mask.label) if (run.gen.qc and is_ct) else None
    timings["qc_s"] = round(time.perf_counter() - t0, 4)
    history.append(
        {"attempt": attempt, "passed": None if qc is None else qc["passed"], "mask_source": mask.source}
    )
    return image, unit_np, qc


def _make_batch(run: _Run, indices: list[int], *, rank: int, world: int, return_unit: bool) -> list[Sample]:
    from maisi.generation.sidecar import Outcome, build_sidecar

    checked = run.gen.qc and run.gen.modality.startswith("ct")
    retries = run.gen.qc_retries if (checked and run.initial_noise is None) else 0
    samples = []
    for index, (mask, unit, timings) in zip(indices, _attempt(run, indices, [0] * len(indices))):
        history: list[dict] = []
        attempt = 0
        image, unit_np, qc = _finish(run, mask, unit, timings, attempt, history)
        while qc is not None and not qc["passed"] and attempt < retries:
            attempt += 1  # a new seed and a new mask
            mask, unit, timings = _attempt(run, [index], [attempt])[0]
            image, unit_np, qc = _finish(run, mask, unit, timings, attempt, history)
        outcome = Outcome(
            index=index, attempt=attempt, mask=mask, image=image, qc=qc, history=history, timings=timings
        )
        meta = build_sidecar(
            outcome,
            gen=run.gen,
            model_config=run.model_set.config,
            weights=run.weights,
            keep_ids=run.keep_ids,
            noise_source=run.noise_source,
            device=str(run.device),
            rank=rank,
            world=world,
        )
        label = mask.label
        written = np.where(np.isin(label, run.keep_ids), label, 0).astype(np.uint8) if run.keep_ids else label
        samples.append(
            Sample(
                index=index,
                image=image,
                label=written,
                condition=label,
                affine=mask.affine,
                spacing=tuple(mask.spacing),
                metadata=meta,
                unit=unit_np if return_unit else None,
            )
        )
    return samples


def _write(run: _Run, s: Sample) -> None:
    from maisi.generation.outputs import sample_paths, write_sample

    t0 = time.perf_counter()
    paths = sample_paths(
        run.gen.output_dir,
        s.index,
        image_ext=run.gen.image_ext,
        label_ext=run.gen.label_ext,
        preview=run.gen.preview,
    )
    s.paths = write_sample(
        paths,
        image=s.image,
        label=s.label,
        affine=s.affine,
        spacing=s.spacing,
        sidecar=s.metadata,
        preview_label=s.condition,
    )
    s.metadata["timings_s"]["write_s"] = round(time.perf_counter() - t0, 4)  # known only after the sidecar
