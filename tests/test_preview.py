"""The PNG preview: each view as the grey CT alone beside the same slice with the label overlay."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from maisi.generation.preview import PAIR_GAP, PANEL_HEIGHT, VIEW_GAP, preview_png


def test_preview_shows_grey_panels_beside_overlay_panels():
    label = np.zeros((32, 32, 16), np.uint8)
    label[4:20, 8:24, 4:12] = 1
    image = np.where(label > 0, 60, -1000).astype(np.int16)
    png = preview_png(image, label, (3.0, 3.0, 6.0))
    assert png == preview_png(image, label, (3.0, 3.0, 6.0))
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    # axial 96 x 96 mm, coronal and sagittal 96 x 96 mm: every panel square
    assert rgb.shape == (PANEL_HEIGHT, 6 * PANEL_HEIGHT + 3 * PAIR_GAP + 2 * VIEW_GAP, 3)
    x = 0
    for _ in range(3):
        grey = rgb[:, x : x + PANEL_HEIGHT]
        overlay = rgb[:, x + PANEL_HEIGHT + PAIR_GAP : x + 2 * PANEL_HEIGHT + PAIR_GAP]
        assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])
        assert (overlay[..., 0] != overlay[..., 2]).any()  # the liver is coloured only in the overlay
        assert np.array_equal(
            grey[overlay[..., 0] == overlay[..., 2]], overlay[overlay[..., 0] == overlay[..., 2]]
        )
        x += 2 * PANEL_HEIGHT + PAIR_GAP + VIEW_GAP
