"""Peak memory of each stage of a generation run, from the networks' configs, the request and the decode settings.

Stages (in run order): ``mask model`` (the mask diffusion loop), ``mask decode`` (the mask VAE, 125 channels),
``conditioning`` (the label map's bit planes), ``sampling`` (UNet + ControlNet, the guidance batch), ``decode``
(the image VAE) and ``writing`` (HU conversion and files). Each estimate adds up, at the stage's peak:

- ``weights``: the networks resident on the device (all of them, or the stage's own when idle ones are moved to
  the host), float32;
- ``activations``: the peak of the tensors one network call creates, traced on the meta device
  (:mod:`maisi.memory.trace`) for the sampling steps and the mask model, computed for the decoder
  (:func:`maisi.memory.slabs.decoder_peak`); two sampler steps are traced, so the ControlNet conditioning that
  :func:`maisi.performance.accelerate` keeps from one step to the next is counted;
- ``inputs`` and ``outputs``: what the stage holds besides (label maps as bit planes, latents, the decoded volume
  and the window weights of a tiled decode);
- ``kernels`` (CPU): the transformed Winograd kernels that :func:`~maisi.performance.accelerate` keeps for the
  networks it speeds up, and what computing adds besides tensors (:data:`FIRST_USE_CPU`);
- ``runtime`` (CPU): the interpreter and the libraries.

On the CPU all of it is one memory; on CUDA ``host`` counts what stays in RAM (the decoded volume assembled on the
CPU, files being written) apart from the device's total.

The activations are exact for the tensors Python holds (checked against the meta trace in the tests);
``benchmarks/bench_memory_model.py`` compares whole estimates with measured peaks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from maisi.memory.slabs import decoder_peak

#: interpreter, torch, MONAI and maisi with their libraries, resident before any network (measured 0.41 GiB after
#: the imports of ``maisi generate`` on Linux, x86-64; oneDNN's and OpenMP's thread pools come on top)
RUNTIME_CPU = 512 * 2**20
#: what computing adds on a CPU besides tensors, from the first convolution on: oneDNN's generated kernels and
#: primitive cache, the thread pools (measured 30-40 MiB on the 2-core machine beside the Winograd scratch, which
#: the trace counts)
FIRST_USE_CPU = 40 * 2**20
#: bytes per voxel the host holds to write one sample: the [0, 1] image (float32) and its clamped copy, HU
#: (int16), label and condition (uint8 each) and the compressed file being built
WRITE_BYTES_PER_VOXEL = 4 + 4 + 2 + 1 + 1 + 2
#: channels of the ControlNet conditioning (the label id's bit planes) and their bytes per voxel
CONTROL_BITS = 8
#: building a label map's planes (:func:`maisi.generation.synthesis.build_denoiser`): its uint8 ids and at most two
#: uint8 temporaries of :func:`maisi.conditioning.binarize_labels`, per voxel, beside the planes themselves
BINARISE_BYTES_PER_VOXEL = 1 + 2


@dataclass(frozen=True)
class DecodeSettings:
    """How a VAE decodes: windows of ``window`` latent voxels (clipped to the latent; the whole latent in one
    window is one pass, no stitching) overlapping by ``overlap``, each run in ``num_splits`` slabs
    (:mod:`maisi.memory.slabs`), the output assembled on ``output_device``."""

    window: tuple[int, int, int]
    overlap: float
    num_splits: int = 1
    output_device: str = "cpu"

    def clipped(self, latent: Sequence[int]) -> tuple[int, ...]:
        return tuple(min(int(w), int(s)) for w, s in zip(self.window, latent))

    def windows(self, latent: Sequence[int]) -> int:
        from maisi.latents import window_starts

        return math.prod(
            len(window_starts(int(s), int(w), self.overlap)) for s, w in zip(latent, self.window)
        )

    def tiled(self, latent: Sequence[int]) -> bool:
        """Whether the codec tiles (its rule: more latent voxels than one window)."""
        return math.prod(int(s) for s in latent) > math.prod(int(w) for w in self.window)

    def describe(self, latent: Sequence[int]) -> dict[str, Any]:
        return {
            "window": list(self.clipped(latent)),
            "overlap": self.overlap,
            "num_splits": self.num_splits,
            "windows": self.windows(latent) if self.tiled(latent) else 1,
            "output_device": self.output_device,
        }


@dataclass(frozen=True)
class StageEstimate:
    """Peak bytes of one stage: ``device`` on the compute device (everything, on a CPU run), ``host`` in RAM
    besides on a CUDA run; ``parts`` says what makes up the device figure."""

    name: str
    device: int
    host: int = 0
    parts: dict[str, int] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bytes": self.device, "gib": round(self.device / 2**30, 3)}
        if self.host:
            out["host_bytes"] = self.host
        out["parts"] = dict(self.parts)
        return out


@dataclass(frozen=True)
class Request:
    """What the estimates need of a request (from a :class:`~maisi.config.schema.GenerateConfig`)."""

    output_size: tuple[int, int, int]
    batch: int = 1
    guidance: float = 0.0
    dtype: str = "float32"
    control: bool = True
    #: the mask model that runs (``mask_unet``, ``mask_unet_v2``), or None
    mask_model: str | None = None
    #: label maps may hold tumours (guidance then builds an unconditional map without them); phantoms do not
    tumours: bool = True
    sampling: bool = True
    mask_guidance: float = 2.0

    @classmethod
    def of(cls, gen: Any, components: Sequence[str], mask_source: str | None = None) -> Request:
        masks = [c for c in ("mask_unet_v2", "mask_unet") if c in components]
        source = mask_source or getattr(gen, "mask_source", None)
        return cls(
            output_size=tuple(int(s) for s in gen.output_size),
            batch=max(1, min(int(gen.batch_size), int(gen.num_samples))),
            guidance=float(gen.guidance),
            dtype=str(gen.dtype),
            control="controlnet" in components,
            mask_model=masks[0] if masks else None,
            tumours=source != "phantom",
            sampling="unet" in components,
            mask_guidance=float(getattr(gen, "mask_guidance", 2.0) or 0.0),
        )

    @property
    def uncond_control(self) -> bool:
        """Whether guidance makes a second, unconditional label map (tumours removed)."""
        return self.control and self.guidance > 0 and self.tumours

    @property
    def voxels(self) -> int:
        return math.prod(self.output_size)

    @property
    def half(self) -> bool:
        return self.dtype != "float32"


# ------------------------------------------------------------------------------------------------ networks


def _key(cfg: Any) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)


@functools.lru_cache(maxsize=32)
def _meta_network(component: str, cfg_json: str, kind: str) -> torch.nn.Module:
    from maisi.config.loading import build_dataclass
    from maisi.config.schema import ControlNetConfig, UNetConfig, VAEConfig
    from maisi.networks import builders

    schema = {"vae": VAEConfig, "unet": UNetConfig, "controlnet": ControlNetConfig}[kind]
    cfg = build_dataclass(schema, json.loads(cfg_json), component)
    build = {"vae": builders.build_vae, "unet": builders.build_unet, "controlnet": builders.build_controlnet}
    with torch.device("meta"):
        return build[kind](cfg).eval()


def meta_network(component: str, model_cfg: Any) -> torch.nn.Module:
    """The network of ``component`` built on the meta device (cached; do not change it)."""
    kind = {"vae": "vae", "mask_vae": "vae", "controlnet": "controlnet"}.get(component, "unet")
    cfg = getattr(model_cfg, component)
    return _meta_network(component, _key(cfg), kind)


def weight_bytes(component: str, model_cfg: Any) -> int:
    """Bytes of a network's parameters and buffers in float32."""
    net = meta_network(component, model_cfg)
    return sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))


# ------------------------------------------------------------------------------------------------ traces


@functools.lru_cache(maxsize=64)
def _sampling_trace(
    cfg_json: str,
    latent: tuple[int, ...],
    batch: int,
    guidance: bool,
    control: bool,
    uncond: bool,
    half: bool,
):
    from maisi.config.loading import build_dataclass
    from maisi.config.schema import ModelConfig
    from maisi.diffusion import make_denoiser
    from maisi.memory.trace import trace_peak
    from maisi.performance.control import cached_control_embedding

    model_cfg = build_dataclass(ModelConfig, json.loads(cfg_json), "model")
    unet = meta_network("unet", model_cfg)
    controlnet = meta_network("controlnet", model_cfg) if control else None
    vae = model_cfg.vae
    meta = torch.device("meta")
    image = tuple(s * vae.downsample for s in latent)
    kwargs: dict[str, Any] = {"spacing": torch.empty(batch, 3, device=meta)}
    if model_cfg.unet.num_class_embeds is not None:
        kwargs["modality"] = torch.zeros(batch, dtype=torch.long, device=meta)
    if model_cfg.unet.include_top_region_index_input:
        kwargs["top_region"] = torch.empty(batch, 4, device=meta)
        kwargs["bottom_region"] = torch.empty(batch, 4, device=meta)
    if control:
        kwargs["controlnet"] = controlnet
        kwargs["control"] = torch.empty(batch, CONTROL_BITS, *image, device=meta)
        if guidance and uncond:
            kwargs["uncond_control"] = torch.empty(batch, CONTROL_BITS, *image, device=meta)
    if "modality" not in kwargs and "uncond_control" not in kwargs:
        guidance = False  # nothing to drop: the request checks refuse such guidance
    denoiser = make_denoiser(unet, guidance_scale=1.0 if guidance else 0.0, **kwargs)
    x = torch.empty(batch, vae.latent_channels, *latent, device=meta)
    t = torch.empty(batch, device=meta)

    def two_steps() -> None:
        # the second step runs with the first step's ControlNet conditioning kept (cache_control)
        with cached_control_embedding(controlnet) if control else contextlib.nullcontext():
            for _ in range(2):
                out = denoiser(x, t)
                del out

    return trace_peak(two_steps, autocast=torch.float16 if half else None)


@functools.lru_cache(maxsize=16)
def _mask_trace(cfg_json: str, component: str, guidance: bool, half: bool):
    from maisi.config.loading import build_dataclass
    from maisi.config.schema import ModelConfig
    from maisi.memory.trace import trace_peak

    model_cfg = build_dataclass(ModelConfig, json.loads(cfg_json), "model")
    unet = meta_network(component, model_cfg)
    cfg = getattr(model_cfg, component)
    meta = torch.device("meta")
    shape = tuple(model_cfg.mask_latent_shape)
    batch = 2 if cfg.variant == "adagn" and guidance else 1  # the v2 sampler's guidance batch [cond, uncond]
    kwargs: dict[str, Any] = {}
    if cfg.variant == "adagn":
        kwargs["context"] = torch.empty(batch, 1, cfg.adagn_condition_dim or 19, device=meta)
    elif cfg.with_conditioning:
        kwargs["context"] = torch.empty(batch, 1, cfg.cross_attention_dim or 10, device=meta)
    if cfg.include_spacing_input:
        kwargs["spacing_tensor"] = torch.empty(batch, 3, device=meta)
    x = torch.empty(batch, *shape, device=meta)
    t = torch.empty(batch, device=meta)
    return trace_peak(lambda: unet(x=x, timesteps=t, **kwargs), autocast=torch.float16 if half else None)


def sampling_activations(model_cfg: Any, request: Request) -> tuple[int, int]:
    """Peak bytes one sampler step creates (two steps traced) and the Winograd kernel bytes of its networks."""
    latent = tuple(s // model_cfg.vae.downsample for s in request.output_size)
    tr = _sampling_trace(
        _key(model_cfg), latent, request.batch, request.guidance > 0, request.control, request.uncond_control,
        request.half,
    )  # fmt: skip
    return tr.peak, tr.winograd_bytes


def decode_window_bytes(
    vae_cfg: Any, window: Sequence[int], num_splits: int, *, half: bool, device: str
) -> int:
    """Peak bytes of decoding one window (the decoder's tensors, its float32 output included)."""
    cpu = device == "cpu"
    return decoder_peak(
        vae_cfg, window, num_splits, act_bytes=2 if half else 4, channels_last=cpu, resident=cpu
    )


# ------------------------------------------------------------------------------------------------ stages


def _latent(model_cfg: Any, request: Request) -> tuple[int, ...]:
    return tuple(s // model_cfg.vae.downsample for s in request.output_size)


def decode_stage(
    model_cfg: Any,
    request: Request,
    settings: DecodeSettings,
    *,
    device: str,
    resident: int,
    kernels: int,
    component: str = "vae",
    latent: Sequence[int] | None = None,
    held: int = 0,
    output_bytes_per_value: int = 4,
) -> StageEstimate:
    """The decode of ``component`` with ``settings``: weights resident (``resident``), kernels, what the run
    still holds (``held``: conditioning, latents), the output buffer and one window's decoder."""
    vae_cfg = getattr(model_cfg, component)
    latent = tuple(latent) if latent is not None else _latent(model_cfg, request)
    cpu = device == "cpu"
    batch = request.batch if component == "vae" else 1
    window = settings.clipped(latent)
    tiled = settings.tiled(latent)
    activations = decode_window_bytes(vae_cfg, window, settings.num_splits, half=request.half, device=device)
    if not tiled and batch > 1:
        activations = decoder_peak(
            vae_cfg, window, settings.num_splits, act_bytes=2 if request.half else 4,
            channels_last=cpu, batch=batch, resident=cpu,
        )  # fmt: skip
    image = math.prod(latent) * vae_cfg.downsample**3
    output = batch * vae_cfg.out_channels * image * output_bytes_per_value if tiled else 0
    weight_sums = math.prod(latent) * 4 if tiled else 0
    latents = batch * vae_cfg.latent_channels * math.prod(latent) * 4 * 2
    on_device = settings.output_device != "cpu" or cpu
    parts = {
        "weights": resident,
        "activations": activations,
        "inputs": held + latents,
        "output": output + weight_sums if on_device else 0,
    }
    host = 0 if on_device else output + weight_sums
    if not tiled and not cpu:  # the decoded batch copied to the host
        host += batch * vae_cfg.out_channels * image * 4
    if cpu:
        parts["kernels"] = kernels
        parts["runtime"] = RUNTIME_CPU
    name = "decode" if component == "vae" else "mask decode"
    return StageEstimate(name, sum(parts.values()), host, parts)


def fixed_stages(
    model_cfg: Any,
    request: Request,
    *,
    device: str,
    resident: dict[str, int],
    kernels: dict[str, int],
) -> list[StageEstimate]:
    """The stages that do not depend on the decode settings: mask model, conditioning, sampling, writing."""
    cpu = device == "cpu"
    latent = _latent(model_cfg, request)
    voxels = request.voxels
    latents = request.batch * model_cfg.vae.latent_channels * math.prod(latent) * 4
    stages = []
    runtime = {"runtime": RUNTIME_CPU} if cpu else {}
    if request.mask_model:
        tr = _mask_trace(_key(model_cfg), request.mask_model, request.mask_guidance > 0, request.half)
        shape = tuple(model_cfg.mask_latent_shape)
        parts = {
            "weights": resident["mask model"],
            "activations": tr.peak,
            "inputs": 4 * math.prod(shape) * 4,
            **runtime,
        }
        stages.append(StageEstimate("mask model", sum(parts.values()), 0, parts))
    if not request.sampling:  # a decode-only run
        return stages
    control = control_bytes(request)
    uncond = control if request.uncond_control else 0
    if request.control:
        # the first map's planes beside the second's while guidance builds an unconditional map
        spike = request.batch * voxels * BINARISE_BYTES_PER_VOXEL + control + uncond
        parts = {"weights": resident["sampling"] if cpu else 0, "inputs": spike, **runtime}
        if cpu:
            parts["kernels"] = 0
        stages.append(
            StageEstimate("conditioning", sum(parts.values()) if cpu else 0, 0 if cpu else spike, parts)
        )
    activations, _ = sampling_activations(model_cfg, request)
    # under guidance the denoiser keeps one concatenation [cond, uncond] of the planes (views replace the maps),
    # which the traced steps hold already
    planes = control if request.guidance <= 0 else 0
    parts = {
        "weights": resident["sampling"],
        "activations": activations,
        "inputs": planes + 4 * latents,
    }
    if cpu:
        parts["kernels"] = kernels["sampling"]
        parts.update(runtime)
    stages.append(StageEstimate("sampling", sum(parts.values()), 0, parts))
    write = request.batch * voxels * WRITE_BYTES_PER_VOXEL
    parts = {"weights": resident["writing"], "outputs": write, **runtime}
    if cpu:
        parts["kernels"] = kernels["decode"]
        stages.append(StageEstimate("writing", sum(parts.values()), 0, parts))
    else:
        stages.append(StageEstimate("writing", resident["writing"], write, parts))
    return stages


def control_bytes(request: Request) -> int:
    """Bytes of a batch's ControlNet planes: 8 per voxel, in the compute dtype when it is half, else float32."""
    if not request.control:
        return 0
    return request.batch * CONTROL_BITS * request.voxels * (2 if request.half else 4)


def conditioning_held(request: Request) -> int:
    """Bytes of ControlNet conditioning the run still holds while it decodes: none, since
    :func:`maisi.generation.synthesis.synthesise` drops the denoiser (its planes, the guided concatenation) and
    empties the embedding memo before decoding."""
    return 0


__all__ = [
    "DecodeSettings",
    "Request",
    "StageEstimate",
    "conditioning_held",
    "decode_stage",
    "decode_window_bytes",
    "fixed_stages",
    "meta_network",
    "sampling_activations",
    "weight_bytes",
]
