"""ControlNet training: a ControlNet initialised from the trained diffusion UNet (which stays frozen), conditioned
on the label map as 8 binary channels at image resolution (the ControlNet's conditioning embedding downsamples
it to the latent grid), with the region-weighted L1 loss (``train.weighted_loss`` on
``train.weighted_loss_labels``, e.g. tumours x100) and the optional MAISI-v2 region contrastive loss against the
tumour-removed mask.

The UNet (and the VAE, if present) come from ``train.init_from``; so does the latent scale factor the UNet was
trained with.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from maisi.conditioning import binarize_labels, tumor_mask, without_tumors
from maisi.diffusion import diffusion_loss, make_denoiser, randn, region_weight, sample
from maisi.errors import DataError
from maisi.networks import build
from maisi.training.datasets import PREVIEW_STREAM, Case, sample_generator
from maisi.training.tasks.base import (
    SavedComponent,
    as_tensor_label,
    load_init_model_set,
    load_matching,
    with_scale_factor,
)
from maisi.training.tasks.diffusion import PREVIEW_STEPS, DiffusionTask, _merge_configs


class ControlNetTask(DiffusionTask):
    """Train ``model.controlnet`` on top of the frozen UNet of ``train.init_from``."""

    name = "controlnet"
    primary = "controlnet"

    def build(self) -> None:
        from maisi.diffusion import scheduler_from_config

        self.scheduler = scheduler_from_config(self.model_cfg.scheduler)
        ms = load_init_model_set(self.cfg, components=["vae", "unet", "controlnet"], required=["unet"])
        self.model_cfg = _merge_configs(self.model_cfg, ms.config, ms.components)
        unet = ms["unet"].to(self.device).eval().requires_grad_(False)
        self.models["unet"] = unet
        if "vae" in ms:
            self.models["vae"] = ms["vae"].to(self.device).eval().requires_grad_(False)
        net = build("controlnet", self.model_cfg)
        if "controlnet" in ms:
            net.load_state_dict(ms["controlnet"].state_dict())
        elif load_matching(net, unet.state_dict()) == 0:
            raise DataError(f"{self.cfg.train.init_from}: the UNet shares no weights with model.controlnet")
        self.models["controlnet"] = net.to(self.device).train()
        self.scale_factor = float(ms.config.vae.scale_factor)  # the factor the UNet was trained at
        self.model_cfg = with_scale_factor(self.model_cfg, "vae", self.scale_factor)

    def make_item(self, case: Case, gen: torch.Generator, *, train: bool) -> dict[str, torch.Tensor]:
        item = super().make_item(case, gen, train=train)
        if "modality" in item:  # the official ControlNet recipe keeps the modality (no condition dropout)
            item["modality"] = torch.tensor(case.modality_id, dtype=torch.long)
        label = self.store.label(case)
        factor = self.model_cfg.vae.downsample  # the label map is at image resolution
        if "crop_start" in item:  # the label region under the latent crop
            mean_shape = self.posterior(case)[0].shape[1:]
            if tuple(label.shape) != tuple(factor * s for s in mean_shape):
                raise DataError(
                    f"{case.label}: label map shape {tuple(label.shape)} does not match the latent "
                    f"{tuple(mean_shape)} x {factor}"
                )
            start = [factor * int(a) for a in item["crop_start"]]
            size = [factor * int(s) for s in item["x0"].shape[1:]]
            label = label[tuple(slice(a, a + s) for a, s in zip(start, size))]
        expected = tuple(factor * s for s in item["x0"].shape[1:])
        if tuple(label.shape) != expected:
            raise DataError(
                f"{case.label}: label map shape {tuple(label.shape)} does not match the latent "
                f"{tuple(item['x0'].shape[1:])} x {factor} = {expected}"
            )
        item["label"] = as_tensor_label(label)
        if self.cfg.train.use_region_contrastive_loss:
            item["label_free"] = as_tensor_label(without_tumors(label))
        return item

    def predict_controlled(self, nets: Mapping[str, nn.Module], x_t, batch, label) -> torch.Tensor:
        t = self.scheduler.model_time(batch["t"]).to(x_t.device)
        kwargs = self.unet_kwargs(batch)
        labels = (
            {"class_labels": kwargs["class_labels"]} if self.model_cfg.controlnet.num_class_embeds else {}
        )
        down, mid = nets["controlnet"](
            x=x_t, timesteps=t, controlnet_cond=binarize_labels(label), conditioning_scale=1.0, **labels
        )
        return nets["unet"](
            x=x_t,
            timesteps=t,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            **kwargs,
        )

    def objective(self, nets, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        tc = self.cfg.train
        x_t, target = self.scheduler.training_pair(batch["x0"], batch["noise"], batch["t"])
        pred = self.predict_controlled(nets, x_t, batch, batch["label"])
        weight = None
        if tc.weighted_loss != 1.0 and tc.weighted_loss_labels:
            weight = region_weight(
                batch["label"],
                ids=tc.weighted_loss_labels,
                factor=tc.weighted_loss,
                size=tuple(x_t.shape[2:]),
            )
        loss = diffusion_loss(pred, target, weight=weight)
        parts = {"weighted_l1": loss.detach()}
        if tc.use_region_contrastive_loss:
            free = self.predict_controlled(nets, x_t, batch, batch["label_free"])
            roi = F.interpolate(tumor_mask(batch["label"]), size=tuple(x_t.shape[2:]), mode="nearest")
            roi = roi.expand_as(pred)
            diff = (pred.float() - free.float()).abs()
            # MAISI-v2: push the outputs apart inside the tumour (bounded by delta), keep them equal outside
            fg = -(diff * roi).sum() / (roi.sum() + 1e-5)
            delta = tc.region_contrastive_loss_delta
            fg = F.relu(fg + delta) - delta
            bg_mask = 1.0 - roi
            bg = ((free.float() - target.float()).abs() * bg_mask).sum() / (bg_mask.sum() + 1e-5)
            loss = loss + tc.region_contrastive_loss_weight * (fg + bg)
            parts |= {"contrastive_roi": fg.detach(), "contrastive_bg": bg.detach()}
        return loss, parts

    def loss(self, group, nets, batch, cache, step):
        return self.objective(nets, batch)

    @torch.no_grad()
    def validation_loss(self, nets, batch) -> torch.Tensor:
        return self.objective(nets, batch)[0]

    @torch.no_grad()
    def previews(self, nets, batch):
        x0 = batch["x0"][:1].to(self.device)
        label = batch["label"][:1].to(self.device)
        gen = sample_generator(self.cfg.train.seed, PREVIEW_STREAM, 0)
        x_T = randn(x0.shape, generator=gen).to(self.device)
        cond = {k: v[:1].to(self.device) for k, v in self.unet_kwargs(batch).items()}
        denoiser = make_denoiser(
            nets["unet"],
            controlnet=nets["controlnet"],
            control=binarize_labels(label),
            spacing=cond.get("spacing_tensor"),
            modality=cond.get("class_labels"),
            top_region=cond.get("top_region_index_tensor"),
            bottom_region=cond.get("bottom_region_index_tensor"),
        )
        steps = min(PREVIEW_STEPS, self.scheduler.num_train_timesteps)
        z = sample(denoiser, self.scheduler, x_T, num_steps=steps, generator=gen, progress=False)
        out = {"label": label[0, 0].float()}
        if "vae" not in self.models:
            return out | {"latent/sample": z[0, 0]}
        from maisi.latents import LatentCodec

        codec = LatentCodec.from_config(
            self.cfg, vae=self.models["vae"], scale_factor=self.scale_factor, device=self.device
        )
        return out | {"image/sample": codec.decode(z)[0, 0].clamp(0, 1)}

    def saved_components(self, nets):
        out = {
            "controlnet": SavedComponent(nets["controlnet"], self.model_cfg.controlnet),
            "unet": SavedComponent(self.models["unet"], self.model_cfg.unet),
        }
        if "vae" in self.models:
            out["vae"] = SavedComponent(self.models["vae"], self.model_cfg.vae)
        return out


__all__ = ["ControlNetTask"]
