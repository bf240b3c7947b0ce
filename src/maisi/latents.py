"""The latent codec: the image VAE, its latent scale factor, and tiled encode/decode in bounded memory.

Latents handed to (and returned by) diffusion are *scaled*: ``latent = z * scale_factor`` where ``z`` is the VAE's
latent. :class:`LatentCodec` is the only place that multiplies or divides by the scale factor.

Tiling works on the latent grid. A volume is covered by windows (MONAI's dense sliding-window plan: step
``int(window * (1 - overlap))``, last window flush with the far edge); each window is run through the VAE alone,
and the results are blended with MONAI's Gaussian importance map (``sigma = 0.125 * window``, clamped below at
1e-3) computed once per window shape at latent resolution. Because decoded windows start on multiples of the
downsampling factor ``d``, the image-space weight of a voxel ``v`` is the latent weight at ``v // d`` (exactly what
MONAI's nearest-exact resize of the importance map gives), so the weight sum is kept at latent resolution
(1/d^3 of the image) and each window is normalised as it is added: no full-size weight buffer, no final division
pass, and working memory that depends on the window, not the output size.

Tensors are (B, C, X, Y, Z) in RAS order.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from maisi.errors import DataError

if TYPE_CHECKING:
    from maisi.config import Config

#: MONAI's ``sigma_scale`` for Gaussian blending (official MAISI inference uses MONAI's default).
SIGMA_SCALE = 0.125
#: the official MAISI decode (``config_infer.json``'s ``autoencoder_sliding_window_infer_size`` / ``_overlap``): the
#: codec's default; ``maisi generate`` decodes as its memory plan says instead (:mod:`maisi.memory`)
OFFICIAL_DECODE_WINDOW = (48, 48, 48)
OFFICIAL_DECODE_OVERLAP = 0.6666

Window = tuple[int, ...]


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices of the windows covering one axis, as MONAI's ``dense_patch_slices`` places them.

    The window is clipped to ``size``; the step is ``int(window * (1 - overlap))`` (at least 1) and the last
    window ends at ``size``.
    """
    window = min(window, size)
    if window == size:
        return [0]
    step = max(int(window * (1 - overlap)), 1)
    starts = list(range(0, size - window, step))  # windows ending before the far edge
    return starts + [size - window]


def tile_plan(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """Windows covering a grid of ``shape``, in MONAI's order (first axis outermost).

    Args:
        shape: spatial size of the grid (latent voxels).
        window: window size per axis (clipped to ``shape``).
        overlap: fraction of a window shared with its neighbour, in [0, 1).

    Returns:
        One tuple of slices (one per axis) per window.
    """
    clipped = [min(w, s) for w, s in zip(window, shape)]
    per_axis = [window_starts(s, w, overlap) for s, w in zip(shape, clipped)]
    return [
        tuple(slice(a, a + w) for a, w in zip(starts, clipped)) for starts in itertools.product(*per_axis)
    ]


def gaussian_weight(window: Sequence[int], *, device: torch.device | str = "cpu") -> torch.Tensor:
    """MONAI's Gaussian importance map for one window (float32, shape ``window``), ``sigma = 0.125 * window``."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(
        tuple(int(w) for w in window),
        mode="gaussian",
        sigma_scale=SIGMA_SCALE,
        device=device,
        dtype=torch.float32,
    )


class LatentCodec:
    """Owns the VAE and its latent scale factor; tiled encode/decode with Gaussian blending.

    Args:
        vae: a MONAI ``AutoencoderKlMaisi`` (or any module with ``encode(x) -> (mu, sigma)`` and ``decode(z)``);
            it is put in eval mode and moved to ``device``.
        scale_factor: latent normalisation; diffusion sees ``z * scale_factor``.
        decode_window: decode window in LATENT voxels (official MAISI: 48^3).
        decode_overlap: overlap of neighbouring decode windows (official MAISI: 0.6666; 0.25 decodes ~4x fewer
            windows of a large volume at a small cost in seam accuracy).
        encode_window: encode window in IMAGE voxels, a multiple of the downsampling factor.
        encode_overlap: overlap of neighbouring encode windows.
        device: where the VAE runs (the sliding-window device).
        output_device: where decoded images and encoded latents are assembled (official MAISI: CPU).
        dtype: compute dtype of the VAE; float16 (CUDA) / bfloat16 run the VAE under autocast with its output layer
            in float32 (a bf16 output would quantise the image in ~7.8 HU steps), results stay float32.
        downsample: image/latent size ratio per axis; by default ``2 ** (number of downsampling blocks)``.
        progress: show a tqdm bar over windows.
    """

    def __init__(
        self,
        *,
        vae: nn.Module,
        scale_factor: float,
        decode_window: Sequence[int] = OFFICIAL_DECODE_WINDOW,
        decode_overlap: float = OFFICIAL_DECODE_OVERLAP,
        encode_window: Sequence[int] = (64, 64, 64),
        encode_overlap: float = 0.25,
        device: torch.device | str = "cpu",
        output_device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        downsample: int | None = None,
        progress: bool = False,
    ) -> None:
        scale_factor = float(scale_factor)
        if not (math.isfinite(scale_factor) and scale_factor > 0):
            raise ValueError(f"scale_factor must be a positive finite number, got {scale_factor}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
        self.device = torch.device(device)
        self.output_device = torch.device(output_device)
        self.vae = vae.to(self.device).eval()
        self.scale_factor = scale_factor
        self.dtype = dtype
        self.progress = progress
        self.downsample = int(downsample) if downsample is not None else _vae_downsample(vae)
        if self.downsample < 1:
            raise ValueError(f"downsample must be >= 1, got {self.downsample}")
        self.decode_window = _check_window(decode_window, "decode_window")
        self.encode_window = _check_window(encode_window, "encode_window")
        if any(w % self.downsample for w in self.encode_window):
            raise ValueError(
                f"encode_window {self.encode_window} must be a multiple of the VAE downsampling {self.downsample}"
            )
        self.decode_overlap = _check_overlap(decode_overlap, "decode_overlap")
        self.encode_overlap = _check_overlap(encode_overlap, "encode_overlap")
        self._weights: dict[tuple[Window, str], torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg: Config, *, vae: nn.Module, component: str = "vae", **options) -> LatentCodec:
        """Codec for a :class:`maisi.config.Config`: scale factor and downsampling from ``cfg.model.<component>``
        (``vae`` or ``mask_vae``), windows and overlaps from ``cfg.data`` (encode) and ``cfg.generate`` (decode,
        where given; else the codec's defaults); ``options`` override."""
        vae_cfg = getattr(cfg.model, component)
        kwargs = dict(
            scale_factor=vae_cfg.scale_factor,
            downsample=vae_cfg.downsample,
            encode_window=cfg.data.encode_window,
            encode_overlap=cfg.data.encode_overlap,
        )
        for key in ("decode_window", "decode_overlap"):
            if getattr(cfg.generate, key) is not None:
                kwargs[key] = getattr(cfg.generate, key)
        kwargs.update(options)
        return cls(vae=vae, **kwargs)

    @classmethod
    def from_model_set(cls, model_set: Any, *, component: str = "vae", **options) -> LatentCodec:
        """Codec of a loaded model set's ``component`` (``vae`` or ``mask_vae``): its network, its scale factor and
        downsampling from the set's config (the official scale factors were translated into it at load);
        ``options`` (windows, overlaps, device, dtype) as in the constructor."""
        vae_cfg = getattr(model_set.config, component)
        return cls(
            vae=model_set[component],
            scale_factor=vae_cfg.scale_factor,
            downsample=vae_cfg.downsample,
            **options,
        )

    @property
    def latent_channels(self) -> int:
        return int(self.vae.latent_channels)

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial latent size for an image of spatial size ``image_shape`` (each a multiple of ``downsample``)."""
        bad = [s for s in image_shape if int(s) % self.downsample]
        if bad:
            raise DataError(
                f"image size {tuple(image_shape)} is not a multiple of the VAE downsampling {self.downsample} "
                "on every axis; resample or pad it first"
            )
        return tuple(int(s) // self.downsample for s in image_shape)

    # ------------------------------------------------------------------ encode

    def encode_posterior(
        self, image: torch.Tensor, *, tiled: bool | None = None, overlap: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior of the VAE latent, tiled over the image, unscaled.

        Args:
            image: (B, C_in, X, Y, Z) in VAE input units ([0, 1] for CT), each of X, Y, Z a multiple of
                ``downsample``.
            tiled: force (True) or skip (False) tiling; default tiles when the image has more voxels than one
                encode window.
            overlap: override ``encode_overlap`` for this call.

        Returns:
            ``(mean, logvar)``, each (B, latent_channels, X/d, Y/d, Z/d) float32 on ``output_device``.
        """
        _check_input(image, "image")
        spatial = tuple(image.shape[2:])
        latent_size = self.latent_shape(spatial)
        if tiled is None:
            tiled = math.prod(spatial) > math.prod(self.encode_window)
        if not tiled:
            with self._compute():
                mean, logvar = self._encode_window(image)
            return mean.to(self.output_device), logvar.to(self.output_device)

        d = self.downsample
        window = tuple(w // d for w in self.encode_window)
        overlap = self.encode_overlap if overlap is None else _check_overlap(overlap, "overlap")
        plan = tile_plan(latent_size, window, overlap)
        shape = (image.shape[0], self.latent_channels, *latent_size)
        mean = torch.zeros(shape, dtype=torch.float32, device=self.output_device)
        logvar = torch.zeros_like(mean)
        total = self._weight_sum(latent_size, plan)
        with self._compute():
            for b, window_slices in self._iterate(image.shape[0], plan, "encode"):
                image_slices = tuple(slice(s.start * d, s.stop * d) for s in window_slices)
                mu, lv = self._encode_window(image[(slice(b, b + 1), slice(None), *image_slices)])
                target = (slice(b, b + 1), slice(None), *window_slices)
                w = (self._weight(window_slices) / total[window_slices])[None, None]
                mean[target].addcmul_(mu.to(self.output_device), w)
                logvar[target].addcmul_(lv.to(self.output_device), w)
        return mean, logvar

    def encode(
        self,
        image: torch.Tensor,
        *,
        sample: bool = False,
        generator: torch.Generator | None = None,
        tiled: bool | None = None,
    ) -> torch.Tensor:
        """Scaled latent of an image: ``posterior mean * scale_factor`` (or a posterior sample when ``sample``).

        Args:
            image: (B, C_in, X, Y, Z) in VAE input units.
            sample: draw ``mean + exp(logvar / 2) * noise`` instead of returning the mean.
            generator: source of the noise when ``sample`` (its device is used to draw it).

        Returns:
            (B, latent_channels, X/d, Y/d, Z/d) float32 on ``output_device``.
        """
        mean, logvar = self.encode_posterior(image, tiled=tiled)
        if sample:
            gen_device = generator.device if generator is not None else mean.device
            noise = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise.to(mean.device)
        return mean * self.scale_factor

    # ------------------------------------------------------------------ decode

    def decode(
        self,
        latent: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        tiled: bool | None = None,
        overlap: float | None = None,
    ) -> torch.Tensor:
        """Decode a SCALED latent to an image, window by window, into one preallocated output.

        With the default settings this equals the official MAISI decode (:meth:`decode_reference`, MONAI's
        ``SlidingWindowInferer``) to float rounding.

        Args:
            latent: (B, latent_channels, x, y, z) scaled latent (any device).
            out: optional (B, C_out, d*x, d*y, d*z) floating tensor to write into (its device and dtype are
                used; it is overwritten).
            tiled: force (True) or skip (False) tiling; default follows the official rule: decode whole when the
                latent has no more voxels than one decode window.
            overlap: override ``decode_overlap`` for this call (e.g. 0.25 for fewer windows).

        Returns:
            (B, C_out, d*x, d*y, d*z) image in VAE output units ([0, 1] for CT); ``out`` when given.
        """
        _check_input(latent, "latent")
        d = self.downsample
        latent_size = tuple(int(s) for s in latent.shape[2:])
        if tiled is None:
            tiled = math.prod(latent_size) > math.prod(self.decode_window)
        if not tiled:
            with self._compute():
                image = self._decode_window(latent)
            if out is None:
                return image.to(self.output_device)
            return _check_out(out, image.shape).copy_(image)

        overlap = self.decode_overlap if overlap is None else _check_overlap(overlap, "overlap")
        plan = tile_plan(latent_size, self.decode_window, overlap)
        total = self._weight_sum(latent_size, plan)
        with self._compute():
            for i, (b, window_slices) in enumerate(self._iterate(latent.shape[0], plan, "decode")):
                tile = self._decode_window(latent[(slice(b, b + 1), slice(None), *window_slices)])
                if i == 0:  # the output channel count is known from the first window
                    shape = (latent.shape[0], tile.shape[1], *(s * d for s in latent_size))
                    if out is None:
                        out = torch.zeros(shape, device=self.output_device)
                    else:
                        _check_out(out, shape)
                weight = self._weight(window_slices) / total[window_slices]
                _add_upsampled(out[b : b + 1], tile, weight, window_slices, d)
        return out

    def decode_reference(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode exactly as the official MAISI inference does (for equivalence tests and benchmarks).

        ``SlidingWindowInferer(roi_size=decode_window clipped to the latent, sw_batch_size=1, mode="gaussian",
        overlap=decode_overlap, sw_device=device, device=output_device)`` over ``vae.decode_stage_2_outputs(z /
        scale_factor)``; a latent with no more voxels than the window is decoded whole.

        Returns:
            (B, C_out, d*x, d*y, d*z) on ``output_device``.
        """
        from monai.inferers import SlidingWindowInferer

        _check_input(latent, "latent")
        model = _ScaledDecoder(self.vae, self.scale_factor)
        latent_size = latent.shape[2:]
        with self._compute():
            if math.prod(latent_size) <= math.prod(self.decode_window):
                return model(latent.to(self.device)).float().to(self.output_device)
            inferer = SlidingWindowInferer(
                roi_size=[min(w, s) for w, s in zip(self.decode_window, latent_size)],
                sw_batch_size=1,
                overlap=self.decode_overlap,
                mode="gaussian",
                sw_device=self.device,
                device=self.output_device,
                progress=self.progress,
            )
            return inferer(latent, model).float()

    # ------------------------------------------------------------------ internals

    def _encode_window(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, sigma = self.vae.encode(image.to(self.device, torch.float32))
        # MONAI returns sigma = exp(clamped logvar / 2)
        return mu.float(), 2.0 * torch.log(sigma.float())

    def _decode_window(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent.to(self.device, torch.float32) / self.scale_factor
        return self.vae.decode(z).float()

    def _weight_sum(self, size: Sequence[int], plan: list[tuple[slice, ...]]) -> torch.Tensor:
        """Sum of the Gaussian weights of all windows at each latent voxel (MONAI's count map, at latent size)."""
        total = torch.zeros(tuple(size), dtype=torch.float32, device=self.output_device)
        for window_slices in plan:
            total[window_slices] += self._weight(window_slices)
        return total

    def _weight(self, window_slices: tuple[slice, ...]) -> torch.Tensor:
        shape = tuple(s.stop - s.start for s in window_slices)
        key = (shape, str(self.output_device))
        if key not in self._weights:
            self._weights[key] = gaussian_weight(shape, device=self.output_device)
        return self._weights[key]

    def _iterate(
        self, batch: int, plan: list[tuple[slice, ...]], desc: str
    ) -> Iterator[tuple[int, tuple[slice, ...]]]:
        items = [(b, s) for b in range(batch) for s in plan]
        if self.progress:
            from tqdm.auto import tqdm

            return iter(tqdm(items, desc=desc, unit="window"))
        return iter(items)

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            # no_grad rather than inference_mode: results stay ordinary tensors callers may modify in place
            stack.enter_context(torch.no_grad())
            if self.dtype != torch.float32:
                stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
                stack.enter_context(_output_layer_in_float32(self.vae, self.device))
            yield


@contextlib.contextmanager
def _output_layer_in_float32(vae: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the decoder's output layer (its last group norm and convolution) in float32 outside autocast.

    Under bf16 autocast the decoded image would otherwise come out of a bf16 convolution: 8 significant bits, i.e.
    steps of 2^-8 of the [0, 1] range near its top, ~7.8 HU on the CT scale. The layer has few output channels, so
    float32 costs little.
    """
    blocks = getattr(getattr(vae, "decoder", None), "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        yield
        return
    layer = [blocks[-1]]
    if len(blocks) > 1 and isinstance(blocks[-2], nn.GroupNorm):
        layer.insert(0, blocks[-2])
    kind = device.type if device.type in ("cpu", "cuda") else "cpu"
    before = [m.__dict__.get("forward") for m in layer]
    for m, own in zip(layer, before):
        inner = own if own is not None else type(m).forward.__get__(m)

        def forward(x: torch.Tensor, inner=inner) -> torch.Tensor:
            with torch.autocast(kind, enabled=False):
                return inner(x.float())

        m.forward = forward
    try:
        yield
    finally:
        for m, own in zip(layer, before):
            if own is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = own


class _ScaledDecoder(nn.Module):
    """``z -> vae.decode_stage_2_outputs(z / scale_factor)``, the official MAISI decode model."""

    def __init__(self, vae: nn.Module, scale_factor: float) -> None:
        super().__init__()
        self.vae = vae
        self.scale_factor = scale_factor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode_stage_2_outputs(z / self.scale_factor)


def _vae_downsample(vae: nn.Module) -> int:
    encoder = getattr(vae, "encoder", vae)
    count = sum(1 for m in encoder.modules() if type(m).__name__.endswith("Downsample"))
    if count == 0:
        raise ValueError("cannot infer the VAE downsampling factor (no *Downsample blocks); pass downsample=")
    return 2**count


def _check_window(window: Sequence[int], name: str) -> Window:
    window = tuple(int(w) for w in window)
    if not window or any(w < 1 for w in window):
        raise ValueError(f"{name} must be positive integers, got {window}")
    return window


def _check_overlap(overlap: float, name: str) -> float:
    overlap = float(overlap)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {overlap}")
    return overlap


def _check_input(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a (B, C, *spatial) tensor, got {shape}")


def _check_out(out: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Validate a caller's output buffer and clear it."""
    if tuple(out.shape) != tuple(shape) or not out.is_floating_point():
        raise ValueError(
            f"out must be a floating tensor of shape {tuple(shape)}, got {out.dtype} {tuple(out.shape)}"
        )
    return out.zero_()


def _add_upsampled(
    out: torch.Tensor, tile: torch.Tensor, weight: torch.Tensor, window: tuple[slice, ...], d: int
) -> None:
    """``out[window * d] += tile * weight[v // d]`` in place, without materialising the upsampled weight.

    Args:
        out: (1, C, *image) output of one batch element.
        tile: (1, C, *(d * window size)) decoded window.
        weight: (*window size) normalised latent-resolution weight.
        window: the window's latent slices.
        d: downsampling factor.
    """
    target = out[(slice(None), slice(None), *(slice(s.start * d, s.stop * d) for s in window))]
    # view each image axis as (latent voxel, d): always a view of the strided output, never a copy
    split = [n for s in window for n in (s.stop - s.start, d)]
    target = target.view(1, target.shape[1], *split)
    tile = tile.to(out.device, out.dtype).view(1, tile.shape[1], *split)
    weight = weight.to(out.device, out.dtype).reshape([n if i % 2 == 0 else 1 for i, n in enumerate(split)])
    target.addcmul_(tile, weight[None, None])


__all__ = ["LatentCodec", "gaussian_weight", "tile_plan", "window_starts"]
