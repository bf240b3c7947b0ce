"""Mask VAE training: label maps in, the 125 mask classes out.

Input: the 8 binary channels of the MAISI ids (:func:`maisi.conditioning.binarize_labels`), random
patches.
Output: logits over the mask classes (softmax; channel -> id by :data:`maisi.labels.MASK_CHANNEL_TO_ID`).
Loss: cross-entropy + soft Dice over the classes present in the batch + ``kl_weight`` x KL. Validation runs whole
label maps through the sliding-window codec and reports the same cross-entropy + Dice (``val_loss``), the voxel
accuracy and the mean Dice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maisi.conditioning import binarize_labels, ids_to_mask_channels, mask_channels_to_ids
from maisi.labels import MASK_CLASSES
from maisi.networks import build
from maisi.training.tasks.base import (
    SampledVAE,
    SavedComponent,
    Task,
    as_tensor_label,
    center_patch,
    kl_divergence,
    latent_noise,
    load_init_model_set,
    random_patch,
)


class MaskVAETask(Task):
    """Train ``model.mask_vae``."""

    name = "mask-vae"
    primary = "mask_vae"

    def build(self) -> None:
        cfg = self.model_cfg.mask_vae
        if cfg.in_channels != 8 or cfg.out_channels != MASK_CLASSES:
            raise ValueError(
                f"model.mask_vae needs in_channels=8 and out_channels={MASK_CLASSES}, got "
                f"{cfg.in_channels} and {cfg.out_channels}"
            )
        net = build("mask_vae", self.model_cfg)
        ms = load_init_model_set(self.cfg, components=["mask_vae"])
        if ms is not None and "mask_vae" in ms:
            net.load_state_dict(ms["mask_vae"].state_dict())
            self.model_cfg = ms.config
        self.models["mask_vae"] = net.to(self.device).train()

    def make_batch(self, cases, generators):
        size = self.cfg.train.patch_size
        patches, noise = [], []
        for case, gen in zip(cases, generators):
            patches.append(random_patch(as_tensor_label(self.store.label(case)), size, gen))
            noise.append(latent_noise(self.model_cfg.mask_vae, size, gen))
        return {"label": torch.stack(patches), "eps": torch.stack(noise)}

    def training_module(self, name):
        return SampledVAE(self.models["mask_vae"])

    def loss(self, group, nets, batch, cache, step):
        label = batch["label"]
        logits, mu, sigma = nets["mask_vae"](binarize_labels(label), batch["eps"])
        rec, parts = segmentation_loss(logits, ids_to_mask_channels(label[:, 0]))
        kl = kl_divergence(mu, sigma)
        parts["kl"] = kl.detach()
        return rec + self.cfg.train.kl_weight * kl, parts

    @torch.no_grad()
    def logits(self, vae, label: torch.Tensor) -> torch.Tensor:
        """Whole-map logits ``(1, 125, X, Y, Z)`` through the tiled codec (posterior mean)."""
        from maisi.latents import LatentCodec

        codec = LatentCodec.from_config(
            self.cfg, vae=vae, component="mask_vae", scale_factor=1.0, device=self.device
        )
        downsample = codec.downsample
        spatial = label.shape[2:]
        padded = [-(-int(s) // downsample) * downsample for s in spatial]
        widths = [w for s, p in zip(reversed(spatial), reversed(padded)) for w in (0, p - int(s))]
        bits = F.pad(binarize_labels(label.to(self.device)), widths)
        out = codec.decode(codec.encode(bits))
        return out[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial))]

    def validate_case(self, nets, case, index):
        label = center_patch(as_tensor_label(self.store.label(case))[None], self.cfg.train.val_patch)
        logits = self.logits(nets["mask_vae"], label)
        target = ids_to_mask_channels(label[:, 0]).to(logits.device)
        loss, parts = segmentation_loss(logits, target)
        accuracy = float((logits.argmax(1) == target).float().mean())
        return {"val_loss": float(loss), "accuracy": accuracy, "dice": 1.0 - float(parts["dice"])}

    @torch.no_grad()
    def previews(self, nets, batch):
        label = batch["label"][:1].to(self.device)
        vae = nets["mask_vae"]
        logits = vae.decode(vae.encode(binarize_labels(label))[0])
        out = {
            "patch/label": label[0, 0].float(),
            "patch/recon": mask_channels_to_ids(logits.argmax(1))[0].float(),
        }
        if self.val_cases:
            whole = as_tensor_label(self.store.label(self.val_cases[0]))[None]
            whole = center_patch(whole, self.cfg.train.val_patch)
            out["val/label"] = whole[0, 0].float()
            out["val/recon"] = mask_channels_to_ids(self.logits(nets["mask_vae"], whole).argmax(1))[0].float()
        return out

    def saved_components(self, nets):
        return {"mask_vae": SavedComponent(nets["mask_vae"], self.model_cfg.mask_vae)}


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy + (1 - soft Dice averaged over the classes present in ``target``), in float32.

    Args:
        logits: ``(B, K, X, Y, Z)``.
        target: class indices ``(B, X, Y, Z)``.
    """
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    present = torch.unique(target)
    p = probs[:, present]
    y = (target.unsqueeze(1) == present.view(1, -1, *([1] * (target.ndim - 1)))).float()
    dims = [0, *range(2, p.ndim)]
    dice = (2 * (p * y).sum(dims) + 1e-5) / (p.sum(dims) + y.sum(dims) + 1e-5)
    dice_loss = 1.0 - dice.mean()
    return ce + dice_loss, {"cross_entropy": ce.detach(), "dice": dice_loss.detach()}


__all__ = ["MaskVAETask", "segmentation_loss"]
