"""The official MAISI inference numerics, written by hand on MONAI's classes: the oracle of the equivalence tests.

This module is test support, not part of the package: nothing in ``src/maisi`` imports it, and it imports nothing
from maisi's generation, diffusion, latent or network code. It re-states what the official NVIDIA scripts
(``scripts/sample.py``, ``scripts/utils_infer.py``, ``scripts/sample_mask.py``, ``scripts/utils.py``,
``scripts/diff_model_create_training_data.py`` of NV-Generate-CTMR / the MONAI MAISI tutorial) do, using MONAI as
the library those scripts use:

Image from mask (``rflow-ct`` and ``ddpm-ct``)
    * ControlNet conditioning: the label map ``(1, 1, X, Y, Z)`` as 8 binary channels, channel ``k`` = bit ``k``
      of the id (the official tensor is fp16; 0/1 are exact in every dtype).
    * ``spacing_tensor`` = spacing in mm x 1e2, float ``(1, 3)``; ``modality_tensor`` = class id ``(1,)`` int64
      (CT = 1), given to ControlNet and UNet as ``class_labels`` only when the UNet has ``num_class_embeds``;
      top/bottom body-region one-hots x 1e2 ``(1, 4)`` only when the UNet has region inputs (``ddpm-ct``), from
      the official ``get_body_region_index_from_mask`` rule (:func:`official_body_regions`).
    * ``RFlowScheduler.set_timesteps(n, input_img_size_numel=prod(latent spatial))`` or
      ``DDPMScheduler.set_timesteps(n)``; the loop ``for t, next_t in zip(timesteps, cat(timesteps[1:], [0]))``
      with the network time ``torch.Tensor((t,))``; ``step(out, t, x, next_t)`` (rflow) or ``step(out, t, x)``
      (ddpm; the official call draws the step noise from the global RNG, here from ``step_generator``, the same
      draws for the same seed).
    * Classifier-free guidance: batch ``[cond, uncond]``; uncond has modality 0 and the ControlNet conditioning of
      the mask with tumours removed by the official ``remove_tumors`` rule (:func:`official_remove_tumors`).
    * Decode: ``dynamic_infer(SlidingWindowInferer(roi_size=window, sw_batch_size=1, mode="gaussian",
      overlap=overlap), z -> vae.decode_stage_2_outputs(z / scale_factor), latents)``: the whole latent at once
      when it has no more voxels than the window, else sliding windows with the window clipped to the latent.
    * ``clip(image, 0, 1)``; HU = ``x * 2000 - 1000``; HU = -1000 where the label is 0.

Mask generation (size vector -> label map)
    * ``DiffusionInferer(ddpm).sample(noise, mask_unet, conditioning=size vector (1, 1, 10))``; decode as above
      with the mask VAE and ``mask_scale_factor``; ``softmax`` + ``argmax`` over the 125 channels; channel -> MAISI
      id through ``label_dict_124_to_132.json`` (ids not in the table pass unchanged). The official
      post-processing (``general_mask_generation_post_process``) is left out: maisi deliberately does not run it.

VAE encode for data preparation
    * ``dynamic_infer(SlidingWindowInferer(roi_size=[320, 320, 160], overlap=0.4, mode="gaussian"),
      vae.encode_stage_2_inputs, image)``: a posterior *sample* ``mu + sigma * randn`` (global RNG), unscaled.

Everything runs in fp32 on the CPU: the official fp16 casts (noise latents, conditioning) and CUDA autocast are the
only things left out, so numerical differences measure maisi, not precision.

Tensors are (B, C, X, Y, Z) in RAS order.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import DiffusionInferer, SlidingWindowInferer
from monai.networks.schedulers import DDPMScheduler, RFlowScheduler
from torch import nn

#: the official ``get_body_region_index_from_mask`` marker ids: head/neck, thorax, abdomen, pelvis/lower body
OFFICIAL_REGION_MARKERS: tuple[tuple[int, ...], ...] = (
    (22, 120),
    (28, 29, 30, 31, 32),
    (1, 2, 3, 4, 5, 14),
    (93, 94),
)
#: the official ``anatomy_size_idx`` order of the 10-value size vector of the mask-generation model
OFFICIAL_SIZE_SLOTS: tuple[str, ...] = (
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "colon",
    "lung tumor",
    "pancreatic tumor",
    "hepatic tumor",
    "colon cancer primaries",
    "bone lesion",
)
#: official ``remove_tumors``: tumours / cysts relabelled as their organ (hepatic, pancreatic, colon, kidney cysts)
OFFICIAL_TUMOR_TO_ORGAN: dict[int, int] = {26: 1, 24: 4, 27: 62, 116: 14, 117: 5}
OFFICIAL_LUNG_TUMOR = 23
OFFICIAL_LUNG_LOBES: tuple[int, ...] = (28, 29, 30, 31, 32)
#: official data-preparation encode window and overlap (``diff_model_create_training_data.py``)
OFFICIAL_ENCODE_ROI = (320, 320, 160)
OFFICIAL_ENCODE_OVERLAP = 0.4
#: official file names of the NVIDIA checkpoints (``models/``)
OFFICIAL_FILES = {
    "autoencoder": "autoencoder_v1.pt",
    "diffusion_unet": "diff_unet_3d_{variant}.pt",
    "controlnet": "controlnet_3d_{variant}.pt",
    "mask_autoencoder": "mask_generation_autoencoder.pt",
    "mask_unet": "mask_generation_diffusion_unet.pt",
}


# ----------------------------------------------------------------------------------------------------------------
# official JSON files


def official_json(name: str) -> dict[str, Any]:
    """An official JSON file as shipped with maisi (``config_network_rflow.json``, ``label_dict_124_to_132.json``,
    ...); read straight from the file, not through maisi's loaders."""
    path = importlib_resources.files("maisi.resources") / name
    return json.loads(path.read_text(encoding="utf-8"))


def _resolve(value: Any, root: dict[str, Any]) -> Any:
    """Resolve the MONAI bundle ``"@key"`` references of an official network JSON."""
    if isinstance(value, str) and value.startswith("@") and value[1:] in root:
        return _resolve(root[value[1:]], root)
    if isinstance(value, dict):
        return {k: _resolve(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, root) for v in value]
    return value


def network_definitions(network_json: str) -> dict[str, dict[str, Any]]:
    """Every ``*_def`` / scheduler definition of an official network JSON, references resolved.

    Returns:
        ``{key: {"_target_": "...", **kwargs}}`` for ``autoencoder_def``, ``diffusion_unet_def``, ``controlnet_def``,
        ``mask_generation_autoencoder_def``, ``mask_generation_diffusion_def``, ``noise_scheduler`` and
        ``mask_generation_noise_scheduler``.
    """
    root = official_json(network_json)
    return {k: _resolve(v, root) for k, v in root.items() if isinstance(v, dict) and "_target_" in v}


def instantiate(definition: dict[str, Any], **overrides: Any) -> Any:
    """Build ``definition["_target_"](**kwargs, **overrides)`` (what MONAI's ``ConfigParser`` does for these files)."""
    kwargs = {k: v for k, v in definition.items() if k != "_target_"}
    kwargs.update(overrides)
    module, _, name = definition["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


# ----------------------------------------------------------------------------------------------------------------
# networks


@dataclass
class ReferenceNetworks:
    """MONAI networks of one MAISI model set, with the two latent scale factors."""

    autoencoder: nn.Module
    diffusion_unet: nn.Module
    controlnet: nn.Module
    scale_factor: float
    mask_autoencoder: nn.Module | None = None
    mask_unet: nn.Module | None = None
    mask_scale_factor: float = 1.0

    def eval(self) -> ReferenceNetworks:
        for m in (
            self.autoencoder,
            self.diffusion_unet,
            self.controlnet,
            self.mask_autoencoder,
            self.mask_unet,
        ):
            if m is not None:
                m.eval()
        return self


#: CPU switches: MONAI refuses flash attention without CUDA, and fp16 group norm breaks fp32 convolutions on CPU
CPU_OVERRIDES = {"use_flash_attention": False}
CPU_VAE_OVERRIDES = {"use_flash_attention": False, "norm_float16": False}


def monai_kwargs(component: str, cfg: Any) -> dict[str, Any]:
    """MONAI constructor keywords of one component from a maisi config dataclass (``dataclasses.asdict``), with
    the CPU overrides; the only translation is ``num_channels`` -> ``channels`` of MONAI's ``DiffusionModelUNet``."""
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("scale_factor", None)
    kwargs.pop("variant", None)
    kwargs.pop("adagn_condition_dim", None)  # maisi's fields of the 2026 AdaGN variant, not MONAI keywords
    kwargs.pop("adagn_context_embed_dim", None)
    if "num_head_channels" in kwargs:
        kwargs["num_head_channels"] = list(kwargs["num_head_channels"])
    if component in ("vae", "mask_vae"):
        kwargs.update(CPU_VAE_OVERRIDES)
    else:
        kwargs.update(CPU_OVERRIDES)
    if component == "mask_unet":
        for key in (
            "include_top_region_index_input",
            "include_bottom_region_index_input",
            "include_spacing_input",
        ):
            kwargs.pop(key)
        kwargs["channels"] = kwargs.pop("num_channels")
    return kwargs


def _monai_class(component: str):
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
    from monai.networks.nets import DiffusionModelUNet

    return {
        "vae": AutoencoderKlMaisi,
        "mask_vae": AutoencoderKlMaisi,
        "unet": DiffusionModelUNetMaisi,
        "controlnet": ControlNetMaisi,
        "mask_unet": DiffusionModelUNet,
    }[component]


def perturb_zero_convs(
    controlnet: nn.Module,
    *,
    generator: torch.Generator,
    embedding_std: float = 1.0,
    residual_std: float = 0.3,
) -> None:
    """Give the ControlNet's zero-initialised convolutions (the conditioning embedding's output and the residual
    outputs) random weights, so the label map changes the image clearly, as after training (with MONAI's zeros the
    ControlNet would be a no-op and the comparison would test nothing about the conditioning)."""
    with torch.no_grad():
        for name, p in controlnet.named_parameters():
            if "controlnet_cond_embedding.conv_out" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * embedding_std)
            elif "controlnet_down_blocks" in name or "controlnet_mid_block" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * residual_std)


def randomize_(model: nn.Module, *, generator: torch.Generator, std: float = 0.05) -> nn.Module:
    """Add small seeded noise to every parameter: random weights that do not depend on MONAI's init order, and
    non-trivial norms (MONAI initialises group-norm weights to exactly 1 and biases to 0)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * std)
    return model


def center_image_output_(autoencoder: nn.Module, *, gain: float = 0.2, center: float = 0.5) -> nn.Module:
    """Scale the decoder's last convolution so a random image VAE decodes to ``center +- a few gain`` instead of
    values far outside [0, 1] (clipping would hide most differences)."""
    last = [m for m in autoencoder.decoder.modules() if isinstance(m, nn.Conv3d)][-1]
    with torch.no_grad():
        last.weight.mul_(gain)
        last.bias.fill_(center)
    return autoencoder


def build_reference_networks(
    model_cfg: Any,
    *,
    seed: int = 0,
    scale_factor: float = 0.8,
    mask: bool = True,
    mask_scale_factor: float | None = None,
) -> ReferenceNetworks:
    """MONAI networks built straight from a maisi ``ModelConfig``'s component dataclasses, seeded random weights
    (image VAE output centred in [0, 1], ControlNet output convolutions non-zero).

    Args:
        model_cfg: e.g. ``maisi.config.preset("tiny").model``.
        seed: weight seed (MONAI init under ``torch.manual_seed(seed)``, then seeded perturbation).
        scale_factor: the image latent scale factor saved with the diffusion UNet.
        mask: also build the mask VAE and mask UNet.
        mask_scale_factor: default ``model_cfg.mask_vae.scale_factor``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = {}
        for component in ("vae", "unet", "controlnet") + (("mask_vae", "mask_unet") if mask else ()):
            cls = _monai_class(component)
            nets[component] = randomize_(
                cls(**monai_kwargs(component, getattr(model_cfg, component))), generator=gen
            )
    perturb_zero_convs(nets["controlnet"], generator=gen)
    center_image_output_(nets["vae"])
    return ReferenceNetworks(
        autoencoder=nets["vae"],
        diffusion_unet=nets["unet"],
        controlnet=nets["controlnet"],
        scale_factor=float(scale_factor),
        mask_autoencoder=nets.get("mask_vae"),
        mask_unet=nets.get("mask_unet"),
        mask_scale_factor=float(
            model_cfg.mask_vae.scale_factor if mask_scale_factor is None else mask_scale_factor
        ),
    ).eval()


def save_official_checkpoints(directory: str | Path, nets: ReferenceNetworks, *, variant: str) -> Path:
    """Write the networks as NVIDIA ships them: ``models/autoencoder_v1.pt`` (plain state dict),
    ``models/diff_unet_3d_<variant>.pt`` (``{"unet_state_dict", "scale_factor"}``), ``models/controlnet_3d_<variant>.pt``
    (``{"controlnet_state_dict"}``), ``models/mask_generation_autoencoder.pt`` (plain) and
    ``models/mask_generation_diffusion_unet.pt`` (``{"unet_state_dict", "scale_factor"}``).

    Returns:
        ``directory``.
    """
    models = Path(directory) / "models"
    models.mkdir(parents=True, exist_ok=True)
    names = {k: v.format(variant=variant) for k, v in OFFICIAL_FILES.items()}
    torch.save(nets.autoencoder.state_dict(), models / names["autoencoder"])
    torch.save(
        {
            "unet_state_dict": nets.diffusion_unet.state_dict(),
            "scale_factor": torch.tensor(nets.scale_factor),
        },
        models / names["diffusion_unet"],
    )
    torch.save({"controlnet_state_dict": nets.controlnet.state_dict()}, models / names["controlnet"])
    if nets.mask_autoencoder is not None:
        torch.save(nets.mask_autoencoder.state_dict(), models / names["mask_autoencoder"])
    if nets.mask_unet is not None:
        torch.save(
            {
                "unet_state_dict": nets.mask_unet.state_dict(),
                "scale_factor": torch.tensor(nets.mask_scale_factor),
            },
            models / names["mask_unet"],
        )
    return Path(directory)


# ----------------------------------------------------------------------------------------------------------------
# schedulers


def official_scheduler(network_json: str, key: str = "noise_scheduler", **overrides: Any):
    """The scheduler an official network JSON defines (``RFlowScheduler`` or ``DDPMScheduler``); ``overrides``
    change constructor arguments (e.g. ``num_train_timesteps`` for a shortened DDPM chain in fast tests)."""
    return instantiate(network_definitions(network_json)[key], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# conditioning


def binarize_labels(label: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``(B, 1, X, Y, Z)`` integer ids -> ``(B, bits, X, Y, Z)`` float, channel ``k`` = 1 where bit ``k`` is set."""
    ids = label.long()[:, 0]
    return torch.stack([torch.bitwise_and(ids, 1 << k) != 0 for k in range(bits)], dim=1).float()


def official_body_regions(label: np.ndarray) -> tuple[list[int], list[int]]:
    """Top and bottom body-region one-hots (length 4) by the official rule: the first and last region whose marker
    ids (:data:`OFFICIAL_REGION_MARKERS`) occur in the map. Raises ``ValueError`` when none occurs."""
    present = set(np.unique(label).tolist())
    hits = [i for i, markers in enumerate(OFFICIAL_REGION_MARKERS) if present.intersection(markers)]
    if not hits:
        raise ValueError("no body-region marker in the label map")
    eye = np.eye(len(OFFICIAL_REGION_MARKERS), dtype=int)
    return eye[hits[0]].tolist(), eye[hits[-1]].tolist()


def official_remove_tumors(label: torch.Tensor) -> torch.Tensor:
    """The official ``remove_tumors`` without pseudo labels, for the unconditional ControlNet input of guidance.

    Fixed relabelling (:data:`OFFICIAL_TUMOR_TO_ORGAN`); lung tumour voxels take the most frequent lung lobe in their
    26-neighbourhood ring (3x3x3 dilation minus the tumour; ties -> smallest id; no lobe in the ring -> the most
    frequent lobe of the volume); bone lesions (128) are left as they are.

    Args:
        label: ``(X, Y, Z)`` integer ids.
    """
    out = label.clone()
    for tumor, organ in OFFICIAL_TUMOR_TO_ORGAN.items():
        out[label == tumor] = organ
    tumor = out == OFFICIAL_LUNG_TUMOR
    if tumor.any():
        grown = torch.nn.functional.max_pool3d(tumor[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
        lobes = torch.tensor(OFFICIAL_LUNG_LOBES, dtype=out.dtype)
        ring = grown & ~tumor & torch.isin(out, lobes)
        if ring.any():
            values, counts = torch.unique(out[ring], return_counts=True)
            fill = values[counts == counts.max()].min()
        else:
            counts = torch.stack([(out == lobe).sum() for lobe in lobes])
            fill = lobes[counts.argmax()]
        out[tumor] = fill
    return out


# ----------------------------------------------------------------------------------------------------------------
# decode


class ScaledDecoder(nn.Module):
    """``z -> vae.decode_stage_2_outputs(z / scale_factor)`` (the official ``ReconModel``)."""

    def __init__(self, autoencoder: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.scale_factor = scale_factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode_stage_2_outputs(z / self.scale_factor)


def dynamic_infer(
    model: Any, inputs: torch.Tensor, *, roi_size: Sequence[int], overlap: float
) -> torch.Tensor:
    """The official ``dynamic_infer``: ``model(inputs)`` when one channel of ``inputs`` has no more voxels than the
    window, else MONAI's Gaussian sliding window (``sw_batch_size=1``) with the window clipped to the input."""
    spatial = inputs.shape[2:]
    if math.prod(spatial) <= math.prod(roi_size):
        return model(inputs)
    inferer = SlidingWindowInferer(
        roi_size=[min(int(r), int(s)) for r, s in zip(roi_size, spatial)],
        sw_batch_size=1,
        overlap=overlap,
        mode="gaussian",
        sw_device=inputs.device,
        device=torch.device("cpu"),
        progress=False,
    )
    return inferer(inputs, model)


@torch.no_grad()
def decode(
    autoencoder: nn.Module,
    latents: torch.Tensor,
    scale_factor: float,
    *,
    window: Sequence[int],
    overlap: float,
) -> torch.Tensor:
    """Official decode of scaled latents ``(B, C, x, y, z)`` -> VAE output ``(B, C_out, 4x, 4y, 4z)`` (unclipped)."""
    return dynamic_infer(ScaledDecoder(autoencoder, scale_factor), latents, roi_size=window, overlap=overlap)


# ----------------------------------------------------------------------------------------------------------------
# image from mask


@dataclass
class ReferenceImage:
    """What the official image-from-mask loop produces.

    Attributes:
        latent: ``(1, C, x, y, z)`` denoised latent (scaled).
        decoded: ``(X, Y, Z)`` VAE output before clipping.
        unit: ``(X, Y, Z)`` image in [0, 1], 0 outside the body (label 0).
        hu: ``(X, Y, Z)`` float32 HU as the official script writes it: -1000 outside the body.
        top_region, bottom_region: the region one-hots given to a ``ddpm-ct`` UNet (None otherwise).
    """

    latent: torch.Tensor
    decoded: torch.Tensor
    unit: torch.Tensor
    hu: torch.Tensor
    top_region: list[int] | None = None
    bottom_region: list[int] | None = None


def _set_timesteps(scheduler: Any, num_inference_steps: int, latents: torch.Tensor) -> None:
    if isinstance(scheduler, RFlowScheduler):
        scheduler.set_timesteps(
            num_inference_steps=num_inference_steps,
            input_img_size_numel=torch.prod(torch.tensor(latents.shape[-3:])),
        )
    else:
        scheduler.set_timesteps(num_inference_steps=num_inference_steps)


def _scheduler_step(scheduler: Any, out: torch.Tensor, t, next_t, x: torch.Tensor, generator) -> torch.Tensor:
    if isinstance(scheduler, RFlowScheduler):
        return scheduler.step(out, t, x, next_t)[0]
    return scheduler.step(out, t, x, generator=generator)[0]


@torch.no_grad()
def reference_image(
    nets: ReferenceNetworks,
    scheduler: Any,
    label: np.ndarray,
    spacing: Sequence[float],
    noise: torch.Tensor,
    *,
    num_inference_steps: int,
    modality: int = 1,
    decode_window: Sequence[int] = (48, 48, 48),
    decode_overlap: float = 0.6666,
    step_generator: torch.Generator | None = None,
    guidance_scale: float = 0.0,
) -> ReferenceImage:
    """One image from one label map, the official way (see the module docstring).

    Args:
        label: ``(X, Y, Z)`` MAISI ids.
        spacing: voxel size, mm.
        noise: initial latent ``(1, C, X/4, Y/4, Z/4)``.
        num_inference_steps: rflow: Euler steps; ddpm: ``set_timesteps`` count (official: all training steps).
        modality: class id (CT = 1).
        decode_window: sliding-window size in latent voxels; ``decode_overlap``: its overlap.
        step_generator: the DDPM step noise generator (the official call uses the global RNG).
        guidance_scale: classifier-free guidance scale (0: off).
    """
    unet, controlnet = nets.diffusion_unet, nets.controlnet
    combine_label = torch.as_tensor(np.asarray(label)).long()[None, None]
    control = binarize_labels(combine_label)
    spacing_tensor = torch.tensor([list(map(float, spacing))], dtype=torch.float32) * 1e2
    modality_tensor = modality * torch.ones((1,), dtype=torch.long)
    include_modality = unet.num_class_embeds is not None
    include_regions = bool(unet.include_top_region_index_input)
    top = bottom = None
    region_inputs: dict[str, torch.Tensor] = {}
    if include_regions:
        top, bottom = official_body_regions(np.asarray(label))
        region_inputs = {
            "top_region_index_tensor": torch.tensor([top], dtype=torch.float32) * 1e2,
            "bottom_region_index_tensor": torch.tensor([bottom], dtype=torch.float32) * 1e2,
        }
    uncond_control = None
    if guidance_scale > 0:
        uncond_control = binarize_labels(official_remove_tumors(combine_label[0, 0])[None, None])

    latents = noise.clone().float()
    _set_timesteps(scheduler, num_inference_steps, latents)
    timesteps = scheduler.timesteps
    next_timesteps = torch.cat((timesteps[1:], torch.tensor([0], dtype=timesteps.dtype)))
    for t, next_t in zip(timesteps, next_timesteps):
        t_in = torch.Tensor((t,))
        cn_inputs: dict[str, Any] = {"x": latents, "timesteps": t_in, "controlnet_cond": control}
        unet_inputs: dict[str, Any] = {
            "x": latents,
            "timesteps": t_in,
            "spacing_tensor": spacing_tensor,
            **region_inputs,
        }
        if include_modality:
            cn_inputs["class_labels"] = modality_tensor
            unet_inputs["class_labels"] = modality_tensor
        if guidance_scale > 0:
            cn_inputs = {k: torch.cat([v, v]) for k, v in cn_inputs.items()}
            cn_inputs["controlnet_cond"] = torch.cat([control, uncond_control])
            unet_inputs = {k: torch.cat([v, v]) for k, v in unet_inputs.items()}
            if include_modality:
                uncond_modality = torch.zeros_like(modality_tensor)
                cn_inputs["class_labels"] = torch.cat([modality_tensor, uncond_modality])
                unet_inputs["class_labels"] = torch.cat([modality_tensor, uncond_modality])
        down, mid = controlnet(**cn_inputs)
        out = unet(**unet_inputs, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        if guidance_scale > 0:
            out_cond, out_uncond = out.chunk(2)
            out = out_uncond + guidance_scale * (out_cond - out_uncond)
        latents = _scheduler_step(scheduler, out, t, next_t, latents, step_generator)

    decoded = decode(
        nets.autoencoder, latents, nets.scale_factor, window=decode_window, overlap=decode_overlap
    )
    unit = torch.clip(decoded, 0.0, 1.0)[0, 0]
    hu = unit * (1000.0 - (-1000.0)) + (-1000.0)
    body = combine_label[0, 0] != 0
    hu = torch.where(body, hu, torch.tensor(-1000.0))
    unit = torch.where(body, unit, torch.tensor(0.0))
    return ReferenceImage(
        latent=latents, decoded=decoded[0, 0], unit=unit, hu=hu, top_region=top, bottom_region=bottom
    )


# ----------------------------------------------------------------------------------------------------------------
# image alone (the official ``diff_model_infer``): the UNet without ControlNet or mask


@torch.no_grad()
def reference_image_only(
    nets: ReferenceNetworks,
    scheduler: Any,
    spacing: Sequence[float],
    noise: torch.Tensor,
    *,
    num_inference_steps: int,
    modality: int = 1,
    top_region: Sequence[int] | None = None,
    bottom_region: Sequence[int] | None = None,
    guidance_scale: float = 0.0,
    decode_window: Sequence[int] = (48, 48, 48),
    decode_overlap: float = 0.6666,
    step_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One image from noise alone, the official image-only way; returns the VAE output ``(X, Y, Z)`` unclipped.

    Guidance as in ``diff_model_infer``: every input batched twice, the second half with class label 0 (the
    ``unknown`` modality), ``uncond + s * (cond - uncond)``.
    """
    unet = nets.diffusion_unet
    inputs: dict[str, torch.Tensor] = {"spacing_tensor": torch.tensor([list(map(float, spacing))]) * 1e2}
    if unet.include_top_region_index_input:
        inputs["top_region_index_tensor"] = torch.tensor([list(map(float, top_region))]) * 1e2
        inputs["bottom_region_index_tensor"] = torch.tensor([list(map(float, bottom_region))]) * 1e2
    modality_tensor = modality * torch.ones((1,), dtype=torch.long)
    latents = noise.clone().float()
    _set_timesteps(scheduler, num_inference_steps, latents)
    timesteps = scheduler.timesteps
    next_timesteps = torch.cat((timesteps[1:], torch.tensor([0], dtype=timesteps.dtype)))
    for t, next_t in zip(timesteps, next_timesteps):
        unet_inputs = {"x": latents, "timesteps": torch.Tensor((t,)), **inputs}
        if unet.num_class_embeds is not None:
            unet_inputs["class_labels"] = modality_tensor
        if guidance_scale > 0:
            for k in list(unet_inputs):
                if k != "class_labels":
                    unet_inputs[k] = torch.cat([unet_inputs[k]] * 2)
                else:
                    unet_inputs[k] = torch.cat([unet_inputs[k], torch.zeros_like(modality_tensor)])
            model_t, model_uncond = unet(**unet_inputs).chunk(2)
            out = model_uncond + guidance_scale * (model_t - model_uncond)
        else:
            out = unet(**unet_inputs)
        latents = _scheduler_step(scheduler, out, t, next_t, latents, step_generator)
    decoded = decode(
        nets.autoencoder, latents, nets.scale_factor, window=decode_window, overlap=decode_overlap
    )
    return decoded[0, 0]


# ----------------------------------------------------------------------------------------------------------------
# mask generation


def channel_to_id_table() -> dict[int, int]:
    """Mask-VAE output channel -> MAISI id, from the official ``label_dict_124_to_132.json`` (``name: [ch, id]``)."""
    return {int(ch): int(i) for ch, i in official_json("label_dict_124_to_132.json").values()}


def remap_channels(classes: torch.Tensor) -> torch.Tensor:
    """Channel indices -> MAISI ids, each voxel looked up in the original map (no chaining); unlisted values pass."""
    out = classes.clone()
    for ch, i in channel_to_id_table().items():
        if ch != i:
            out[classes == ch] = i
    return out


@torch.no_grad()
def reference_mask_latent(
    nets: ReferenceNetworks,
    scheduler: Any,
    size_vector: Sequence[float],
    noise: torch.Tensor,
    *,
    num_inference_steps: int,
    step_seed: int,
) -> torch.Tensor:
    """The official mask-latent sampling: MONAI ``DiffusionInferer.sample`` with the size vector as
    cross-attention context ``(1, 1, 10)``; the DDPM step noise from the global RNG seeded with ``step_seed`` (the
    caller's RNG state is restored)."""
    context = torch.tensor(list(map(float, size_vector)), dtype=torch.float32)[None, None]
    scheduler.set_timesteps(num_inference_steps=num_inference_steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(step_seed))
        return DiffusionInferer(scheduler).sample(
            input_noise=noise.clone().float(),
            diffusion_model=nets.mask_unet,
            scheduler=scheduler,
            verbose=False,
            conditioning=context,
        )


def mask_label_from_logits(logits: torch.Tensor) -> np.ndarray:
    """Official mask decision: ``softmax`` + ``argmax`` over the channels of ``(1, 125, X, Y, Z)`` logits, then channel
    -> MAISI id; ``(X, Y, Z)`` int64."""
    classes = torch.argmax(torch.softmax(logits, dim=1), dim=1)[0]
    return remap_channels(classes).numpy()


@torch.no_grad()
def reference_mask_decode(
    nets: ReferenceNetworks, latents: torch.Tensor, *, decode_window: Sequence[int], decode_overlap: float
) -> tuple[torch.Tensor, np.ndarray]:
    """Official mask decode: ``(VAE logits (1, 125, X, Y, Z), MAISI ids (X, Y, Z) int64)``."""
    logits = decode(
        nets.mask_autoencoder, latents, nets.mask_scale_factor, window=decode_window, overlap=decode_overlap
    )
    return logits, mask_label_from_logits(logits)


# ----------------------------------------------------------------------------------------------------------------
# VAE encode (data preparation)


@torch.no_grad()
def reference_encode(
    autoencoder: nn.Module,
    image: torch.Tensor,
    *,
    seed: int,
    roi_size: Sequence[int] = OFFICIAL_ENCODE_ROI,
    overlap: float = OFFICIAL_ENCODE_OVERLAP,
) -> torch.Tensor:
    """Official training-data encode of an image in [0, 1] ``(1, 1, X, Y, Z)``: a posterior sample, UNSCALED;
    the global RNG is seeded with ``seed`` for the sample's noise (the caller's RNG state is restored)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return dynamic_infer(autoencoder.encode_stage_2_inputs, image, roi_size=roi_size, overlap=overlap)


@torch.no_grad()
def reference_posterior_mean(autoencoder: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """``z_mu`` of MONAI's ``AutoencoderKL.encode`` (whole volume, unscaled)."""
    return autoencoder.encode(image)[0]


__all__ = [
    "OFFICIAL_REGION_MARKERS",
    "OFFICIAL_SIZE_SLOTS",
    "ReferenceImage",
    "ReferenceNetworks",
    "binarize_labels",
    "build_reference_networks",
    "decode",
    "dynamic_infer",
    "instantiate",
    "mask_label_from_logits",
    "monai_kwargs",
    "network_definitions",
    "official_body_regions",
    "official_remove_tumors",
    "official_scheduler",
    "reference_encode",
    "reference_image",
    "reference_mask_decode",
    "reference_mask_latent",
    "reference_posterior_mean",
    "save_official_checkpoints",
    "DDPMScheduler",
    "RFlowScheduler",
]
