"""Choosing and building the mask source a request asks for."""

from __future__ import annotations

from typing import Any

from maisi.config.schema import GenerateConfig
from maisi.errors import RequestError
from maisi.generation.masks.base import MaskSource
from maisi.generation.masks.file import FileMaskSource
from maisi.generation.masks.phantom import PhantomMaskSource
from maisi.generation.request import check_output_size, check_spacing


def has_mask_model(model_set: Any) -> bool:
    return model_set is not None and "mask_vae" in model_set and "mask_unet" in model_set


def mask_model_follows_sizes(model_set: Any) -> bool:
    """Whether the mask model of ``model_set`` follows the size vector, as its weights declare: the ``mask_unet``
    component's ``size_response`` extra (written by :func:`maisi.evaluation.size.mask_model_size_response`, e.g.
    by the demo recipe's export). Weights that declare nothing (the official ones) are taken to follow it."""
    comp = model_set.components.get("mask_unet") if has_mask_model(model_set) else None
    response = (comp.extra or {}).get("size_response") if comp is not None else None
    return not isinstance(response, dict) or bool(response.get("follows_sizes", True))


def choose_source_kind(gen: GenerateConfig, *, model_set: Any = None) -> str:
    """``file`` when a mask is given, ``database`` when a database is given, ``model`` when organ sizes are
    requested and the weights include a mask-generation model that follows them, else ``phantom``.

    A mask model whose weights declare that it does not follow the size vector (the demo set's, trained on 40 maps
    on a CPU: ``mask_unet`` extra ``size_response``) gives way to phantom masks, which honour sizes exactly.
    ``--mask-source model`` still selects it."""
    if gen.mask_source != "auto":
        return gen.mask_source
    if gen.mask:
        return "file"
    if gen.mask_database:
        return "database"
    sized = any(v != -1.0 for v in gen.organ_sizes.values())
    if sized and has_mask_model(model_set) and mask_model_follows_sizes(model_set):
        return "model"
    return "phantom"


def make_mask_source(
    gen: GenerateConfig,
    *,
    kind: str | None = None,
    model_set: Any = None,
    label_set: str = "auto",
    fit_mask_to_request: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> MaskSource:
    """Build the mask source a request asks for.

    Args:
        gen: the request (sizes, spacing, regions, anatomy, organ sizes, mask file or database).
        kind: override :func:`choose_source_kind`.
        model_set: loaded weights (needed by the ``model`` source).
        label_set: vocabulary of a user mask file.
        fit_mask_to_request: fit a user mask to ``gen.output_size`` / ``gen.spacing`` instead of its nearest valid
            grid.
    """
    kind = kind or choose_source_kind(gen, model_set=model_set)
    if kind == "file":
        if not gen.mask:
            raise RequestError("mask_source 'file' needs a mask file (--mask FILE)")
        if fit_mask_to_request:
            return FileMaskSource(
                gen.mask,
                size=check_output_size(gen.output_size),
                spacing=check_spacing(gen.spacing),
                label_set=label_set,
            )
        return FileMaskSource(gen.mask, label_set=label_set)
    size, spacing = check_output_size(gen.output_size), check_spacing(gen.spacing)
    if kind == "database":
        from maisi.generation.masks.database import DatabaseMaskSource

        if not gen.mask_database:
            raise RequestError(
                "mask_source 'database' needs a mask database (--mask-database DIR or index JSON)"
            )
        return DatabaseMaskSource(
            gen.mask_database,
            size=size,
            spacing=spacing,
            seed=gen.seed,
            body_region=gen.body_region,
            anatomy=gen.anatomy,
        )
    if kind == "model":
        from maisi.generation.masks.model import ModelMaskSource

        if not has_mask_model(model_set):
            raise RequestError(
                "mask_source 'model' needs weights with the mask-generation model (mask_vae and mask_unet)"
            )
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
    if kind == "phantom":
        return PhantomMaskSource(
            size=size,
            spacing=spacing,
            seed=gen.seed,
            body_region=gen.body_region,
            organ_sizes=gen.organ_sizes,
            anatomy=gen.anatomy,
        )
    raise RequestError(f"unknown mask source {kind!r}; expected file, database, model or phantom")
