"""Image VAE training: random patches; L1/L2 + KL + optional perceptual loss + patch adversarial loss after a
warm-up (own discriminator optimiser); validation PSNR/SSIM on whole volumes through the sliding-window codec."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from maisi.networks import build
from maisi.training.datasets import Case
from maisi.training.optim import frozen
from maisi.training.tasks.base import (
    Group,
    SampledVAE,
    SavedComponent,
    Task,
    center_patch,
    kl_divergence,
    latent_noise,
    load_init_model_set,
    random_patch,
)

#: torch hub repository folder of MONAI's MedicalNet perceptual network (looked for under perceptual_weights_path)
MEDICALNET_REPO = "warvito_MedicalNet-models_main"
#: the encoder side of MONAI's AutoencoderKL(Maisi), frozen by ``train.freeze_encoder``
ENCODER_PARTS = ("encoder", "quant_conv_mu", "quant_conv_log_sigma")


class VAETask(Task):
    """Train the image autoencoder (``model.vae``) with the discriminator ``model.discriminator``."""

    name = "vae"
    primary = "vae"

    def build(self) -> None:
        tc = self.cfg.train
        vae = build("vae", self.model_cfg)
        ms = load_init_model_set(self.cfg, components=["vae", "discriminator"])
        if ms is not None and "vae" in ms:
            vae.load_state_dict(ms["vae"].state_dict())
            self.model_cfg = ms.config
        if tc.freeze_encoder:
            if ms is None or "vae" not in ms:
                raise ValueError(
                    "train.freeze_encoder needs a trained VAE to keep: set train.init_from (--init-from) to a "
                    "model set holding a vae"
                )
            for name in ENCODER_PARTS:
                getattr(vae, name).requires_grad_(False)
        self.models["vae"] = vae.to(self.device).train()
        self.adversarial = tc.adv_weight > 0
        if self.adversarial:
            from monai.losses import PatchAdversarialLoss

            disc = build("discriminator", self.model_cfg)
            if ms is not None and "discriminator" in ms:
                disc.load_state_dict(ms["discriminator"].state_dict())
            self.models["discriminator"] = disc.to(self.device).train()
            self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.perceptual = _perceptual_loss(tc.perceptual_weight, tc.perceptual_weights_path, self.device)

    def groups(self) -> list[Group]:
        groups = [Group(name="generator", module="vae")]
        if self.adversarial:
            groups.append(
                Group(
                    name="discriminator", module="discriminator", start_step=self.cfg.train.adv_warmup_steps
                )
            )
        return groups

    def make_batch(
        self, cases: Sequence[Case], generators: Sequence[torch.Generator]
    ) -> dict[str, torch.Tensor]:
        size = self.cfg.train.patch_size
        patches, noise = [], []
        for case, gen in zip(cases, generators):
            patches.append(random_patch(torch.from_numpy(self.store.image(case))[None], size, gen))
            noise.append(latent_noise(self.model_cfg.vae, size, gen))
        return {"image": torch.stack(patches), "eps": torch.stack(noise)}

    def training_module(self, name):
        return SampledVAE(self.models["vae"]) if name == "vae" else self.models[name]

    def loss(self, group, nets, batch, cache, step):
        tc = self.cfg.train
        x = batch["image"]
        if group == "generator":
            recon, mu, sigma = nets["vae"](x, batch["eps"])
            recon = recon.float()
            rec = F.l1_loss(recon, x) if tc.recon_loss == "l1" else F.mse_loss(recon, x)
            kl = kl_divergence(mu, sigma)
            loss = rec + tc.kl_weight * kl
            parts = {"recon": rec.detach(), "kl": kl.detach()}
            if self.perceptual is not None:
                p = self.perceptual(recon, x)
                loss = loss + tc.perceptual_weight * p
                parts["perceptual"] = p.detach()
            if self.adversarial and step >= tc.adv_warmup_steps:
                disc = self.models["discriminator"]
                with frozen(disc):  # gradients flow through the discriminator into the VAE only
                    g_adv = self.adv_loss(disc(recon)[-1], target_is_real=True, for_discriminator=False)
                loss = loss + tc.adv_weight * g_adv
                parts["generator_adv"] = g_adv.detach()
            cache["recon"] = recon.detach()
            return loss, parts
        fake = nets["discriminator"](cache["recon"])[-1]
        real = nets["discriminator"](x)[-1]
        d = 0.5 * (
            self.adv_loss(fake, target_is_real=False, for_discriminator=True)
            + self.adv_loss(real, target_is_real=True, for_discriminator=True)
        )
        return tc.adv_weight * d, {"discriminator": d.detach()}

    @torch.no_grad()
    def reconstruct(self, vae: nn.Module, image: torch.Tensor) -> torch.Tensor:
        """Whole-volume reconstruction ``(1, 1, X, Y, Z)`` through the tiled codec (posterior mean)."""
        from maisi.latents import LatentCodec

        codec = LatentCodec.from_config(self.cfg, vae=vae, scale_factor=1.0, device=self.device)
        d = codec.downsample
        spatial = image.shape[2:]
        padded = [-(-int(s) // d) * d for s in spatial]
        widths = [w for s, p in zip(reversed(spatial), reversed(padded)) for w in (0, p - int(s))]
        x = F.pad(image, widths)
        recon = codec.decode(codec.encode(x))
        vae.eval()  # the codec put it in eval mode; evaluation networks stay there
        return recon[(slice(None), slice(None), *(slice(0, int(s)) for s in spatial))]

    def validate_case(self, nets, case, index):
        image = center_patch(torch.from_numpy(self.store.image(case))[None, None], self.cfg.train.val_patch)
        recon = self.reconstruct(nets["vae"], image).clamp(0, 1)
        l1 = float(F.l1_loss(recon, image))
        mse = float(F.mse_loss(recon, image))
        psnr = 10.0 * math.log10(1.0 / max(mse, 1e-12))
        return {
            "val_loss": l1 if self.cfg.train.recon_loss == "l1" else mse,
            "psnr": psnr,
            "ssim": _ssim(recon, image),
        }

    @torch.no_grad()
    def previews(self, nets, batch):
        x = batch["image"][:1].to(self.device)
        recon = nets["vae"].decode(nets["vae"].encode(x)[0])
        out = {"patch/input": x[0, 0], "patch/recon": recon[0, 0].clamp(0, 1)}
        if self.val_cases:
            image = torch.from_numpy(self.store.image(self.val_cases[0]))[None, None]
            image = center_patch(image, self.cfg.train.val_patch)
            out["val/input"] = image[0, 0]
            out["val/recon"] = self.reconstruct(nets["vae"], image)[0, 0].clamp(0, 1)
        return out

    def saved_components(self, nets):
        return {"vae": SavedComponent(nets["vae"], self.model_cfg.vae)}


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=a.ndim - 2, data_range=1.0, win_size=7)
    return float(metric(a.float().cpu(), b.float().cpu()).mean())


def _perceptual_loss(weight: float, path: str | None, device: torch.device) -> nn.Module | None:
    """MONAI's 3D MedicalNet perceptual loss when its torch hub cache is available locally, else None (warned).

    ``train.perceptual_weights_path`` must be a torch hub folder holding ``warvito_MedicalNet-models_main`` and
    its downloaded weights; nothing is fetched from the network.
    """
    if weight <= 0:
        return None
    if not path or not (Path(path) / MEDICALNET_REPO).is_dir():
        where = f"{path}/{MEDICALNET_REPO}" if path else "train.perceptual_weights_path (unset)"
        warnings.warn(
            f"perceptual loss skipped: no local pretrained weights at {where}; training with L1/L2 + KL + adversarial",
            stacklevel=3,
        )
        return None
    from monai.losses import PerceptualLoss

    return (
        PerceptualLoss(
            spatial_dims=3,
            network_type="medicalnet_resnet10_23datasets",
            is_fake_3d=False,
            cache_dir=str(path),
        )
        .to(device)
        .eval()
    )


__all__ = ["VAETask"]
