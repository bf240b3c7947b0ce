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


def _panels(hu: np.ndarray, lab: np.ndarray, aspect: float, colors: np.ndarray):
    """The grey panel and the overlay panel of one slice."""
    from PIL import Image

    lo, hi = WINDOW_HU
    gray = ((np.clip(hu, lo, hi) - lo) / (hi - lo) * 255).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    plain = rgb.round().astype(np.uint8)
    show = (lab > 0) & (lab != labels.BODY)
    rgb[show] = (1 - ALPHA) * rgb[show] + ALPHA * colors[lab[show]].astype(np.float32)
    size = (max(1, int(round(PANEL_HEIGHT * aspect))), PANEL_HEIGHT)
    return [
        Image.fromarray(a).resize(size, resample=Image.NEAREST) for a in (plain, rgb.round().astype(np.uint8))
    ]


def preview_image(image_hu: np.ndarray, label: np.ndarray, spacing: Sequence[float]):
    """The preview as a PIL image.

    Args:
        image_hu: (X, Y, Z) CT in HU (RAS).
        label: (X, Y, Z) MAISI ids.
        spacing: voxel size, mm.
    """
    from PIL import Image

    colors = label_colors()
    sx, sy, sz = (float(s) for s in spacing)
    nx, ny, nz = image_hu.shape
    lab = np.clip(label, 0, 255).astype(np.int64)
    # rows top->bottom, columns left->right; X reversed so the patient's right is on the left
    axial = (image_hu[::-1, ::-1, nz // 2].T, lab[::-1, ::-1, nz // 2].T, (nx * sx) / (ny * sy))
    coronal = (image_hu[::-1, ny // 2, ::-1].T, lab[::-1, ny // 2, ::-1].T, (nx * sx) / (nz * sz))
    sagittal = (image_hu[nx // 2, ::-1, ::-1].T, lab[nx // 2, ::-1, ::-1].T, (ny * sy) / (nz * sz))
    pairs = [_panels(h, l_, a, colors) for h, l_, a in (axial, coronal, sagittal)]
    width = sum(g.width + PAIR_GAP + o.width for g, o in pairs) + VIEW_GAP * (len(pairs) - 1)
    canvas = Image.new("RGB", (width, PANEL_HEIGHT))
    x = 0
    for grey, overlay in pairs:
        canvas.paste(grey, (x, 0))
        canvas.paste(overlay, (x + grey.width + PAIR_GAP, 0))
        x += grey.width + PAIR_GAP + overlay.width + VIEW_GAP
    return canvas


def preview_png(image_hu: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> bytes:
    """The preview encoded as PNG bytes (deterministic for the same input)."""
    buf = io.BytesIO()
    preview_image(image_hu, label, spacing).save(buf, format="PNG")
    return buf.getvalue()
