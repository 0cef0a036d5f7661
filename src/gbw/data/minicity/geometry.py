"""Pinhole street camera, z-buffered canvas and the three drawing primitives of MiniCity.

Everything is placed in metres in a camera-centred world (X right, Y up from the ground,
Z forward) and projected with one pinhole camera, so sizes shrink as 1/Z and every
parallel-to-the-street line meets at the vanishing point, as in a dash-cam view. Visibility
is a per-pixel z-buffer, so primitives can be drawn in any order.

Primitives (all vectorised over the primitive's bounding box, no per-pixel Python):
  * ground (the plane Y = 0) and sky, one call per image;
  * a *side plane*: a vertical rectangle parallel to the street (X = const), for facades,
    walls, fences and the flanks of vehicles;
  * a *billboard*: a vertical rectangle facing the camera (Z = const), for people,
    two-wheelers, poles, signs, trees and the back/front faces of vehicles.
A primitive's shape is a function of its own metric coordinates (u along, v up) returning a
small-int part map (0 = empty); part k is painted with material k - 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

SKY_DEPTH = 1e8  # behind everything, in front of "nothing drawn yet" (inf)

# A shape: (u, v, px) -> int part map, where u, v are metric coordinates broadcast to the
# bounding box and px is the size of one pixel in metres there (thin parts use it to stay
# at least two pixels wide instead of vanishing between pixel centres).
ShapeFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Material:
    """How one part is coloured and which trainId it carries.

    ``rgb`` is the flat colour (what the synthetic source uses). The target domain adds a
    real-photo grey texture (luminance modulation) and/or a colour photo blended in, both
    sampled at the pixel's metric coordinates so they scale with depth like a real surface.
    ``instance`` is the object's instance number (0 for stuff); every part of one object of
    a thing class carries the same number (:meth:`Canvas.new_instance`).
    """

    label: int
    rgb: np.ndarray
    tex: np.ndarray | None = None
    strength: float = 0.0
    photo: np.ndarray | None = None
    alpha: float = 0.0
    ppm: float = 20.0  # texture pixels per metre
    offset: tuple[float, float] = (0.0, 0.0)
    shade: float = 1.0
    instance: int = 0

    def colours(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """(n,) metric coordinates -> (n, 3) float32 colours."""
        out = np.empty((u.shape[0], 3), np.float32)
        out[:] = self.rgb * self.shade
        if self.photo is not None and self.alpha > 0:
            ph = self.photo
            iy = (v * self.ppm + self.offset[1]).astype(np.int64) % ph.shape[0]
            ix = (u * self.ppm + self.offset[0]).astype(np.int64) % ph.shape[1]
            out = (1.0 - self.alpha) * out + self.alpha * self.shade * ph[iy, ix]
        if self.tex is not None and self.strength > 0:
            t = self.tex
            iy = (v * self.ppm + self.offset[1]).astype(np.int64) % t.shape[0]
            ix = (u * self.ppm + self.offset[0]).astype(np.int64) % t.shape[1]
            out *= (1.0 + self.strength * np.clip(t[iy, ix], -2.5, 2.5))[:, None]
        return out


@dataclass(frozen=True)
class Camera:
    """Pinhole camera at height ``h`` metres, focal ``f`` pixels, vanishing point (cx, hy)."""

    f: float
    cx: float
    hy: float
    h: float

    def x(self, X: float, Z: float) -> float:
        return self.cx + self.f * X / Z

    def y(self, Y: float, Z: float) -> float:
        return self.hy + self.f * (self.h - Y) / Z


@dataclass
class Canvas:
    """Colour, trainId, instance and depth buffers of one image, plus pixel-centre coordinates.

    ``inst`` holds the instance number of the material that won the z-test (0 = stuff), so an
    occluded object keeps exactly its visible pixels.
    """

    img: np.ndarray
    label: np.ndarray
    depth: np.ndarray
    inst: np.ndarray
    xc: np.ndarray = field(init=False)
    yc: np.ndarray = field(init=False)
    instances: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        h, w = self.label.shape
        self.xc = np.arange(w, dtype=np.float32) + 0.5
        self.yc = np.arange(h, dtype=np.float32) + 0.5

    @classmethod
    def empty(cls, h: int, w: int, ignore: int) -> Canvas:
        return cls(
            img=np.zeros((h, w, 3), np.float32),
            label=np.full((h, w), ignore, np.uint8),
            depth=np.full((h, w), np.inf, np.float32),
            inst=np.zeros((h, w), np.int32),
        )

    def new_instance(self) -> int:
        """A fresh instance number (1, 2, ...) for the next object of a thing class."""
        self.instances += 1
        return self.instances

    @property
    def hw(self) -> tuple[int, int]:
        return self.label.shape  # type: ignore[return-value]

    def paint(
        self,
        r0: int,
        c0: int,
        parts: np.ndarray,
        depth: np.ndarray | float,
        u: np.ndarray,
        v: np.ndarray,
        mats: Sequence[Material],
    ) -> None:
        """Z-test and write the parts of a bounding box whose top-left pixel is (r0, c0).

        ``u``, ``v`` and an array ``depth`` must have the shape of ``parts`` (views are fine).
        """
        h, w = parts.shape
        vis = parts > 0
        vis &= depth < self.depth[r0 : r0 + h, c0 : c0 + w]
        rr, cc = np.nonzero(vis)
        if rr.size == 0:
            return
        p = parts[rr, cc]
        uu, vv = u[rr, cc], v[rr, cc]
        rr += r0
        cc += c0
        present = np.flatnonzero(np.bincount(p))
        if present.size == 1:
            mat = mats[int(present[0]) - 1]
            self.img[rr, cc] = mat.colours(uu, vv)
            self.label[rr, cc] = mat.label
            self.inst[rr, cc] = mat.instance
        else:
            for k in present:
                sel = p == k
                mat = mats[int(k) - 1]
                self.img[rr[sel], cc[sel]] = mat.colours(uu[sel], vv[sel])
                self.label[rr[sel], cc[sel]] = mat.label
                self.inst[rr[sel], cc[sel]] = mat.instance
        self.depth[rr, cc] = depth if np.isscalar(depth) else depth[rr - r0, cc - c0]


def _span(a: float, b: float, n: int) -> tuple[int, int]:
    """Pixel index range [lo, hi) covering the continuous interval [a, b], clipped to [0, n)."""
    lo = max(0, int(np.floor(min(a, b))))
    hi = min(n, int(np.ceil(max(a, b))) + 1)
    return lo, hi


def billboard(
    cv: Canvas,
    cam: Camera,
    X0: float,
    Z: float,
    half_w: float,
    top: float,
    shape: ShapeFn,
    mats: Sequence[Material],
    bottom: float = 0.0,
) -> None:
    """Draw a camera-facing shape at depth Z centred on lateral X0, spanning Y in [bottom, top].

    ``shape`` gets u = X - X0 (metres, right positive) and v = Y (metres above ground).
    """
    if Z <= 0.3:
        return
    H, W = cv.hw
    c0, c1 = _span(cam.x(X0 - half_w, Z), cam.x(X0 + half_w, Z), W)
    r0, r1 = _span(cam.y(top, Z), cam.y(bottom, Z), H)
    if c1 <= c0 or r1 <= r0:
        return
    px = Z / cam.f
    u = ((cv.xc[c0:c1] - cam.cx) * px - X0)[None, :]
    v = (cam.h - (cv.yc[r0:r1] - cam.hy) * px)[:, None]
    u, v = np.broadcast_arrays(u, v)
    parts = shape(u, v, np.full(u.shape, px, np.float32))
    cv.paint(r0, c0, parts, Z, u, v, mats)


def side_plane(
    cv: Canvas,
    cam: Camera,
    Xp: float,
    z0: float,
    z1: float,
    top: float,
    shape: ShapeFn,
    mats: Sequence[Material],
    bottom: float = 0.0,
) -> None:
    """Draw a shape on the street-parallel plane X = Xp over depths [z0, z1].

    ``shape`` gets u = Z - z0 (metres along the street, away from the camera) and v = Y.
    """
    z0 = max(z0, 0.5)
    if z1 <= z0 or abs(Xp) < 0.05:  # a plane through the camera is seen edge-on
        return
    H, W = cv.hw
    c0, c1 = _span(cam.x(Xp, z0), cam.x(Xp, z1), W)
    ys = [cam.y(top, z0), cam.y(top, z1), cam.y(bottom, z0), cam.y(bottom, z1)]
    r0, r1 = _span(min(ys), max(ys), H)
    if c1 <= c0 or r1 <= r0:
        return
    dx = cv.xc[c0:c1] - cam.cx
    with np.errstate(divide="ignore", invalid="ignore"):
        Z = np.where(dx * Xp > 0, cam.f * Xp / dx, np.inf).astype(np.float32)
    Zc = np.where(np.isfinite(Z), Z, z1 + 1.0)[None, :]
    v = cam.h - (cv.yc[r0:r1, None] - cam.hy) * Zc / cam.f
    u = np.broadcast_to(Zc - z0, v.shape)
    px = np.broadcast_to(Zc / cam.f, v.shape)
    inside = (Zc >= z0) & (Zc <= z1) & (v >= bottom) & (v <= top)
    parts = np.where(inside, shape(u, v, px), 0)
    cv.paint(r0, c0, parts, np.broadcast_to(Zc, v.shape), u, v, mats)


# ---- small vectorised shape helpers (metric coordinates) -------------------------------


def seg_dist(
    u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    """Distance from points (u, v) to the segment a-b."""
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / max(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    return np.hypot(u - ax - t * dx, v - ay - t * dy)


MIN_STROKE_PX = 2.0  # thin structures (poles, bars, frames) are at least this many pixels wide


def thick(width: float, px: np.ndarray) -> np.ndarray:
    """Half-width of a stroke: its real half-width, but never under ``MIN_STROKE_PX / 2`` pixels."""
    return np.maximum(width * 0.5, 0.5 * MIN_STROKE_PX * px)


def box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def disc(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    return (u - cu) ** 2 + (v - cv) ** 2 <= r * r
