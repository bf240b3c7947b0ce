"""PNG preview of a generated pair: three orthogonal mid-slices of the CT, each shown alone and with the labels.

Views, left to right: axial (Z mid-slice, anterior up), coronal (Y mid-slice, superior up), sagittal (X mid-slice,
superior up, anterior left); the patient's right is on the image's left (radiological convention). Each view is
a pair of panels side by side: the CT alone in grey (to judge the image itself), then the same slice with the
label map blended in. Each panel is resized to its physical aspect ratio. The CT is shown in a [-1000, 1000] HU
window; organ labels (not the body envelope 200) are blended in with a fixed colour per id.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from maisi import labels

#: HU window of the preview
WINDOW_HU = (-1000.0, 1000.0)
ALPHA = 0.4
PANEL_HEIGHT = 256
#: pixels between the grey and the overlay panel of a view, and between views
PAIR_GAP, VIEW_GAP = 4, 12


def label_colors(max_id: int = 255) -> np.ndarray:
    """A fixed RGB colour per label id ``(max_id + 1, 3)`` uint8 (golden-angle hues; 0 and 200 black)."""
    ids = np.arange(max_id + 1)
    hue = (ids * 0.618033988749895) % 1.0
    h6 = hue * 6.0
    c = np.stack([np.abs(h6 - 3) - 1, 2 - np.abs(h6 - 2), 2 - np.abs(h6 - 4)], axis=1).clip(0, 1)
    rgb = (0.35 + 0.65 * c) * 255
    rgb[[0, labels.BODY]] = 0
    return rgb.astype(np.uint8)


def _panels(
    hu: np.ndarray, lab: np.ndarray | None, aspect: float, colors: np.ndarray, window: Sequence[float]
):
    """The grey panel and the overlay panel of one slice (the grey panel alone without a label map)."""
    from PIL import Image

    lo, hi = window
    gray = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    panels = [rgb.round().astype(np.uint8)]
    if lab is not None:
        show = (lab > 0) & (lab != labels.BODY)
        rgb[show] = (1 - ALPHA) * rgb[show] + ALPHA * colors[lab[show]].astype(np.float32)
        panels.append(rgb.round().astype(np.uint8))
    size = (max(1, int(round(PANEL_HEIGHT * aspect))), PANEL_HEIGHT)
    return [Image.fromarray(a).resize(size, resample=Image.NEAREST) for a in panels]


def _views(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal mid-slices (rows top->bottom; X reversed: the patient's right on the left)."""
    nx, ny, nz = volume.shape
    return [volume[::-1, ::-1, nz // 2].T, volume[::-1, ny // 2, ::-1].T, volume[nx // 2, ::-1, ::-1].T]


def preview_image(
    image_hu: np.ndarray,
    label: np.ndarray | None,
    spacing: Sequence[float],
    *,
    window: Sequence[float] | None = None,
):
    """The preview as a PIL image.

    Args:
        image_hu: (X, Y, Z) image (RAS): CT in HU, or MR in its output units.
        label: (X, Y, Z) MAISI ids; None (image-only generation) shows the grey panels alone.
        spacing: voxel size, mm.
        window: intensity window (default :data:`WINDOW_HU`, for CT).
    """
    from PIL import Image

    colors = label_colors()
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = image_hu.shape
    aspects = ((nx * sx) / (ny * sy), (nx * sx) / (nz * sz), (ny * sy) / (nz * sz))
    labs = _views(np.clip(label, 0, 255).astype(np.int64)) if label is not None else [None] * 3
    views = [
        _panels(h, l_, a, colors, window or WINDOW_HU) for h, l_, a in zip(_views(image_hu), labs, aspects)
    ]
    width = sum(sum(p.width for p in v) + PAIR_GAP * (len(v) - 1) for v in views) + VIEW_GAP * (
        len(views) - 1
    )
    canvas = Image.new("RGB", (width, PANEL_HEIGHT))
    x = 0
    for view in views:
        for panel in view:
            canvas.paste(panel, (x, 0))
            x += panel.width + PAIR_GAP
        x += VIEW_GAP - PAIR_GAP
    return canvas


def preview_png(
    image_hu: np.ndarray,
    label: np.ndarray | None,
    spacing: Sequence[float],
    *,
    window: Sequence[float] | None = None,
) -> bytes:
    """The preview encoded as PNG bytes (deterministic for the same input)."""
    buf = io.BytesIO()
    preview_image(image_hu, label, spacing, window=window).save(buf, format="PNG")
    return buf.getvalue()
