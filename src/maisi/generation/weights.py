"""Which weights a request names, what that folder holds (read without loading a network), loading the components
a plan needs, and their identity for the sidecar.

``--weights`` takes ``demo`` (the small model set shipped in ``maisi/demo/``), ``rflow-ct`` / ``ddpm-ct`` /
``rflow-mr`` / ``rflow-mr-brain`` (the official checkpoints fetched by ``maisi download`` into
``$MAISI_HOME/<name>`` or ``~/.cache/maisi/<name>``), or a folder in maisi's own layout (a training run's ``model/``)
or NVIDIA's layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maisi.errors import CheckpointError, RequestError
from maisi.io import sha256_file

#: paired generation needs these (image-only: all but the ControlNet)
IMAGE_COMPONENTS = ("vae", "unet", "controlnet")
NAMED = ("rflow-ct", "ddpm-ct", "rflow-mr", "rflow-mr-brain")
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
        raise CheckpointError(
            f"{d}: weights folder not found (expected demo, {', '.join(NAMED)} or a folder)"
        )
    if not d.is_dir():
        raise CheckpointError(f"{d}: weights must be a folder, not a file")
    return d


@dataclass(frozen=True)
class WeightsInfo:
    """What a weights folder holds, known before any network is loaded.

    Attributes:
        root: the folder.
        layout: ``"maisi"`` (component folders) or ``"official"`` (NVIDIA ``.pt`` files).
        variant: the official variant (``rflow-ct``, ``ddpm-ct``, ``rflow-mr``, ``rflow-mr-brain``), None for maisi
            folders.
        paths: component -> its folder (maisi) or file (official), for the components present.
        extras: component -> the facts its maisi ``config.json`` declares besides the network (``extra``).
        mask_database: the folder holding the official mask database downloaded with the weights (its candidate
            list and the mask archive or its extraction), or None.
    """

    root: Path
    layout: str
    variant: str | None = None
    paths: dict[str, Path] = field(default_factory=dict)
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    mask_database: Path | None = None

    @property
    def components(self) -> frozenset[str]:
        return frozenset(self.paths)

    @property
    def has_mask_model(self) -> bool:
        """A mask VAE and a mask generator (v1 ``mask_unet`` or v2 ``mask_unet_v2``)."""
        return "mask_vae" in self.paths and ("mask_unet" in self.paths or "mask_unet_v2" in self.paths)

    @property
    def mask_model_follows_sizes(self) -> bool:
        """Whether the mask model follows the size vector, as its weights declare (the ``size_response`` extra of
        ``mask_unet``, written by :func:`maisi.evaluation.size.mask_model_size_response`, e.g. by the demo
        recipe's export). Weights that declare nothing (the official ones) are taken to follow it."""
        response = self.extras.get("mask_unet", {}).get("size_response")
        return not isinstance(response, dict) or bool(response.get("follows_sizes", True))

    def identity(self, components: Iterable[str]) -> dict[str, Any]:
        """What identifies the weights a sample was made with: folder, layout, and per component its path, the
        SHA-256 of its ``config.json`` (maisi layout) and the weight file's size in bytes."""
        out: dict[str, Any] = {"path": str(self.root.resolve()), "layout": self.layout, "components": {}}
        for name in sorted(components):
            path = self.paths[name]
            entry: dict[str, Any] = {"path": str(path)}
            if path.is_dir():
                cfg, weights = path / "config.json", path / "model.safetensors"
                if cfg.is_file():
                    entry["config_sha256"] = sha256_file(cfg)
                if weights.is_file():
                    entry["weights_bytes"] = weights.stat().st_size
            elif path.is_file():
                entry["weights_bytes"] = path.stat().st_size
            out["components"][name] = entry
        return out


def weights_preset(name: str | os.PathLike) -> str | None:
    """The preset whose request defaults go with a weights name: ``demo`` for the demo set, the variant for an
    official name (``rflow-mr-brain``...) or an official folder (its variant, from its files); None for a maisi
    folder (its networks travel with it) or a folder that does not exist."""
    from maisi.networks.model_set import detect_layout
    from maisi.networks.official import official_variant

    text = str(name)
    if text == "demo" or text in NAMED:
        return text
    try:
        official = detect_layout(Path(text).expanduser()) == "official"
    except CheckpointError:
        return None
    return official_variant(Path(text).expanduser()) if official else None


def inspect_weights(name: str | os.PathLike) -> WeightsInfo:
    """Describe a weights folder (layout, components, declared facts) without loading any network."""
    from maisi.networks.builders import COMPONENTS
    from maisi.networks.checkpoint import CONFIG_NAME, read_component_config
    from maisi.networks.model_set import detect_layout
    from maisi.networks.official import OFFICIAL_FILES, official_dir, official_variant

    d = resolve_weights(name)
    if detect_layout(d) == "maisi":
        paths = {c: d / c for c in COMPONENTS if (d / c / CONFIG_NAME).is_file()}
        extras = {c: dict(read_component_config(p).get("extra", {})) for c, p in paths.items()}
        return WeightsInfo(root=d, layout="maisi", paths=paths, extras=extras)
    odir, variant = official_dir(d), official_variant(d)
    files = OFFICIAL_FILES[variant]
    paths = {c: odir / f for c, f in files.items() if odir is not None and (odir / f).is_file()}
    return WeightsInfo(
        root=d, layout="official", variant=variant, paths=paths, mask_database=_database(d, variant)
    )


def _database(root: Path, variant: str) -> Path | None:
    """``root`` when it holds the variant's mask database: the candidate list, and the archive or its folder."""
    from maisi.networks.variants import VARIANTS

    spec = VARIANTS[variant]
    if spec.candidates is None or spec.archive is None or not (root / spec.candidates.path).is_file():
        return None
    masks = (root / spec.archive.folder).is_dir() or (root / spec.archive.file.path).is_file()
    return root if masks else None


def describe_model_set(model_set: Any) -> WeightsInfo:
    """The :class:`WeightsInfo` of an already loaded model set (its loaded components only)."""
    from maisi.networks.official import official_variant

    official = model_set.layout == "official"
    return WeightsInfo(
        root=Path(model_set.root),
        layout=model_set.layout,
        variant=official_variant(model_set.root) if official else None,
        paths={n: Path(c.path) for n, c in model_set.components.items()},
        extras={
            n: dict(c.extra or {}) for n, c in model_set.components.items() if model_set.layout == "maisi"
        },
    )


def load_weights(
    info: WeightsInfo | str | os.PathLike,
    *,
    components: Iterable[str] = IMAGE_COMPONENTS,
    base: Any = None,
    device: str = "cpu",
):
    """Load the named components of a weights folder strictly (see :func:`maisi.networks.model_set.load_model_set`).

    Args:
        info: the folder (:func:`inspect_weights`) or a weights name.
        base: network config for official files (a :class:`~maisi.config.schema.ModelConfig`); ignored for
            maisi folders, whose config travels with the weights, and when it is of another official variant.
    """
    from maisi.networks.model_set import load_model_set

    if not isinstance(info, WeightsInfo):
        info = inspect_weights(info)
    return load_model_set(
        info.root, components=list(components), base=_official_base(info, base), device=device
    )


def network_configs(info: WeightsInfo, *, components: Iterable[str], base: Any = None):
    """The :class:`~maisi.config.schema.ModelConfig` :func:`load_weights` would load, from config files alone."""
    from maisi.networks.model_set import read_model_config

    return read_model_config(info.root, components=list(components), base=_official_base(info, base))


def _official_base(info: WeightsInfo, base: Any) -> Any:
    """The base network config official files are read with: ``base``, unless it is of another official variant
    (it would not match the files) or the folder is maisi's (its networks travel with it)."""
    from maisi.config.presets import preset

    if info.layout != "official" or base is None:
        return None
    other = preset(info.variant).model
    if base.include_body_region != other.include_body_region or base.scheduler.kind != other.scheduler.kind:
        return None
    return base


def check_model_keys(cfg: Any, model_set: Any, components: Sequence[str]) -> None:
    """A maisi weights folder brings its own network and scheduler settings: ``model.*`` settings of the config
    that differ from both its preset and the weights' would silently not apply, so they are refused."""
    from maisi.config.loading import to_dict
    from maisi.config.presets import preset

    if model_set.layout != "maisi":
        return

    def flat(d: Any, prefix: str = "model") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}.{k}").items()}

    mine, base = flat(to_dict(cfg.model)), flat(to_dict(preset(cfg.preset).model))
    theirs = flat(to_dict(model_set.config))
    parts = (
        set(components)
        | {"scheduler"}
        | ({"mask_scheduler", "mask_latent_shape"} if "mask_unet" in components else set())
    )
    ignored = sorted(
        k
        for k in mine
        if k.split(".")[1] in parts and mine[k] != base.get(k) and mine[k] != theirs.get(k, mine[k])
    )
    if ignored:
        raise RequestError(
            f"{', '.join(ignored)}: {model_set.root} is a maisi weights folder, whose network and scheduler "
            f"settings come from its own config.json, so model.* settings that differ from it do not apply; "
            f"drop them (or edit that config.json)"
        )
