"""Small PNG plots drawn with Pillow (no plotting library needed): histograms, bar charts, scatter plots and
CT slice panels with label overlays. Every function returns PNG bytes.

Slices are shown in the radiological convention: axial and coronal views have the patient's right on the left of
the picture, anterior (axial) or superior (coronal, sagittal) at the top; pixels are scaled by the voxel spacing.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]
BACKGROUND = (255, 255, 255)
AXIS = (60, 60, 60)
GRID = (225, 225, 225)
#: soft-tissue display window (HU)
WINDOW_HU = (-400.0, 600.0)
MARGIN = (56, 44, 16, 42)  # left, top, right, bottom


def _font(size: int = 12) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


class _Canvas:
    """A plot area with linear axes mapping data (x, y) to pixels."""

    def __init__(
        self,
        size: tuple[int, int],
        xlim: tuple[float, float],
        ylim: tuple[float, float],
        *,
        title: str,
        xlabel: str,
        ylabel: str,
        xticks: bool = True,
    ) -> None:
        self.image = Image.new("RGB", size, BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font, self.small = _font(13), _font(11)
        w, h = size
        left, top, right, bottom = MARGIN
        self.box = (left, top, w - right, h - bottom)
        self.xlim = xlim if xlim[1] > xlim[0] else (xlim[0] - 0.5, xlim[0] + 0.5)
        self.ylim = ylim if ylim[1] > ylim[0] else (ylim[0] - 0.5, ylim[0] + 0.5)
        self.draw.text((left, 8), title, fill=AXIS, font=self.font)
        self.draw.text(((left + w - right) // 2, h - 16), xlabel, fill=AXIS, font=self.small, anchor="mm")
        self.draw.text((4, top - 14), ylabel, fill=AXIS, font=self.small)
        for i in range(5):
            yv = self.ylim[0] + (self.ylim[1] - self.ylim[0]) * i / 4
            _, py = self.xy(self.xlim[0], yv)
            self.draw.line([(left, py), (w - right, py)], fill=GRID)
            self.draw.text((left - 4, py), _fmt(yv), fill=AXIS, font=self.small, anchor="rm")
            if xticks:
                xv = self.xlim[0] + (self.xlim[1] - self.xlim[0]) * i / 4
                px, _ = self.xy(xv, self.ylim[0])
                self.draw.text((px, h - bottom + 4), _fmt(xv), fill=AXIS, font=self.small, anchor="mt")
        self.draw.rectangle(self.box, outline=AXIS)

    def xy(self, x: float, y: float) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        px = x0 + (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0]) * (x1 - x0)
        py = y1 - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (y1 - y0)
        return px, py

    def legend(self, names: Sequence[str]) -> None:
        x0, y0, x1, _ = self.box
        for i, name in enumerate(names):
            y = y0 + 6 + 15 * i
            self.draw.rectangle([x1 - 120, y, x1 - 110, y + 10], fill=PALETTE[i % len(PALETTE)])
            self.draw.text((x1 - 105, y - 1), name[:16], fill=AXIS, font=self.small)


def histogram_png(
    series: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    bins: int = 20,
    size: tuple[int, int] = (560, 300),
) -> bytes:
    """Overlaid outline histograms of one or more value sets (non-finite values dropped)."""
    data = {
        k: np.asarray([v for v in vals if v is not None and np.isfinite(v)], dtype=float)
        for k, vals in series.items()
    }
    allv = np.concatenate([v for v in data.values() if v.size] or [np.zeros(1)])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in data.items()}
    top = max([int(c.max()) for c in counts.values()] + [1])
    cv = _Canvas(size, (lo, hi), (0, top * 1.1), title=title, xlabel=xlabel, ylabel="count")
    for i, (_, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        for j, n in enumerate(c):
            if n:
                x0, y0 = cv.xy(edges[j], n)
                x1, y1 = cv.xy(edges[j + 1], 0)
                cv.draw.rectangle([x0 + 1 + i, y0, x1 - 1, y1], outline=color, width=2)
    cv.legend(list(counts))
    return _png(cv.image)


def bar_png(
    names: Sequence[str],
    values: Sequence[float],
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
) -> bytes:
    """Horizontal bars, one per name (the value axis is ``ylabel``, ``ylim`` its range), value written at the end."""
    vals = [float(v) if v is not None and np.isfinite(v) else 0.0 for v in values]
    font, small = _font(13), _font(11)
    label_w = 12 + 7 * max([len(str(n)[:28]) for n in names] + [4])
    row = 18
    width = size[0] if size else 560
    height = size[1] if size else 60 + row * max(len(vals), 1) + 24
    lo, hi = ylim or (min(0.0, min(vals, default=0.0)), max(vals, default=1.0) * 1.1 or 1.0)
    hi = hi if hi > lo else lo + 1.0
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    x0, x1, top = label_w, width - 60, 34
    bottom = top + row * max(len(vals), 1)
    draw.text((8, 8), title, fill=AXIS, font=font)

    def px(v: float) -> float:
        return x0 + (v - lo) / (hi - lo) * (x1 - x0)

    for i in range(5):
        v = lo + (hi - lo) * i / 4
        draw.line([(px(v), top), (px(v), bottom)], fill=GRID)
        draw.text((px(v), bottom + 4), _fmt(v), fill=AXIS, font=small, anchor="mt")
    draw.text(((x0 + x1) / 2, bottom + 20), ylabel, fill=AXIS, font=small, anchor="mt")
    for i, (name, v) in enumerate(zip(names, vals)):
        y = top + row * i
        draw.text((x0 - 6, y + row / 2), str(name)[:28], fill=AXIS, font=small, anchor="rm")
        draw.rectangle([px(max(lo, 0.0)), y + 3, px(v), y + row - 3], fill=PALETTE[0])
        draw.text((px(v) + 4, y + row / 2), _fmt(v), fill=AXIS, font=small, anchor="lm")
    draw.rectangle([x0, top, x1, bottom], outline=AXIS)
    return _png(image)


def scatter_png(
    x: Sequence[float],
    y: Sequence[float],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    diagonal: bool = False,
    groups: Sequence[str] | None = None,
    size: tuple[int, int] = (420, 360),
) -> bytes:
    """Scatter plot; ``diagonal`` draws y = x; ``groups`` colours points by name (with a legend)."""
    xs, ys = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    lo = float(min(xs.min(initial=0), ys.min(initial=0))) if diagonal else float(xs.min(initial=0))
    hi_x = float(max(xs.max(initial=1), ys.max(initial=1))) if diagonal else float(xs.max(initial=1))
    ylim = (lo, hi_x) if diagonal else (float(ys.min(initial=0)), float(ys.max(initial=1)))
    pad_x = 0.05 * (hi_x - lo or 1)
    pad_y = 0.05 * (ylim[1] - ylim[0] or 1)
    cv = _Canvas(
        size,
        (lo - pad_x, hi_x + pad_x),
        (ylim[0] - pad_y, ylim[1] + pad_y),
        title=title,
        xlabel=xlabel,
        ylabel=ylabel,
    )
    if diagonal:
        cv.draw.line([cv.xy(lo, lo), cv.xy(hi_x, hi_x)], fill=GRID, width=2)
    names = list(dict.fromkeys(groups)) if groups is not None else []
    for i, (a, b) in enumerate(zip(xs, ys)):
        color = PALETTE[names.index(groups[i]) % len(PALETTE)] if groups is not None else PALETTE[0]
        px, py = cv.xy(a, b)
        cv.draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
    if names:
        cv.legend(names)
    return _png(cv.image)


# ----------------------------------------------------------------------------------------------------------------
# slices


def label_color(label_id: int) -> tuple[int, int, int]:
    """A fixed, well-spread colour per label id (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((int(label_id) * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def display_slice(volume: np.ndarray, plane: str, index: int | None = None) -> np.ndarray:
    """A 2D view of an (X, Y, Z) RAS array in display orientation (rows top-down, columns left-right)."""
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    index = volume.shape[axis] // 2 if index is None else index
    sl = np.take(volume, index, axis=axis)
    # axial (X, Y): rows = -Y (anterior up), cols = -X (patient right on the left); coronal (X, Z) and sagittal
    # (Y, Z): rows = -Z (superior up), cols = -X or -Y
    return sl.T[::-1, ::-1]


def slice_rgb(
    image_hu: np.ndarray,
    label: np.ndarray | None = None,
    *,
    alpha: float = 0.45,
    window: tuple[float, float] = WINDOW_HU,
) -> np.ndarray:
    """(H, W, 3) uint8 of a windowed CT slice with labels (body 200 excluded) blended in colour."""
    lo, hi = window
    gray = (np.clip((image_hu - lo) / (hi - lo), 0, 1) * 255).astype(np.float32)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if label is not None:
        for i in np.unique(label):
            if i == 0 or i == 200:
                continue
            m = label == i
            rgb[m] = (1 - alpha) * rgb[m] + alpha * np.asarray(label_color(int(i)), dtype=np.float32)
    return rgb.astype(np.uint8)


def panel_png(
    tiles: Sequence[tuple[str, np.ndarray, tuple[float, float]]], *, columns: int, tile_size: int = 200
) -> bytes:
    """A grid of titled RGB tiles; each tile is (title, (H, W, 3) uint8, (row spacing, col spacing) mm) and is
    resized to ``tile_size`` on its long side keeping the physical aspect ratio."""
    font = _font(12)
    rows = -(-len(tiles) // columns)
    cell_h = tile_size + 18
    canvas = Image.new("RGB", (columns * (tile_size + 8) + 8, rows * cell_h + 8), (20, 20, 20))
    draw = ImageDraw.Draw(canvas)
    for k, (title, rgb, spacing) in enumerate(tiles):
        h_mm, w_mm = rgb.shape[0] * spacing[0], rgb.shape[1] * spacing[1]
        scale = tile_size / max(h_mm, w_mm)
        size = (max(1, int(round(w_mm * scale))), max(1, int(round(h_mm * scale))))
        tile = Image.fromarray(rgb).resize(size, Image.NEAREST)
        r, c = divmod(k, columns)
        x = 8 + c * (tile_size + 8) + (tile_size - size[0]) // 2
        y = 8 + r * cell_h + 16 + (tile_size - size[1]) // 2
        canvas.paste(tile, (x, y))
        draw.text((8 + c * (tile_size + 8), 8 + r * cell_h), title[:32], fill=(235, 235, 235), font=font)
    return _png(canvas)
