"""Latent diffusion training on the cached latents of ``maisi encode``: rectified flow (velocity target) or DDPM
(epsilon target) from ``model.scheduler``.

Conditioning follows the official MAISI scripts: spacing in mm * 100, the modality class (``modality_mapping.json``,
CT = 1; dropped to 0 = unknown with probability ``train.modality_dropout`` so classifier-free guidance has an
unconditional model), and for body-region models the top/bottom region one-hots * 100.

The latent scale factor is ``1 / std`` over posterior samples of (up to :data:`SCALE_FACTOR_CASES`) training
latents when training from scratch; when ``train.init_from`` brings a trained UNet its model set's factor is kept
(the UNet was trained with it). It is saved in the model set's VAE config (``vae.scale_factor``), its one home.
The UNet's extras declare the modality ids it was trained on (``modalities``: the training cases' and, when
fine-tuned, those its initial model set declared), which ``maisi generate`` holds requests to.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from maisi.conditioning import INPUT_SCALE
from maisi.diffusion import diffusion_loss, make_denoiser, randn, sample, scheduler_from_config
from maisi.errors import DataError
from maisi.networks import build
from maisi.training.datasets import PREVIEW_STREAM, SETUP_STREAM, VAL_STREAM, Case, sample_generator
from maisi.training.tasks.base import (
    SavedComponent,
    Task,
    estimate_scale_factor,
    load_init_model_set,
    sample_posterior,
    with_scale_factor,
)

#: latents used to estimate the scale factor
SCALE_FACTOR_CASES = 256
#: (noise, time) draws per validation case
VAL_DRAWS = 4
#: sampling steps of the TensorBoard preview
PREVIEW_STEPS = 20


class DiffusionTask(Task):
    """Train the latent diffusion UNet (``model.unet``) with ``model.scheduler``."""

    name = "diffusion"
    data_kind = "latents"
    primary = "unet"
    #: which VAE config holds the scale factor of these latents
    codec_component = "vae"

    def build(self) -> None:
        self.scheduler = scheduler_from_config(self.scheduler_config())
        ms = load_init_model_set(self.cfg, components=self.init_components())
        self.init_set = ms
        trained_primary = ms is not None and self.primary in ms
        if ms is not None:  # the loaded networks' configs (their weights need them), then the network
            self.model_cfg = _merge_configs(self.model_cfg, ms.config, ms.components)
        net = build(self.primary, self.model_cfg)
        if trained_primary:
            net.load_state_dict(ms[self.primary].state_dict())
        self.models[self.primary] = net.to(self.device).train()
        self.build_frozen(ms)
        if trained_primary:  # keep the factor the loaded network was trained with (its one home: the VAE config)
            self.scale_factor = float(getattr(ms.config, self.codec_component).scale_factor)
        else:
            self.scale_factor = self.estimate_scale()
        self.model_cfg = with_scale_factor(self.model_cfg, self.codec_component, self.scale_factor)

    def scheduler_config(self):
        return self.model_cfg.scheduler

    def init_components(self) -> list[str]:
        return ["vae", "unet"]

    def build_frozen(self, ms) -> None:
        """The VAE (for previews and the model set) when the init model set has one."""
        if ms is not None and "vae" in ms:
            self.models["vae"] = ms["vae"].to(self.device).eval().requires_grad_(False)

    def estimate_scale(self) -> float:
        gen = sample_generator(self.cfg.train.seed, SETUP_STREAM, 0)
        cases = self.train_cases[:SCALE_FACTOR_CASES]
        return estimate_scale_factor([self.posterior(c) for c in cases], generator=gen)

    def posterior(self, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        """Unscaled latent posterior ``(mean, logvar)``, ``(C, x, y, z)``."""
        return self.store.latent(case)

    def state_dict(self):
        return {"scale_factor": self.scale_factor}

    def load_state_dict(self, state):
        if "scale_factor" in state:
            self.scale_factor = float(state["scale_factor"])
            self.model_cfg = with_scale_factor(self.model_cfg, self.codec_component, self.scale_factor)

    def bucket_key(self, case: Case):
        """The latent's spatial shape (from the sidecar when it records it, else from the file)."""
        if self.cfg.train.latent_patch is not None:
            return tuple(int(s) for s in self.cfg.train.latent_patch)
        return case.shape or tuple(self.posterior(case)[0].shape[1:])

    # ---------------------------------------------------------------- batches

    def make_batch(self, cases, generators):
        items = [self.make_item(c, g, train=True) for c, g in zip(cases, generators)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}

    def make_item(self, case: Case, gen: torch.Generator, *, train: bool) -> dict[str, torch.Tensor]:
        """One sample: clean scaled latent, noise, time, conditioning (all draws from ``gen``)."""
        mean, logvar = self.posterior(case)
        # the resolution-dependent time shift is that of the whole latent, the size this case is generated at: a
        # crop's own size would move training times towards low noise (a 16^3 crop of a 32^3 latent with a 32^3
        # base halves the share of times above 0.9 T) while sampling at 32^3 starts at full noise
        whole_numel = math.prod(mean.shape[1:])
        start = self.latent_crop(tuple(mean.shape[1:]), gen if train else None)
        if start is not None:
            window = (slice(None), *(slice(a, a + s) for a, s in zip(start, self.cfg.train.latent_patch)))
            mean, logvar = mean[window], logvar[window]
        x0 = (sample_posterior(mean, logvar, gen) if train else mean) * self.scale_factor
        noise = randn(x0.shape, generator=gen)
        t = self.scheduler.sample_times(1, generator=gen, spatial_numel=whole_numel)[0]
        item = {"x0": x0, "noise": noise, "t": t}
        if start is not None:
            item["crop_start"] = torch.tensor(start, dtype=torch.long)
        item.update(self.conditions(case, gen if train else None))
        return item

    def latent_crop(self, shape: tuple[int, ...], gen: torch.Generator | None) -> tuple[int, ...] | None:
        """Start of the ``train.latent_patch`` crop of a latent of spatial ``shape``: drawn from ``gen`` when
        given, else central; None when no crop is configured.

        Raises:
            DataError: when the latent is smaller than the crop.
        """
        size = self.cfg.train.latent_patch
        if size is None:
            return None
        if any(int(s) > int(n) for s, n in zip(size, shape)):
            raise DataError(f"train.latent_patch {tuple(size)} is larger than a cached latent {shape}")
        if gen is None:
            return tuple((int(n) - int(s)) // 2 for s, n in zip(size, shape))
        return tuple(
            int(torch.randint(0, int(n) - int(s) + 1, (1,), generator=gen)) for s, n in zip(size, shape)
        )

    def conditions(self, case: Case, gen: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Spacing, modality (dropped with probability ``modality_dropout`` when ``gen`` is given) and region."""
        ucfg = self.model_cfg.unet
        out: dict[str, torch.Tensor] = {}
        if ucfg.include_spacing_input:
            out["spacing"] = torch.tensor(case.spacing, dtype=torch.float32) * INPUT_SCALE
        if ucfg.num_class_embeds is not None:
            modality = case.modality_id
            if gen is not None and float(torch.rand((), generator=gen)) < self.cfg.train.modality_dropout:
                modality = 0
            out["modality"] = torch.tensor(modality, dtype=torch.long)
        if ucfg.include_top_region_index_input:
            if case.top_region is None or case.bottom_region is None:
                raise DataError(
                    f"{case.name}: this body-region model needs top/bottom region indices in the data"
                )
            out["top_region"] = torch.tensor(case.top_region, dtype=torch.float32) * INPUT_SCALE
            out["bottom_region"] = torch.tensor(case.bottom_region, dtype=torch.float32) * INPUT_SCALE
        return out

    # ---------------------------------------------------------------- loss

    def unet_kwargs(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        names = {
            "spacing": "spacing_tensor",
            "modality": "class_labels",
            "top_region": "top_region_index_tensor",
            "bottom_region": "bottom_region_index_tensor",
        }
        return {names[k]: batch[k] for k in names if k in batch}

    def predict(self, nets: Mapping[str, nn.Module], x_t: torch.Tensor, batch) -> torch.Tensor:
        t = self.scheduler.model_time(batch["t"]).to(x_t.device)
        return nets[self.primary](x=x_t, timesteps=t, **self.unet_kwargs(batch))

    def loss(self, group, nets, batch, cache, step):
        x_t, target = self.scheduler.training_pair(batch["x0"], batch["noise"], batch["t"])
        pred = self.predict(nets, x_t, batch)
        loss = diffusion_loss(pred, target)
        return loss, {"diffusion": loss.detach()}

    @torch.no_grad()
    def validate_case(self, nets, case, index):
        losses = []
        for k in range(VAL_DRAWS):
            gen = sample_generator(self.cfg.train.seed, VAL_STREAM, index, k)
            item = self.make_item(case, gen, train=False)
            batch = {key: v[None].to(self.device) for key, v in item.items()}
            losses.append(float(self.validation_loss(nets, batch)))
        return {"val_loss": sum(losses) / len(losses)}

    def validation_loss(self, nets, batch) -> torch.Tensor:
        """The loss of one validation draw (``batch`` holds one item): the diffusion loss."""
        x_t, target = self.scheduler.training_pair(batch["x0"], batch["noise"], batch["t"])
        return diffusion_loss(self.predict(nets, x_t, batch), target)

    # ---------------------------------------------------------------- previews and saving

    @torch.no_grad()
    def previews(self, nets, batch):
        x0 = batch["x0"][:1].to(self.device)
        gen = sample_generator(self.cfg.train.seed, PREVIEW_STREAM, 0)
        x_T = randn(x0.shape, generator=gen).to(self.device)
        cond = {k: v[:1].to(self.device) for k, v in self.unet_kwargs(batch).items()}
        denoiser = make_denoiser(
            nets[self.primary],
            spacing=cond.get("spacing_tensor"),
            modality=cond.get("class_labels"),
            top_region=cond.get("top_region_index_tensor"),
            bottom_region=cond.get("bottom_region_index_tensor"),
        )
        steps = min(PREVIEW_STEPS, self.scheduler.num_train_timesteps)
        z = sample(denoiser, self.scheduler, x_T, num_steps=steps, generator=gen, progress=False)
        if "vae" not in self.models:
            return {"latent/input": x0[0, 0], "latent/sample": z[0, 0]}
        from maisi.latents import LatentCodec

        codec = LatentCodec.from_config(
            self.cfg, vae=self.models["vae"], scale_factor=self.scale_factor, device=self.device
        )
        return {
            "image/input": codec.decode(x0)[0, 0].clamp(0, 1),
            "image/sample": codec.decode(z)[0, 0].clamp(0, 1),
        }

    def trained_modalities(self) -> list[int]:
        """The modality ids the saved UNet was trained on: the training cases' and the initial model set's."""
        ids = {int(c.modality_id) for c in self.train_cases}
        if self.init_set is not None and self.primary in self.init_set:
            declared = self.init_set.components[self.primary].extra.get("modalities", ())
            ids |= {int(m) for m in declared}
        return sorted(ids - {0})

    def saved_components(self, nets):
        extra = {"modalities": self.trained_modalities()}
        out = {self.primary: SavedComponent(nets[self.primary], self.model_cfg.unet, extra)}
        if "vae" in self.models:
            out["vae"] = SavedComponent(self.models["vae"], self.model_cfg.vae)
        return out


def _merge_configs(base, loaded, components):
    """``base`` with the configs of the components actually loaded from a model set (their weights need them)."""
    from dataclasses import replace

    return replace(base, **{name: getattr(loaded, name) for name in components})


__all__ = ["DiffusionTask"]
