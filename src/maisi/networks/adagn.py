"""The 2026 mask-generation UNet: MONAI's MAISI UNet with adaptive group norm (AdaGN) on a condition vector.

NVIDIA's v2 mask generator (``scripts.adagn_unet.DiffusionModelUNetMaisiAdaGN`` in NV-Generate-CTMR) keeps
everything of ``DiffusionModelUNetMaisi`` (time and spacing embeddings, cross-attention on the condition at the
attention levels) and adds two things, which this module re-states on MONAI's classes so that the official state
dict loads strictly:

1. ``adagn_context_embed``: ``Linear(condition_dim, E) -> SiLU -> Linear(E, E)`` of the condition vector (the
   19-value anatomy-size + demographics vector); a ``(B, N, D)`` context is averaged over its ``N`` tokens first,
   and no context means the unconditional vector (all ``-1``). Its output is appended to the usual embedding:
   ``emb = [time (+ class) | spacing | condition]``.
2. Every ``DiffusionUNetResnetBlock`` predicts a per-channel ``(scale, shift)`` from that embedding instead of the
   additive time bias: ``time_emb_proj`` becomes ``Linear(emb + E, 2 * out_channels)`` (first half scale, second
   half shift) and the block computes ``conv2(SiLU(GroupNorm(h) * (1 + scale) + shift))`` (FiLM / AdaGN, Dhariwal
   & Nichol 2021, sec. 3.3; Perez et al. 2018), so the condition reaches every resolution, not only the
   attention levels.

State-dict keys are MONAI's plus ``adagn_context_embed.{0,2}.{weight,bias}``; only the shapes of the resnet
blocks' ``time_emb_proj`` differ from the plain MAISI UNet.
"""

from __future__ import annotations

import torch
from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi
from monai.networks.nets.diffusion_model_unet import DiffusionUNetResnetBlock
from monai.utils.type_conversion import convert_to_tensor
from torch import nn

#: value of an unset slot of the condition vector; the unconditional vector is all UNSET
UNSET = -1.0


class AdaGNResnetBlock(DiffusionUNetResnetBlock):
    """A MONAI resnet block whose second group norm is modulated by the embedding: ``time_emb_proj`` maps the
    embedding to ``2 * out_channels`` values, ``(scale, shift)``.

    Made from a built block by :func:`to_adagn_block` (the parameters keep their MONAI names).
    """

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.nonlinearity(self.norm1(x))
        if self.upsample is not None:
            x, h = self.upsample(x), self.upsample(h)
        elif self.downsample is not None:
            x, h = self.downsample(x), self.downsample(h)
        h = self.conv1(h)
        film = self.time_emb_proj(self.nonlinearity(emb))
        film = film.reshape(*film.shape, *([1] * self.spatial_dims))
        scale, shift = film.chunk(2, dim=1)
        # AdaGN: GroupNorm(h) * (1 + scale) + shift (Dhariwal & Nichol 2021, sec. 3.3)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(self.nonlinearity(h))
        return self.skip_connection(x) + h


def to_adagn_block(block: DiffusionUNetResnetBlock, extra_emb_dim: int) -> AdaGNResnetBlock:
    """Turn a built MONAI resnet block into an :class:`AdaGNResnetBlock` in place (and return it).

    The new ``time_emb_proj`` is ``Linear(emb + extra_emb_dim, 2 * out)``, initialised so the block starts from its
    plain form: the shift rows take the old projection on the old embedding columns, the scale does not depend on
    the old embedding (zero), and the new columns keep PyTorch's default initialisation.
    """
    if not isinstance(block, DiffusionUNetResnetBlock):
        raise ValueError(f"block must be a DiffusionUNetResnetBlock, got {type(block).__name__}")
    old = block.time_emb_proj
    out = block.out_channels
    proj = nn.Linear(
        old.in_features + int(extra_emb_dim), 2 * out, device=old.weight.device, dtype=old.weight.dtype
    )
    with torch.no_grad():
        proj.weight[:out, : old.in_features].zero_()
        proj.bias[:out].zero_()
        proj.weight[out:, : old.in_features].copy_(old.weight)
        proj.bias[out:].copy_(old.bias)
    block.time_emb_proj = proj
    block.emb_channels = proj.in_features
    block.__class__ = AdaGNResnetBlock
    return block  # type: ignore[return-value]


class DiffusionModelUNetMaisiAdaGN(DiffusionModelUNetMaisi):
    """``DiffusionModelUNetMaisi`` with AdaGN on a condition vector in every resnet block (see the module doc).

    Args:
        adagn_condition_dim: length ``D`` of the condition vector; default ``cross_attention_dim``.
        adagn_context_embed_dim: width ``E`` of its embedding; default ``4 * num_channels[0]`` (the time
            embedding's width).
        **kwargs: keyword arguments of ``DiffusionModelUNetMaisi`` (the official file: ``with_conditioning``,
            ``cross_attention_dim = D``, ``include_spacing_input``, ...).

    Inputs are those of ``DiffusionModelUNetMaisi.forward``; ``context`` is the condition, ``(B, N, D)`` (as
    cross-attention needs it) or ``(B, D)``.
    """

    def __init__(
        self,
        *,
        adagn_condition_dim: int | None = None,
        adagn_context_embed_dim: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if adagn_condition_dim is None:
            if kwargs.get("cross_attention_dim") is None:
                raise ValueError("adagn_condition_dim is required when cross_attention_dim is not set")
            adagn_condition_dim = int(kwargs["cross_attention_dim"])
        if adagn_context_embed_dim is None:
            adagn_context_embed_dim = 4 * int(self.block_out_channels[0])
        if adagn_condition_dim < 1 or adagn_context_embed_dim < 1:
            raise ValueError(
                "adagn_condition_dim and adagn_context_embed_dim must be >= 1, got "
                f"{adagn_condition_dim} and {adagn_context_embed_dim}"
            )
        self.adagn_condition_dim = int(adagn_condition_dim)
        self.adagn_context_embed_dim = int(adagn_context_embed_dim)
        self.adagn_context_embed = nn.Sequential(
            nn.Linear(self.adagn_condition_dim, self.adagn_context_embed_dim),
            nn.SiLU(),
            nn.Linear(self.adagn_context_embed_dim, self.adagn_context_embed_dim),
        )
        for module in list(self.modules()):
            if isinstance(module, DiffusionUNetResnetBlock):
                to_adagn_block(module, self.adagn_context_embed_dim)

    def condition_embedding(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """``(B, E)`` embedding of the condition: ``context`` ``(B, N, D)`` averaged over ``N``, or ``(B, D)``;
        ``None`` is the unconditional vector (all ``-1``)."""
        if context is None:
            cond = x.new_full((x.shape[0], self.adagn_condition_dim), UNSET)
        elif context.ndim == 3:
            cond = context.mean(dim=1)
        elif context.ndim == 2:
            cond = context
        else:
            raise ValueError(f"context must be (B, D) or (B, N, D), got shape {tuple(context.shape)}")
        if cond.shape[-1] != self.adagn_condition_dim:
            raise ValueError(
                f"context has {cond.shape[-1]} values per token, the network takes {self.adagn_condition_dim}"
            )
        return self.adagn_context_embed(cond.to(device=x.device, dtype=x.dtype))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        down_block_additional_residuals: tuple[torch.Tensor] | None = None,
        mid_block_additional_residual: torch.Tensor | None = None,
        top_region_index_tensor: torch.Tensor | None = None,
        bottom_region_index_tensor: torch.Tensor | None = None,
        spacing_tensor: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Model output ``(B, out_channels, *spatial)`` for ``x`` ``(B, in_channels, *spatial)``; arguments as
        ``DiffusionModelUNetMaisi.forward``."""
        emb = self._get_time_and_class_embedding(x, timesteps, class_labels)
        emb = self._get_input_embeddings(
            emb, top_region_index_tensor, bottom_region_index_tensor, spacing_tensor
        )
        emb = torch.cat((emb, self.condition_embedding(x, context)), dim=1)
        h = self.conv_in(x)
        h, skips = self._apply_down_blocks(h, emb, context, down_block_additional_residuals)
        h = self.middle_block(h, emb, context)
        if mid_block_additional_residual is not None:
            h = h + mid_block_additional_residual
        h = self._apply_up_blocks(h, emb, context, skips)
        return convert_to_tensor(self.out(h))  # a plain tensor, as MONAI's forward returns
