"""Choosing and building the mask source a request asks for."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from maisi import labels
from maisi.config.schema import GenerateConfig
from maisi.errors import RequestError
from maisi.generation.masks.base import GridSource, MaskSource
from maisi.generation.masks.file import FileMaskSource, LabelReading
from maisi.generation.masks.phantom import PhantomMaskSource
from maisi.generation.request import check_output_size, check_spacing, request_grid

if TYPE_CHECKING:
    from maisi.generation.weights import WeightsInfo


#: the mask sources (``none``: image-only generation)
KINDS = ("file", "database", "model", "phantom", "none")


def choose_source_kind(gen: GenerateConfig, weights: WeightsInfo | None) -> str:
    """The mask source of a request, decided once (by :func:`maisi.generation.plan.plan_generation`).

    ``file`` when a mask is given, ``database`` when a database is given. Otherwise, with NVIDIA's weights, the
    official flow: the mask-generation model when organ sizes or demographics are requested, else retrieval from
    the mask database downloaded with the weights (never phantoms: :func:`check_source` says how to get the
    database when it is missing). With other weights: the mask model when organ sizes are requested and the
    weights include one that follows them, else ``phantom``. A mask model whose weights declare that it does not
    follow the size vector (the demo set's, trained on 40 maps on a CPU: ``mask_unet`` extra ``size_response``)
    gives way to phantom masks, which honour sizes exactly; ``--mask-source model`` still selects it.
    """
    if gen.mask_source != "auto":
        return gen.mask_source
    if gen.mask:
        return "file"
    if gen.mask_database:
        return "database"
    wants_model = any(labels.size_is_set(v) for v in gen.organ_sizes.values()) or bool(gen.demographics)
    if weights is not None and weights.layout == "official":
        return "model" if wants_model else "database"
    if wants_model and weights is not None and weights.has_mask_model and weights.mask_model_follows_sizes:
        return "model"
    return "phantom"


def mask_generator(gen: GenerateConfig, weights: WeightsInfo | None) -> str:
    """``v2`` (the 2026 rflow-mask generator) when the weights hold it, else ``v1``."""
    return "v2" if weights is not None and "mask_unet_v2" in weights.components else "v1"


def check_source(kind: str, gen: GenerateConfig, weights: WeightsInfo | None) -> None:
    """Raise a one-line :class:`RequestError` when the chosen source lacks what it needs, or the request asks
    what the source cannot give (before any loading)."""
    from maisi.generation.request import check_organ_sizes

    if kind not in KINDS:
        raise RequestError(f"unknown mask source {kind!r}; expected auto, {', '.join(KINDS)}")
    ignored = [
        (o, v)
        for o, v, used in (("--mask", gen.mask, "file"), ("--mask-database", gen.mask_database, "database"))
        if v and kind != used
    ]
    if ignored:
        option, value = ignored[0]
        raise RequestError(
            f"{option} {value} is given but the mask source is {kind!r}, which would ignore it; drop one"
        )
    if kind == "file" and not gen.mask:
        raise RequestError("mask_source 'file' needs a mask file (--mask FILE)")
    if kind == "database" and not (gen.mask_database or (weights is not None and weights.mask_database)):
        if weights is not None and weights.layout == "official":
            raise RequestError(
                f"{weights.root}: no mask database beside the official weights (the official default mask source); "
                f"run `maisi download {weights.variant} --dir {weights.root}` without --models-only, or pass "
                "--mask-database DIR, --mask FILE, organ sizes (--organ-size) or --mask-source phantom"
            )
        raise RequestError("mask_source 'database' needs a mask database (--mask-database DIR or index JSON)")
    if kind == "model" and (weights is None or not weights.has_mask_model):
        where = f" ({weights.root} has {sorted(weights.components)})" if weights is not None else ""
        raise RequestError(
            f"mask_source 'model' needs weights with a mask-generation model (mask_vae and mask_unet or "
            f"mask_unet_v2){where}"
        )
    if kind == "model" and mask_generator(gen, weights) == "v2":
        from maisi.generation.masks.conditions_v2 import build_condition_v2

        build_condition_v2(gen.organ_sizes or None, gen.demographics or None)  # the official request checks
        return
    if gen.demographics:
        raise RequestError(
            "demographics need the v2 mask generator (mask_generation_diffusion_unet_v2.pt beside the official "
            f"weights; `maisi download rflow-ct`); mask source {kind!r} cannot follow them"
        )
    check_organ_sizes(gen.organ_sizes)


def make_mask_source(
    kind: str,
    gen: GenerateConfig,
    *,
    model_set: Any = None,
    weights: WeightsInfo | None = None,
    reading: LabelReading = LabelReading(),
    device: str = "cpu",
    progress: bool = False,
    decode: Sequence[int] | None = None,
    overlap: float | None = None,
) -> MaskSource:
    """Build the mask source ``kind`` (checked by :func:`check_source`) for a request.

    Args:
        gen: the request (sizes, spacing, regions, anatomy, organ sizes, mask file or database; ``fit_mask`` fits a
            user mask to ``output_size`` / ``spacing`` instead of its nearest valid grid).
        model_set: loaded weights (needed by the ``model`` source).
        weights: the weights folder (its mask database when the request names none; its mask generator).
        reading: how user label maps (a mask file, a database's masks) are read.
        decode, overlap: the mask VAE's decode window (latent voxels) and overlap (the memory plan's); default
            the mask model's own.
    """
    if kind == "file":
        if not gen.fit_mask:
            return FileMaskSource(gen.mask, reading=reading)
        return FileMaskSource(
            gen.mask,
            size=check_output_size(gen.output_size),
            spacing=check_spacing(gen.spacing),
            reading=reading,
        )
    size, spacing = request_grid(gen)  # an MR request has its own rules
    if kind == "none":
        return GridSource(size=size, spacing=spacing)
    if kind == "database":
        from maisi.generation.masks.database import DatabaseMaskSource

        return DatabaseMaskSource(
            gen.mask_database or weights.mask_database,
            size=size,
            spacing=spacing,
            seed=gen.seed,
            body_region=gen.body_region,
            anatomy=gen.anatomy,
            reading=reading,
        )
    if kind == "model":
        from maisi.generation.masks.model import ModelMaskSource

        return ModelMaskSource(
            model_set,
            size=size,
            spacing=spacing,
            seed=gen.seed,
            organ_sizes=gen.organ_sizes,
            demographics=gen.demographics,
            generator=mask_generator(gen, weights),
            steps=gen.mask_steps,
            guidance=gen.mask_guidance,
            **({} if decode is None else {"decode_window": tuple(decode)}),
            **({} if overlap is None else {"decode_overlap": overlap}),
            device=device,
            progress=progress,
        )
    return PhantomMaskSource(
        size=size,
        spacing=spacing,
        seed=gen.seed,
        body_region=gen.body_region,
        organ_sizes=gen.organ_sizes,
        anatomy=gen.anatomy,
    )
