"""Choosing and building the mask source a request asks for."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maisi import labels
from maisi.config.schema import GenerateConfig
from maisi.errors import RequestError
from maisi.generation.masks.base import GridSource, MaskSource
from maisi.generation.masks.file import FileMaskSource, LabelReading
from maisi.generation.masks.phantom import PhantomMaskSource
from maisi.generation.request import check_output_size, check_spacing

if TYPE_CHECKING:
    from maisi.generation.weights import WeightsInfo


#: the mask sources (``none``: image-only generation)
KINDS = ("file", "database", "model", "phantom", "none")


def choose_source_kind(gen: GenerateConfig, weights: WeightsInfo | None) -> str:
    """The mask source of a request, decided once (by :func:`maisi.generation.plan.plan_generation`).

    ``file`` when a mask is given, ``database`` when a database is given, ``model`` when organ sizes are requested
    and the weights include a mask-generation model that follows them, else ``phantom``. A mask model whose weights
    declare that it does not follow the size vector (the demo set's, trained on 40 maps on a CPU: ``mask_unet``
    extra ``size_response``) gives way to phantom masks, which honour sizes exactly; ``--mask-source model`` still
    selects it.
    """
    if gen.mask_source != "auto":
        return gen.mask_source
    if gen.mask:
        return "file"
    if gen.mask_database:
        return "database"
    sized = any(labels.size_is_set(v) for v in gen.organ_sizes.values())
    if sized and weights is not None and weights.has_mask_model and weights.mask_model_follows_sizes:
        return "model"
    return "phantom"


def check_source(kind: str, gen: GenerateConfig, weights: WeightsInfo | None) -> None:
    """Raise a one-line :class:`RequestError` when the chosen source lacks what it needs (before any loading)."""
    if kind not in KINDS:
        raise RequestError(f"unknown mask source {kind!r}; expected auto, {', '.join(KINDS)}")
    if kind == "file" and not gen.mask:
        raise RequestError("mask_source 'file' needs a mask file (--mask FILE)")
    if kind == "database" and not gen.mask_database:
        raise RequestError("mask_source 'database' needs a mask database (--mask-database DIR or index JSON)")
    if kind == "model" and (weights is None or not weights.has_mask_model):
        where = f" ({weights.root} has {sorted(weights.components)})" if weights is not None else ""
        raise RequestError(
            f"mask_source 'model' needs weights with the mask-generation model (mask_vae and mask_unet){where}"
        )


def make_mask_source(
    kind: str,
    gen: GenerateConfig,
    *,
    model_set: Any = None,
    reading: LabelReading = LabelReading(),
    device: str = "cpu",
    progress: bool = False,
) -> MaskSource:
    """Build the mask source ``kind`` (checked by :func:`check_source`) for a request.

    Args:
        gen: the request (sizes, spacing, regions, anatomy, organ sizes, mask file or database; ``fit_mask`` fits a
            user mask to ``output_size`` / ``spacing`` instead of its nearest valid grid).
        model_set: loaded weights (needed by the ``model`` source).
        reading: how user label maps (a mask file, a database's masks) are read.
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
    size, spacing = check_output_size(gen.output_size), check_spacing(gen.spacing)
    if kind == "none":
        return GridSource(size=size, spacing=spacing)
    if kind == "database":
        from maisi.generation.masks.database import DatabaseMaskSource

        return DatabaseMaskSource(
            gen.mask_database,
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
            steps=gen.mask_steps,
            decode_window=gen.decode_window,
            decode_overlap=gen.decode_overlap,
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
