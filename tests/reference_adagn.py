"""The official v2 mask generator ("rflow-mask", 2026) written by hand on MONAI's classes: the oracle of
``test_adagn_equivalence.py``.

Test support, not part of the package: it imports nothing from maisi's networks, diffusion or generation code. It
re-states, from the published description (NV-Generate-CTMR ``scripts/adagn_unet.py``, ``scripts/sample_mask.py``,
``scripts/sample.py`` and ``skills/infer_mask-only_via_diffusion_model.md``; AdaGN as in Dhariwal & Nichol 2021):

Network
    MONAI ``DiffusionModelUNetMaisi`` plus ``adagn_context_embed = Sequential(Linear(D, E), SiLU, Linear(E, E))`` of
    the condition (a ``(B, N, D)`` context averaged over ``N``; none = all -1), appended to the embedding
    ``[time | spacing | condition]``; every resnet block's ``time_emb_proj`` is ``Linear(emb + E, 2 out)`` giving
    ``(scale, shift)``, and the block computes ``conv2(SiLU(norm2(h) * (1 + scale) + shift)) + skip(x)`` with
    ``h = conv1(SiLU(norm1(x)))`` (up/downsampled in between as in MONAI).

Sampler
    ``RFlowScheduler`` of the network JSON's ``mask_generation_noise_scheduler``, ``set_timesteps(n,
    input_img_size_numel=x*y*z)``; for each time ``t`` (float16 as MONAI keeps it) the UNet on ``[latents,
    latents]`` with ``timesteps = [t, t]``, ``context = [cond, uncond]`` ``(2, 1, 19)`` (uncond all -1) and
    ``spacing_tensor`` = spacing x 1e2; ``out = u + s (c - u)``; ``step(out, t, latents, next_timestep=next or
    None)`` (no next time at the last step). Decode: the mask VAE on ``z / scale_factor`` (whole or Gaussian
    sliding windows), ``softmax`` over the 125 channels, ``argmax``, channel -> MAISI id.

fp32 on the CPU: the official fp16 casts of the condition and spacing and CUDA autocast are left out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock, get_timestep_embedding
from torch import nn

import reference_pipeline as ref

#: the official ``ANATOMY_SIZE_IDX`` order of the 14 anatomy slots, then the demographics
OFFICIAL_V2_SLOTS: tuple[str, ...] = (
    "liver",
    "spleen",
    "stomach",
    "pancreas",
    "colon",
    "left kidney",
    "right kidney",
    "lung",
    "gallbladder",
    "lung tumor",
    "pancreatic tumor",
    "hepatic tumor",
    "colon cancer primaries",
    "bone lesion",
    "age",
    "sex",
    "weight",
    "bmi",
    "height",
)
#: official ``_DEMOG_MAX``; sex M = 1, F = 0
OFFICIAL_DEMOG_MAX = {"age": 120.0, "weight": 200.0, "bmi": 75.0, "height": 200.0}
#: the 2026 network file as shipped with maisi
NETWORK_2026 = "2026/config_network_rflow.json"


def official_condition(
    anatomy: Sequence[Sequence[Any]], demographics: Sequence[Sequence[Any]]
) -> list[float]:
    """The official ``prepare_anatomy_size_condition``: ``[[name, size]]`` and ``[[name, value]]`` -> 19 values."""
    vec = [-1.0] * len(OFFICIAL_V2_SLOTS)
    for name, size in anatomy:
        vec[OFFICIAL_V2_SLOTS.index(name)] = float(size)
    for name, value in demographics:
        i = OFFICIAL_V2_SLOTS.index(name)
        if name == "sex":
            vec[i] = 1.0 if str(value).upper() == "M" else 0.0
        else:
            vec[i] = float(min(1.0, max(0.0, value / OFFICIAL_DEMOG_MAX[name])))
    return vec


# ----------------------------------------------------------------------------------------------------------------
# network


def _film_block_forward(block: DiffusionUNetResnetBlock, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    h = block.nonlinearity(block.norm1(x))
    if block.upsample is not None:
        x = block.upsample(x)
        h = block.upsample(h)
    elif block.downsample is not None:
        x = block.downsample(x)
        h = block.downsample(h)
    h = block.conv1(h)
    gamma_beta = block.time_emb_proj(block.nonlinearity(emb))
    gamma_beta = gamma_beta.view(gamma_beta.shape[0], gamma_beta.shape[1], *([1] * (h.ndim - 2)))
    n = block.out_channels
    gamma, beta = gamma_beta[:, :n], gamma_beta[:, n:]
    h = block.norm2(h)
    h = h + h * gamma + beta
    h = block.conv2(block.nonlinearity(h))
    return block.skip_connection(x) + h


def make_reference_unet(unet_kwargs: dict[str, Any], condition_dim: int, embed_dim: int) -> nn.Module:
    """A MONAI ``DiffusionModelUNetMaisi`` turned into the official AdaGN network (official state-dict keys):
    ``adagn_context_embed`` added, every resnet block's projection widened and its forward replaced."""
    net = DiffusionModelUNetMaisi(**unet_kwargs)
    net.adagn_context_embed = nn.Sequential(
        nn.Linear(condition_dim, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim)
    )
    for block in [m for m in net.modules() if isinstance(m, DiffusionUNetResnetBlock)]:
        old = block.time_emb_proj
        block.time_emb_proj = nn.Linear(old.in_features + embed_dim, 2 * block.out_channels)
        block.forward = (lambda b: lambda x, emb: _film_block_forward(b, x, emb))(block)
    return net


def reference_unet_kwargs(cfg: Any) -> tuple[dict[str, Any], int, int]:
    """MONAI keywords, condition and embedding widths from a maisi ``UNetConfig`` of variant ``adagn``."""
    kwargs = dataclasses.asdict(cfg)
    kwargs.pop("variant")
    d = kwargs.pop("adagn_condition_dim") or kwargs["cross_attention_dim"]
    e = kwargs.pop("adagn_context_embed_dim") or 4 * kwargs["num_channels"][0]
    kwargs["num_head_channels"] = list(kwargs["num_head_channels"])
    kwargs.update(ref.CPU_OVERRIDES)
    return kwargs, int(d), int(e)


def reference_forward(
    net: nn.Module, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, spacing: torch.Tensor
) -> torch.Tensor:
    """The AdaGN UNet's forward, block by block (no class labels, no body-region inputs)."""
    t_emb = get_timestep_embedding(timesteps, net.block_out_channels[0]).to(x.dtype)
    parts = [net.time_embed(t_emb)]
    if net.include_spacing_input:
        parts.append(net.spacing_layer(spacing))
    parts.append(net.adagn_context_embed(context.mean(dim=1)))
    emb = torch.cat(parts, dim=1)
    h = net.conv_in(x)
    skips = [h]
    for block in net.down_blocks:
        h, res = block(hidden_states=h, temb=emb, context=context)
        skips.extend(res)
    h = net.middle_block(hidden_states=h, temb=emb, context=context)
    for block in net.up_blocks:
        n = len(block.resnets)
        h = block(hidden_states=h, res_hidden_states_list=skips[-n:], temb=emb, context=context)
        skips = skips[:-n]
    return net.out(h)


# ----------------------------------------------------------------------------------------------------------------
# sampler


def official_mask_scheduler():
    """``RFlowScheduler`` of the 2026 network JSON's ``mask_generation_noise_scheduler``."""
    return ref.official_scheduler(NETWORK_2026, key="mask_generation_noise_scheduler")


@torch.no_grad()
def reference_mask_latent_v2(
    net: nn.Module,
    condition: Sequence[float],
    noise: torch.Tensor,
    *,
    num_inference_steps: int,
    guidance: float,
    spacing: Sequence[float],
) -> torch.Tensor:
    """The official v2 loop (see the module doc) on ``noise`` ``(1, C, x, y, z)``."""
    scheduler = official_mask_scheduler()
    cond = torch.tensor([float(v) for v in condition], dtype=torch.float32).view(1, 1, -1)
    uncond = torch.full_like(cond, -1.0)
    spacing_tensor = torch.tensor([float(s) for s in spacing], dtype=torch.float32).view(1, 3) * 1e2
    latents = noise.clone().float()
    scheduler.set_timesteps(num_inference_steps=num_inference_steps, input_img_size_numel=noise[0, 0].numel())
    times = scheduler.timesteps
    for i, t in enumerate(times):
        next_t = times[i + 1] if i + 1 < len(times) else None
        t_in = t.reshape(1).float()
        if guidance > 0:
            out = reference_forward(
                net,
                torch.cat([latents, latents]),
                t_in.expand(2),
                torch.cat([cond, uncond]),
                torch.cat([spacing_tensor, spacing_tensor]),
            )
            out_c, out_u = out.chunk(2)
            out = out_u + guidance * (out_c - out_u)
        else:
            out = reference_forward(net, latents, t_in, cond, spacing_tensor)
        latents = scheduler.step(out, t, latents, next_timestep=next_t)[0]
    return latents


@torch.no_grad()
def reference_mask_decode_v2(
    mask_vae: nn.Module, latents: torch.Tensor, scale_factor: float, *, window, overlap
) -> tuple[torch.Tensor, Any]:
    """``(softmax probabilities (1, 125, X, Y, Z), MAISI ids (X, Y, Z))`` of the official v2 decode."""
    logits = ref.decode(mask_vae, latents, scale_factor, window=window, overlap=overlap)
    probabilities = torch.softmax(logits, dim=1)
    classes = torch.argmax(probabilities, dim=1)[0]
    return probabilities, ref.remap_channels(classes).numpy()
