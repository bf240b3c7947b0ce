"""Compose the MAISI networks, their conditioning, ControlNet residuals and classifier-free guidance into one
``denoiser(x, t)`` closure for :func:`maisi.diffusion.samplers.sample`.

Classifier-free guidance follows the official MAISI scripts: the conditional and unconditional passes run as one
batch ``[cond, uncond]``; the unconditional pass uses modality class 0 (the "unknown" class of
``modality_mapping.json``) and, for ControlNet, a caller-supplied unconditional control (MAISI: the mask with its
tumours removed); everything else (spacing, body region, control when no unconditional one is given) is shared.
The guided output is ``uncond + s * (cond - uncond)``; ``s = 0`` turns guidance off (one conditional pass).
"""

from __future__ import annotations

from typing import Any

import torch

from .samplers import Denoiser


def make_denoiser(
    unet: torch.nn.Module,
    *,
    controlnet: torch.nn.Module | None = None,
    control: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    spacing: torch.Tensor | None = None,
    modality: int | torch.Tensor | None = None,
    top_region: torch.Tensor | None = None,
    bottom_region: torch.Tensor | None = None,
    context: torch.Tensor | None = None,
    guidance_scale: float = 0.0,
    uncond_modality: int | torch.Tensor | None = 0,
    uncond_control: torch.Tensor | None = None,
    uncond_context: torch.Tensor | None = None,
) -> Denoiser:
    """Return ``denoiser(x, t) -> model_output`` for a MAISI diffusion UNet (and optional ControlNet).

    Only the conditioning that is given (not ``None``) is passed to the networks, so one closure serves the
    ``rflow-ct`` UNet (spacing + modality class) and the ``ddpm-ct`` UNet (spacing + top/bottom body region).
    Conditioning tensors have batch size ``B`` or 1 (then shared by the whole batch).

    Args:
        unet: ``DiffusionModelUNetMaisi``-like: ``unet(x=, timesteps=, [class_labels=, context=, spacing_tensor=,
            top_region_index_tensor=, bottom_region_index_tensor=, down_block_additional_residuals=,
            mid_block_additional_residual=])``.
        controlnet: ``ControlNetMaisi``-like: ``controlnet(x=, timesteps=, controlnet_cond=, conditioning_scale=,
            [class_labels=, context=]) -> (down_residuals, mid_residual)``; requires ``control``.
        control: ControlNet conditioning ``(B, C_ctrl, *image_spatial)`` (MAISI: binarised mask, 8 channels).
        conditioning_scale: multiplier of the ControlNet residuals.
        spacing: ``(B, 3)`` spacing input exactly as the UNet expects it (MAISI: mm * 100).
        modality: class label ``(B,)`` int64 or one int (MAISI: ``modality_mapping.json``; CT = 1).
        top_region: ``(B, 4)`` top body-region one-hot as the UNet expects it (MAISI ddpm-ct: * 100).
        bottom_region: ``(B, 4)`` bottom body-region one-hot, likewise.
        context: cross-attention context ``(B, N, D)`` (mask-generation UNet).
        guidance_scale: classifier-free guidance scale ``s >= 0``; 0 disables it.
        uncond_modality: modality of the unconditional pass (MAISI: 0); ``None`` keeps ``modality``.
        uncond_control: ControlNet conditioning of the unconditional pass; default ``control``.
        uncond_context: context of the unconditional pass; default ``context``.

    Returns:
        The closure; it does not change grad mode or the networks' train/eval state. It builds the conditioning
        of a batch size once (the guided batch's concatenations included) and passes the same tensors at every
        step: change a conditioning tensor in place after this call and the closure may not see it.
    """
    if (controlnet is None) != (control is None):
        raise ValueError("make_denoiser: controlnet and control must be given together")
    if uncond_control is not None and controlnet is None:
        raise ValueError("make_denoiser: uncond_control needs a controlnet")
    if not guidance_scale >= 0:
        raise ValueError(f"make_denoiser: guidance_scale must be >= 0, got {guidance_scale!r}")
    drops_modality = modality is not None and uncond_modality is not None
    if guidance_scale > 0 and not (
        drops_modality or uncond_control is not None or uncond_context is not None
    ):
        raise ValueError(
            "make_denoiser: guidance_scale > 0 but the unconditional pass would equal the conditional one; "
            "give modality (with uncond_modality), uncond_control or uncond_context"
        )
    shared = {
        "spacing_tensor": spacing,
        "top_region_index_tensor": top_region,
        "bottom_region_index_tensor": bottom_region,
    }
    cond = {"class_labels": modality, "controlnet_cond": control, "context": context}
    uncond = {
        "class_labels": (uncond_modality if drops_modality else modality),
        "controlnet_cond": (uncond_control if uncond_control is not None else control),
        "context": (uncond_context if uncond_context is not None else context),
    }

    def forward(x: torch.Tensor, t: torch.Tensor, parts: dict[str, Any]) -> torch.Tensor:
        labels = {k: parts[k] for k in ("class_labels", "context") if parts[k] is not None}
        unet_kwargs = {k: parts[k] for k in shared if parts[k] is not None}
        if controlnet is not None:
            down, mid = controlnet(
                x=x,
                timesteps=t,
                controlnet_cond=parts["controlnet_cond"],
                conditioning_scale=conditioning_scale,
                **labels,
            )
            unet_kwargs["down_block_additional_residuals"] = down
            unet_kwargs["mid_block_additional_residual"] = mid
        return unet(x=x, timesteps=t, **labels, **unet_kwargs)

    # the networks' conditioning of a batch, built once per batch size and device (one kept; inference-mode tensors
    # are kept apart from ordinary ones): every step passes the same tensor objects, so nothing image-sized is
    # copied per step and the ControlNet's embedding memo (maisi.performance.control) matches by identity
    prepared: dict[tuple[int, torch.device, bool], dict[str, Any]] = {}

    def inputs(batch: int, device: torch.device) -> dict[str, Any]:
        key = (batch, device, torch.is_inference_mode_enabled())
        if key in prepared:
            return prepared[key]
        parts = _prepare(batch, device)
        if not any(isinstance(v, torch.Tensor) and v.requires_grad for v in parts.values()):
            prepared.clear()  # (a conditioning with a graph is rebuilt per call: a kept graph would be reused)
            prepared[key] = parts
        return parts

    def _prepare(batch: int, device: torch.device) -> dict[str, Any]:
        common = {k: _batched(v, batch, k, device) for k, v in shared.items()}
        c = {k: _batched(v, batch, k, device) for k, v in cond.items()}
        if guidance_scale == 0:
            return {**common, **c}
        u = {k: _batched(v, batch, k, device) for k, v in uncond.items()}
        both = {k: None if v is None else torch.cat([v, v]) for k, v in common.items()}
        for k in c:
            if c[k] is None:
                both[k] = None
                continue
            both[k] = torch.cat([c[k], u[k]])
            # the concatenation holds both halves: keep views of it instead of the inputs (the ControlNet planes
            # are then held once, not twice); a view is still a batch of ``batch`` (or 1) for later batch sizes
            if c[k] is cond[k] and u[k] is uncond[k] and not both[k].requires_grad:
                cond[k], uncond[k] = both[k][:batch], both[k][batch:]
        return both

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        parts = inputs(x.shape[0], x.device)
        if guidance_scale == 0:
            return forward(x, t, parts)
        out_cond, out_uncond = forward(torch.cat([x, x]), torch.cat([t, t]), parts).chunk(2)
        return out_uncond + guidance_scale * (out_cond - out_uncond)

    return denoise


def _batched(
    v: int | torch.Tensor | None, batch: int, name: str, device: torch.device
) -> torch.Tensor | None:
    """``None`` stays ``None``; an int becomes a ``(batch,)`` int64 label; a leading dim of 1 is expanded."""
    if v is None:
        return None
    if not isinstance(v, torch.Tensor):
        return torch.full((batch,), int(v), dtype=torch.long, device=device)
    v = v.to(device)
    if v.ndim == 0:
        return v.reshape(1).expand(batch)
    if v.shape[0] == batch:
        return v
    if v.shape[0] == 1:
        return v.expand(batch, *v.shape[1:])
    raise ValueError(f"make_denoiser: {name} has batch size {v.shape[0]}, expected {batch} or 1")
