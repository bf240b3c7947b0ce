"""Which weights a request names, loading the components generation needs, and their identity for the sidecar.

``--weights`` takes ``demo`` (the small model set shipped in ``maisi/demo/``), ``rflow-ct`` / ``ddpm-ct`` (the
official checkpoints fetched by ``maisi download`` into ``$MAISI_HOME/<name>`` or ``~/.cache/maisi/<name>``), or a
folder in maisi's own layout (a training run's ``model/``) or NVIDIA's layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from maisi.errors import CheckpointError
from maisi.io import sha256_file

#: generation always needs these; the mask-generation model only for the ``model`` mask source
IMAGE_COMPONENTS = ("vae", "unet", "controlnet")
MASK_COMPONENTS = ("mask_vae", "mask_unet")
NAMED = ("rflow-ct", "ddpm-ct")
DEMO_DIR = Path(__file__).resolve().parent.parent / "demo"


def resolve_weights(name: str | os.PathLike) -> Path:
    """The folder a weights name refers to.

    Raises:
        CheckpointError: one line saying what is missing and how to get it.
    """
    from maisi.networks.hub import default_weights_dir

    text = str(name)
    if text == "demo":
        if not (DEMO_DIR / "vae" / "config.json").is_file():
            raise CheckpointError(
                f"no demo weights in {DEMO_DIR} (an incomplete install? reinstall maisi); or pass --weights "
                "rflow-ct (after `maisi download rflow-ct`) or --weights DIR"
            )
        return DEMO_DIR
    if text in NAMED:
        d = default_weights_dir(text)
        if not d.is_dir():
            raise CheckpointError(f"weights {text!r} not found in {d}; run `maisi download {text}` first")
        return d
    d = Path(text).expanduser()
    if not d.exists():
        raise CheckpointError(f"{d}: weights folder not found (expected demo, rflow-ct, ddpm-ct or a folder)")
    if not d.is_dir():
        raise CheckpointError(f"{d}: weights must be a folder, not a file")
    return d


def load_weights(
    name: str | os.PathLike,
    *,
    components: Iterable[str] = IMAGE_COMPONENTS,
    base: Any = None,
    device: str = "cpu",
):
    """Load the named components of a weights folder strictly (see :func:`maisi.networks.model_set.load_model_set`).

    Args:
        base: network config for official files (a :class:`~maisi.config.schema.ModelConfig`); ignored for
            maisi folders, whose config travels with the weights.
    """
    from maisi.networks.model_set import detect_layout, load_model_set
    from maisi.networks.official import official_variant

    d = resolve_weights(name)
    layout = detect_layout(d)
    if layout == "official" and base is not None:
        from maisi.config.presets import preset

        # a base config of the other variant would not match the files
        if _same_unet(base, preset(official_variant(d)).model) is False:
            base = None
    return load_model_set(
        d, components=list(components), base=base if layout == "official" else None, device=device
    )


def _same_unet(a: Any, b: Any) -> bool:
    return a.include_body_region == b.include_body_region and a.scheduler.kind == b.scheduler.kind


def available_components(name: str | os.PathLike) -> set[str]:
    """Components present in a weights folder (without loading them)."""
    from maisi.networks.builders import COMPONENTS
    from maisi.networks.checkpoint import CONFIG_NAME
    from maisi.networks.model_set import detect_layout
    from maisi.networks.official import OFFICIAL_FILES, official_dir, official_variant

    d = resolve_weights(name)
    if detect_layout(d) == "maisi":
        return {c for c in COMPONENTS if (d / c / CONFIG_NAME).is_file()}
    odir = official_dir(d)
    files = OFFICIAL_FILES[official_variant(d)]
    return {c for c, f in files.items() if odir is not None and (odir / f).is_file()}


def weights_identity(model_set: Any) -> dict[str, Any]:
    """What identifies the weights a sample was made with: folder, layout, and per component the SHA-256 of its
    ``config.json`` (maisi layout) plus the weight file's size in bytes."""
    out: dict[str, Any] = {
        "path": str(Path(model_set.root).resolve()),
        "layout": model_set.layout,
        "components": {},
    }
    for name, comp in sorted(model_set.components.items()):
        path = Path(comp.path)
        entry: dict[str, Any] = {"path": str(path)}
        if path.is_dir():
            cfg = path / "config.json"
            weights = path / "model.safetensors"
            if cfg.is_file():
                entry["config_sha256"] = sha256_file(cfg)
            if weights.is_file():
                entry["weights_bytes"] = weights.stat().st_size
        elif path.is_file():
            entry["weights_bytes"] = path.stat().st_size
        out["components"][name] = entry
    return out
