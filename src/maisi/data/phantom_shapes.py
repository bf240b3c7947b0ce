"""Implicit shapes and the voxel lattice used to rasterise the CT phantom.

A shape is a scalar field over body-frame millimetres that is 1 on the nominal surface, below 1 inside and
grows with distance outside (an ellipsoid's normalised radius, a tube's distance over its local radius), so
``field <= t`` is the shape grown by about ``t``. Fields are evaluated on tensor-product grids given by three
1D coordinate vectors, so the cost is that of the shape's bounding box, never of the whole volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_F32 = np.float32


@dataclass(frozen=True)
class Lattice:
    """The voxel lattice of the requested volume, extended without bounds on every side.

    Attributes:
        shape: (X, Y, Z) number of voxels of the volume.
        spacing: voxel size (mm) along X, Y, Z.
        origin: body-frame coordinate (mm) of voxel (0, 0, 0).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    @property
    def voxel_ml(self) -> float:
        return self.spacing[0] * self.spacing[1] * self.spacing[2] / 1000.0

    def axis(self, a: int, start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
        """Body-frame coordinates (float32, mm) of lattice indices ``start:stop:step`` along axis ``a``."""
        stop = self.shape[a] if stop is None else stop
        return (self.origin[a] + self.spacing[a] * np.arange(start, stop, step, dtype=np.float64)).astype(
            _F32
        )

    def box(self, lo, hi) -> Box:
        """Lattice index box (may reach outside the volume) covering the body-frame interval ``[lo, hi]``."""
        i0 = tuple(math.floor((lo[a] - self.origin[a]) / self.spacing[a]) for a in range(3))
        i1 = tuple(math.ceil((hi[a] - self.origin[a]) / self.spacing[a]) + 1 for a in range(3))
        return Box(i0, i1)


@dataclass(frozen=True)
class Box:
    """Half-open lattice index box ``[lo, hi)`` per axis."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(max(0, h - lo) for lo, h in zip(self.lo, self.hi))

    def clip(self, shape) -> Box | None:
        """The part inside a volume of ``shape``, or None when empty."""
        lo = tuple(max(0, v) for v in self.lo)
        hi = tuple(min(n, v) for n, v in zip(shape, self.hi))
        if any(h <= lo_ for lo_, h in zip(lo, hi)):
            return None
        return Box(lo, hi)

    def inside(self, shape) -> bool:
        return all(lo_ >= 0 and h <= n for lo_, h, n in zip(self.lo, self.hi, shape))

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        return tuple(slice(lo_, h) for lo_, h in zip(self.lo, self.hi))

    def coords(self, lattice: Lattice, step: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """1D body-frame coordinate vectors of the box (every ``step``-th lattice point)."""
        return tuple(lattice.axis(a, self.lo[a], self.hi[a], step) for a in range(3))


def grids(xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable (n, 1, 1), (1, n, 1), (1, 1, n) views of three coordinate vectors."""
    return xs[:, None, None], ys[None, :, None], zs[None, None, :]


def frame(direction) -> np.ndarray:
    """Orthonormal (3, 3) matrix whose first column is ``direction`` (columns are the local axes)."""
    e1 = np.asarray(direction, dtype=np.float64)
    e1 = e1 / np.linalg.norm(e1)
    helper = np.array([0.0, 0.0, 1.0]) if abs(e1[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    e2 = np.cross(helper, e1)
    e2 /= np.linalg.norm(e2)
    return np.stack([e1, e2, np.cross(e1, e2)], axis=1)


class Ellipsoid:
    """Rotated ellipsoid, optionally tapered: the cross-section shrinks linearly along the first axis.

    Args:
        center: (3,) body-frame centre (mm).
        axes: (3,) semi-axes (mm) along the local axes.
        direction: (3,) direction of the first local axis.
        taper: the second and third semi-axes are scaled by ``1 + taper * u`` (clipped to [0.35, 1.5]), ``u``
            the normalised first local coordinate; 0 gives a plain ellipsoid.
    """

    def __init__(self, *, center, axes, direction=(1.0, 0.0, 0.0), taper: float = 0.0):
        self.center = np.asarray(center, dtype=np.float64)
        self.axes = np.asarray(axes, dtype=np.float64)
        self.rot = frame(direction)
        self.taper = float(taper)

    def bounds(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Body-frame box holding ``field <= t``."""
        g = min(1.5, 1.0 + abs(self.taper) * t) if self.taper else 1.0
        scaled = self.axes * np.array([1.0, g, g]) * t
        half = np.sqrt(((self.rot * scaled[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def mask_into(self, xs, ys, zs, out: np.ndarray, t: float = 1.0) -> None:
        """OR ``field <= t`` into the bool array ``out`` of shape (len(xs), len(ys), len(zs))."""
        sub = _sub_box(xs, ys, zs, *self.bounds(t))
        if sub is not None:
            out[sub] |= self(xs[sub[0]], ys[sub[1]], zs[sub[2]]) <= t

    def __call__(self, xs, ys, zs) -> np.ndarray:
        x, y, z = grids(xs - _F32(self.center[0]), ys - _F32(self.center[1]), zs - _F32(self.center[2]))
        # normalised local coordinates (R^T (p - c)) / axes; each sum broadcasts to the full box only once
        m = (self.rot / self.axes[None, :]).astype(_F32)
        u, v, w = (m[0, k] * x + m[1, k] * y + m[2, k] * z for k in range(3))
        v *= v
        w *= w
        v += w
        if self.taper:
            g = 1.0 + _F32(self.taper) * u
            np.clip(g, 0.35, 1.5, out=g)
            g *= g
            v /= g
        u *= u
        u += v
        return np.sqrt(u, out=u)


class Tube:
    """Chain of capsules along a polyline with linearly varying radius.

    The field is the distance to the nearest segment divided by the radius there, evaluated only where it can
    be ``<= reach`` (elsewhere it is ``inf``).

    Args:
        points: (n, 3) body-frame polyline vertices (mm).
        radii: (n,) radius at each vertex (mm).
    """

    def __init__(self, *, points, radii):
        self.points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        self.radii = np.asarray(radii, dtype=np.float64).reshape(-1)
        if len(self.points) < 2 or len(self.radii) != len(self.points):
            raise ValueError("a tube needs >= 2 points and one radius per point")

    def bounds(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        pad = t * self.radii[:, None]
        return (self.points - pad).min(axis=0), (self.points + pad).max(axis=0)

    def __call__(self, xs, ys, zs, reach: float = 1.5) -> np.ndarray:
        out = np.full((len(xs), len(ys), len(zs)), np.inf, dtype=_F32)
        for a, b, ra, rb in zip(self.points[:-1], self.points[1:], self.radii[:-1], self.radii[1:]):
            pad = reach * max(ra, rb)
            sub = _sub_box(xs, ys, zs, np.minimum(a, b) - pad, np.maximum(a, b) + pad)
            if sub is None:
                continue
            x, y, z = grids(xs[sub[0]] - _F32(a[0]), ys[sub[1]] - _F32(a[1]), zs[sub[2]] - _F32(a[2]))
            d = (b - a).astype(_F32)
            dd = _F32(max(float(d @ d), 1e-12))
            # p = point - a; t = clip(p.d / |d|^2) is the closest point's parameter on the segment, and
            # |p - t d|^2 = |p|^2 - t (2 p.d - t |d|^2); broadcasting builds 2D planes before the 3D pass
            pd = (d[0] * x + d[1] * y) + d[2] * z
            p2 = (x * x + y * y) + z * z
            t = np.clip(pd / dd, 0.0, 1.0)
            pd *= 2.0
            pd -= t * dd
            pd *= t
            p2 -= pd
            np.maximum(p2, 0.0, out=p2)
            f = np.sqrt(p2, out=p2)
            if ra == rb:
                f *= _F32(1.0 / ra)
            else:
                f /= _F32(ra) + _F32(rb - ra) * t
            view = out[sub[0], sub[1], sub[2]]
            np.minimum(view, f, out=view)
        return out

    def mask_into(self, xs, ys, zs, out: np.ndarray, t: float = 1.0) -> None:
        """OR ``field <= t`` into the bool array ``out`` of shape (len(xs), len(ys), len(zs))."""
        sub = _sub_box(xs, ys, zs, *self.bounds(t))
        if sub is not None:
            out[sub] |= self(xs[sub[0]], ys[sub[1]], zs[sub[2]], reach=t) <= t

    def point_at(self, s: float) -> np.ndarray:
        """Point at arc-length fraction ``s`` in [0, 1] along the polyline."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        target = float(np.clip(s, 0.0, 1.0)) * cum[-1]
        i = int(np.clip(np.searchsorted(cum, target, side="right") - 1, 0, len(seg) - 1))
        w = (target - cum[i]) / max(seg[i], 1e-12)
        return self.points[i] + w * (self.points[i + 1] - self.points[i])

    def radius_at(self, s: float) -> float:
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)])
        return float(np.interp(float(np.clip(s, 0.0, 1.0)) * cum[-1], cum, self.radii))

    def approx_volume_ml(self) -> float:
        """Sum of the frusta volumes (overlaps at joints ignored), in mL."""
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        ra, rb = self.radii[:-1], self.radii[1:]
        v = float(np.sum(math.pi * seg * (ra * ra + ra * rb + rb * rb) / 3.0))
        v += 2.0 / 3.0 * math.pi * (self.radii[0] ** 3 + self.radii[-1] ** 3)
        return v / 1000.0


def _sub_box(xs, ys, zs, lo, hi) -> tuple[slice, slice, slice] | None:
    """Index slices of sorted coordinate vectors inside the body-frame box ``[lo, hi]`` (None if empty)."""
    sub = []
    for v, a, b in zip((xs, ys, zs), lo, hi):
        i0, i1 = int(np.searchsorted(v, a)), int(np.searchsorted(v, b, side="right"))
        if i1 <= i0:
            return None
        sub.append(slice(i0, i1))
    return tuple(sub)


def shape_from_params(spec: dict) -> Ellipsoid | Tube:
    """Shape of an organ or vessel parameter block: ``{"ellipsoid": {...}}`` or ``{"tube": {...}}``."""
    if "ellipsoid" in spec:
        e = spec["ellipsoid"]
        return Ellipsoid(
            center=e["center"],
            axes=e["axes"],
            direction=e.get("direction", (1, 0, 0)),
            taper=e.get("taper", 0),
        )
    t = spec["tube"]
    return Tube(points=t["points"], radii=t["radii"])
