"""Mask-generation diffusion training (the official release ships no code for this): a diffusion UNet over the
latents of the trained mask VAE, conditioned by cross-attention on the 10-value organ/tumour size vector.

Data: label maps (a phantom/prepared folder or datalist). Each map is centre-cropped or zero-padded to the mask
grid (``model.mask_latent_shape`` x the mask VAE's downsampling), encoded once by the frozen mask VAE of
``train.init_from`` (posterior mean and log-variance, kept in memory) and its size vector computed from the same
cropped map (:func:`~maisi.conditioning.size_vector_from_label`: organ volume / reference volume, -1 when
absent). Generation completes the slots a user leaves unspecified from real size vectors, so every slot is always
given (no condition dropout).

Scheduler: ``model.mask_scheduler``. Scale factor: estimated like the image latents' (see
:mod:`maisi.training.tasks.diffusion`) and stored as ``mask_vae.scale_factor``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maisi.conditioning import binarize_labels, mask_channels_to_ids, size_vector_from_label
from maisi.diffusion import make_denoiser, randn, sample
from maisi.errors import ConfigError
from maisi.training.datasets import PREVIEW_STREAM, Case, sample_generator
from maisi.training.tasks.base import SavedComponent
from maisi.training.tasks.diffusion import PREVIEW_STEPS, DiffusionTask


class MaskDiffusionTask(DiffusionTask):
    """Train ``model.mask_unet`` on mask-VAE latents of label maps."""

    name = "mask-diffusion"
    data_kind = "volumes"
    primary = "mask_unet"
    codec_component = "mask_vae"

    def scheduler_config(self):
        return self.model_cfg.mask_scheduler

    def init_components(self) -> list[str]:
        return ["mask_vae", "mask_unet"]

    def build_frozen(self, ms) -> None:
        if ms is None or "mask_vae" not in ms:
            raise ConfigError(
                f"train.init_from: task 'mask-diffusion' needs a model set holding a trained 'mask_vae' "
                f"(the model/ folder of a 'maisi train mask-vae' run), got {self.cfg.train.init_from!r}"
            )
        self.models["mask_vae"] = ms["mask_vae"].to(self.device).eval().requires_grad_(False)
        self.downsample = self.model_cfg.mask_vae.downsample
        self.grid = tuple(self.downsample * int(s) for s in self.model_cfg.mask_latent_shape[1:])
        self._encoded: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def build(self) -> None:
        super().build()
        for case in (
            self.train_cases + self.val_cases
        ):  # encode everything once, before any data worker starts
            self._encode(case)

    def bucket_key(self, case: Case):
        return None

    def _encode(self, case: Case) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if case.name not in self._encoded:
            from maisi.latents import LatentCodec

            label = center_fit(torch.from_numpy(self.store.label(case).astype("int64")), self.grid)
            codec = LatentCodec.from_config(
                self.cfg,
                vae=self.models["mask_vae"],
                scale_factor=1.0,
                component="mask_vae",
                device=self.device,
            )
            mean, logvar = codec.encode_posterior(binarize_labels(label[None, None]))
            size = torch.tensor(size_vector_from_label(label.numpy(), case.spacing), dtype=torch.float32)
            self._encoded[case.name] = (mean[0].cpu(), logvar[0].cpu(), size)
        return self._encoded[case.name]

    def posterior(self, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        mean, logvar, _ = self._encode(case)
        return mean, logvar

    def conditions(self, case: Case, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        return {"context": self._encode(case)[2][None]}

    def unet_kwargs(self, batch):
        return {"context": batch["context"]}

    @torch.no_grad()
    def previews(self, nets, batch):
        x0 = batch["x0"][:1].to(self.device)
        gen = sample_generator(self.cfg.train.seed, PREVIEW_STREAM, 0)
        x_T = randn(x0.shape, generator=gen).to(self.device)
        denoiser = make_denoiser(nets["mask_unet"], context=batch["context"][:1].to(self.device))
        steps = min(PREVIEW_STEPS, self.scheduler.num_train_timesteps)
        z = sample(denoiser, self.scheduler, x_T, num_steps=steps, generator=gen, progress=False)
        from maisi.latents import LatentCodec

        codec = LatentCodec.from_config(
            self.cfg,
            vae=self.models["mask_vae"],
            scale_factor=self.scale_factor,
            component="mask_vae",
            device=self.device,
        )
        return {
            "mask/input": mask_channels_to_ids(codec.decode(x0).argmax(1))[0].float(),
            "mask/sample": mask_channels_to_ids(codec.decode(z).argmax(1))[0].float(),
        }

    def native_spacing(self) -> float | None:
        """The voxel size (mm) of the generated masks: the training maps' spacing when all are isotropic and equal
        (generation resamples from it), else None (generation then assumes the official 1.5 mm)."""
        spacings = {tuple(round(float(s), 6) for s in c.spacing) for c in self.train_cases + self.val_cases}
        if len(spacings) == 1:
            (only,) = spacings
            if len(set(only)) == 1:
                return only[0]
        return None

    def saved_components(self, nets):
        extra: dict[str, float] = {}
        spacing = self.native_spacing()
        if spacing is not None:
            extra["spacing"] = spacing
        return {
            "mask_unet": SavedComponent(nets["mask_unet"], self.model_cfg.mask_unet, extra),
            "mask_vae": SavedComponent(self.models["mask_vae"], self.model_cfg.mask_vae),
        }


def center_fit(label: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Centre-crop or zero-pad an (X, Y, Z) map to ``size``."""
    for axis, target in enumerate(size):
        n = label.shape[axis]
        if n > target:
            start = (n - target) // 2
            label = label.narrow(axis, start, target)
        elif n < target:
            before = (target - n) // 2
            widths = [0, 0] * label.ndim
            pos = 2 * (label.ndim - 1 - axis)
            widths[pos], widths[pos + 1] = before, target - n - before
            label = F.pad(label, widths)
    return label


__all__ = ["MaskDiffusionTask", "center_fit"]
