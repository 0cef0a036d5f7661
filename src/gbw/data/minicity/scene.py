"""Sample and draw one MiniCity street scene: ``render(domain, rng, hw) -> (image, label,
panoptic)``.

A scene is a straight street seen from a car: road (lanes, markings, sometimes crosswalks
and tram tracks), curbs and sidewalks, grass verges, facades with windows, tree lines or open
gaps, low walls and fences, poles with street lamps, traffic lights and signs, trees, and
traffic: cars, trucks, buses and trams in lanes or parked, pedestrians (sometimes in
groups or crossing), riders on bicycles/motorcycles, parked two-wheelers. Every object is
placed in metres and projected by one pinhole camera (geometry.py), so perspective scaling,
occlusion and the vanishing point are real. What differs between domains (priors, palette,
photo textures, optics) comes from domains.py; the drawing code is shared, so the only gap
between the domains is the one documented there.

Two confusable families are built on purpose, mirroring GTA5 -> Cityscapes:
  * bus / truck / train (tram): long boxes with windows or plain panels, overlapping palettes;
    the tram differs by length, articulation joints, window rhythm, pantograph and rails;
  * person / rider: the *same* figure model and clothes; a rider is seated on a two-wheeler.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gbw.data.classes import CITYSCAPES_CLASSES, IGNORE_INDEX
from gbw.data.minicity.domains import Domain, Style
from gbw.data.minicity.geometry import (
    MIN_STROKE_PX,
    SKY_DEPTH,
    Camera,
    Canvas,
    Material,
    billboard,
    box,
    disc,
    seg_dist,
    side_plane,
    thick,
)
from gbw.data.minicity.panoptic import panoptic_from_instances
from gbw.data.minicity.textures import TextureBank, texture_bank

C = {name: i for i, name in enumerate(CITYSCAPES_CLASSES)}  # name -> trainId
LANE = 3.3  # lane width, metres
Z_FAR = 160.0  # the street ends (in haze) this far away

# Depth ranges (metres, log-uniform) of the objects, shared by both domains. v2 keeps small
# objects within the distance at which a 96x192 camera still shows them with tens of pixels
# (docs/minicity.md, "Visible"); big objects (trees, lamps) may stand far away.
DEPTHS: dict[str, tuple[float, float]] = {
    "tree": (5.0, 70.0),
    "pole": (5.0, 70.0),  # plain poles and street lamps
    "signal": (4.0, 24.0),  # poles with a traffic light or a sign
    "vehicle": (4.0, 50.0),
    "vehicle_ego_lane": (7.0, 50.0),  # in front of the camera in its own lane
    "person": (3.0, 22.0),
    "rider": (4.0, 22.0),
    "parked_two_wheeler": (3.0, 25.0),
}
FRAME_MARGIN = 0.05  # small objects stand at least this share of the width inside the image


# ---- per-image look: materials and lighting ---------------------------------------------


class Look:
    """Turns material kinds into :class:`Material` for one image of one domain.

    It draws from its own child generator through a pre-drawn buffer: a scene makes ~150
    materials, and Python arithmetic on buffered numbers is cheaper than that many tiny
    numpy calls (generation time counts against the demo's few minutes).
    """

    def __init__(self, style: Style, rng: np.random.Generator, bank: TextureBank) -> None:
        self.style, self.bank = style, bank
        self._rng = np.random.default_rng(int(rng.integers(2**63)))
        self._buf: list[float] = []
        if style.realistic:
            # Random sun: each street side and the camera-facing faces lit differently.
            self.shade_left = self.uniform(0.55, 1.0)
            self.shade_right = self.uniform(0.55, 1.0)
            self.shade_front = self.uniform(0.75, 1.0)
        else:
            # Source: one fixed sun, the flat shading of a simple game engine.
            self.shade_left, self.shade_right, self.shade_front = 0.80, 1.0, 0.92

    def uniform(self, lo: float = 0.0, hi: float = 1.0) -> float:
        if not self._buf:
            self._buf = self._rng.random(1024).tolist()
        return lo + (hi - lo) * self._buf.pop()

    def side_shade(self, X: float) -> float:
        """Shade of a street-parallel face at lateral X (its normal points at the street)."""
        return self.shade_left if X < 0 else self.shade_right

    def colour(self, kind: str) -> np.ndarray:
        choices, sd = self.style.palette[kind]
        base = choices[int(self.uniform() * len(choices))]
        # Uniform jitter with standard deviation sd, per channel.
        j = sd * 3.0**0.5
        return np.array([min(max(c + self.uniform(-j, j), 0.0), 1.0) for c in base], np.float32)

    def mat(
        self,
        kind: str,
        label: int,
        shade: float = 1.0,
        rgb: np.ndarray | None = None,
        instance: int = 0,
    ) -> Material:
        tex = photo = None
        strength = alpha = 0.0
        ppm = 20.0
        if kind in self.style.textures:
            name, strength, ppm = self.style.textures[kind]
            tex = self.bank.grey[name]
            ppm *= self.uniform(0.8, 1.25)
        if kind in self.style.photos:
            names, alpha, ppm = self.style.photos[kind]
            photo = self.bank.colour[names[int(self.uniform() * len(names))]]
        offset = (
            (self.uniform(0, 1000), self.uniform(0, 1000))
            if tex is not None or photo is not None
            else (0.0, 0.0)
        )
        return Material(
            label=label,
            rgb=self.colour(kind) if rgb is None else rgb,
            tex=tex,
            strength=strength,
            photo=photo,
            alpha=alpha,
            ppm=ppm,
            offset=offset,
            shade=shade,
            instance=instance,
        )


# ---- street layout ----------------------------------------------------------------------


@dataclass
class Street:
    """Lateral layout (metres from the camera, X right) and the lanes objects may use."""

    road_l: float  # road spans X in [-road_l, road_r]
    road_r: float
    walk_l: float
    walk_r: float
    verge_l: float
    verge_r: float
    left_lanes: int
    parking_l: bool
    parking_r: bool
    tram_x: float | None
    trams: int
    crosswalk_z: float | None
    occupied: dict[float, list[tuple[float, float]]] = field(default_factory=dict)

    def edge(self, side: int) -> float:
        return self.road_r if side > 0 else self.road_l

    def walk(self, side: int) -> float:
        return self.walk_r if side > 0 else self.walk_l

    def verge(self, side: int) -> float:
        return self.verge_r if side > 0 else self.verge_l

    def reserve(self, X: float, z0: float, z1: float) -> bool:
        """Claim [z0, z1] of the lane at X for a vehicle unless it would overlap another."""
        key = round(X, 1)
        spans = self.occupied.setdefault(key, [])
        if any(z0 < b + 1.5 and a < z1 + 1.5 for a, b in spans):
            return False
        spans.append((z0, z1))
        return True


def sample_street(d: Domain, rng: np.random.Generator) -> Street:
    p = d.priors
    left_lanes = int(rng.choice(p.left_lanes))
    parking_l = bool(rng.random() < p.p_parking * 0.5)
    parking_r = bool(rng.random() < p.p_parking)
    road_r = LANE / 2 + (2.2 if parking_r else 0.3)
    road_l = LANE / 2 + LANE * left_lanes + (2.2 if parking_l else 0.3)
    trams = rng.poisson(p.trams)
    tracks = trams > 0 or rng.random() < p.p_tram_tracks
    tram_x = -LANE * float(rng.integers(0, left_lanes + 1)) if tracks else None
    street = Street(
        road_l=road_l,
        road_r=road_r,
        walk_l=float(rng.uniform(*p.sidewalk)),
        walk_r=float(rng.uniform(*p.sidewalk)),
        verge_l=float(rng.uniform(*p.verge)) if rng.random() < p.p_verge else 0.0,
        verge_r=float(rng.uniform(*p.verge)) if rng.random() < p.p_verge else 0.0,
        left_lanes=left_lanes,
        parking_l=parking_l,
        parking_r=parking_r,
        tram_x=tram_x,
        trams=int(trams),
        crosswalk_z=float(rng.uniform(6, 30)) if rng.random() < p.p_crosswalk else None,
    )
    return street


# ---- background: sky, ground, facades, walls, fences ------------------------------------


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, int]) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid bilinearly upsampled to (h, w)."""
    g = rng.random((cells[0] + 1, cells[1] + 1)).astype(np.float32)
    ys = np.linspace(0, cells[0], h, dtype=np.float32)
    xs = np.linspace(0, cells[1], w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), cells[0] - 1)
    x0 = np.minimum(xs.astype(int), cells[1] - 1)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    a, b = g[y0][:, x0], g[y0][:, x0 + 1]
    c, e = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + e * fx) * fy


def draw_sky(cv: Canvas, cam: Camera, look: Look, rng: np.random.Generator) -> None:
    H, W = cv.hw
    top, hor = look.colour("sky_top"), look.colour("sky_horizon")
    t = np.clip(cv.yc / max(cam.hy, 1.0), 0.0, 1.0)[:, None, None]
    img = (top * (1 - t) + hor * t) * np.ones((1, W, 1), np.float32)
    if look.style.realistic:
        # Clouds: soft bright blobs; real skies are rarely a clean gradient.
        cloud = np.clip((smooth_noise(rng, H, W, (3, 5)) - rng.uniform(0.3, 0.7)) * 2.5, 0, 1)
        img = img * (1 - 0.6 * cloud[..., None]) + 0.6 * cloud[..., None] * 0.92
    cv.img[:] = img
    cv.label[:] = C["sky"]
    cv.depth[:] = SKY_DEPTH


def draw_ground(cv: Canvas, cam: Camera, st: Street, look: Look) -> None:
    """The plane Y = 0 below the horizon: road, markings, rails, curbs, sidewalks, grass."""
    rows = np.nonzero(cv.yc - cam.hy > 0.25)[0]
    if rows.size == 0:
        return
    r0 = int(rows[0])
    z = (cam.f * cam.h / (cv.yc[r0:] - cam.hy))[:, None]  # depth of each ground row
    x = (cv.xc[None, :] - cam.cx) * z / cam.f  # lateral position of each ground pixel
    z = np.broadcast_to(z, x.shape)
    px = z / cam.f
    left, right = -st.road_l, st.road_r
    ROAD, MARK, RAIL, WALK, CURB, TERRAIN = 1, 2, 3, 4, 5, 6
    parts = np.full(x.shape, TERRAIN, np.int8)
    parts[(x >= left - st.walk_l) & (x <= right + st.walk_r)] = WALK
    parts[((x > right) & (x < right + 0.25)) | ((x < left) & (x > left - 0.25))] = CURB
    road = (x >= left) & (x <= right)
    parts[road] = ROAD
    w = thick(0.15, px)
    # Lane lines: dashed between same-direction lanes, solid at the centre and road edges.
    lines = np.zeros(x.shape, bool)
    centre = -LANE / 2 - (LANE if st.left_lanes >= 2 else 0.0)
    for k in range(st.left_lanes):
        xl = -LANE / 2 - LANE * k
        on = np.abs(x - xl) < w
        lines |= on & (z % 9.0 < 3.0) if abs(xl - centre) > 0.1 else on
    lines |= np.abs(x - (right - 0.35)) < w
    lines |= np.abs(x - (left + 0.35)) < w
    if st.crosswalk_z is not None:
        lines |= (z > st.crosswalk_z) & (z < st.crosswalk_z + 4.0) & ((x % 1.2) < 0.6)
    parts[road & lines] = MARK
    if st.tram_x is not None:
        rail = np.zeros(x.shape, bool)
        for dx in (-0.72, 0.72):
            rail |= np.abs(x - st.tram_x - dx) < thick(0.09, px)
        parts[road & rail] = RAIL
    mats = [
        look.mat("road", C["road"]),
        look.mat("marking", C["road"]),
        look.mat("rail", C["road"]),
        look.mat("sidewalk", C["sidewalk"]),
        look.mat("curb", C["sidewalk"]),
        look.mat("terrain", C["terrain"]),
    ]
    cv.paint(r0, 0, parts, z, x, z, mats)


def _building_shape(
    L: float, Hb: float, floor_h: float, win_sp: float, wf: float, hf: float, shop: bool
):
    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        parts = np.ones(u.shape, np.int8)
        fv = (v / floor_h) % 1.0
        fu = (u / win_sp) % 1.0
        win = (v > floor_h) & (fv > 0.3) & (fv < 0.3 + hf) & (np.abs(fu - 0.5) < wf / 2)
        win &= (v < Hb - 0.8) & (u > 0.6) & (u < L - 0.6)
        parts[win] = 2
        if shop:
            fs = (u / (2 * win_sp)) % 1.0
            parts[
                (v > 0.4)
                & (v < floor_h - 0.5)
                & (fs > 0.1)
                & (fs < 0.85)
                & (u > 0.6)
                & (u < L - 0.6)
            ] = 3
        return parts

    return shape


def _treeline_shape(Hb: float, rng: np.random.Generator):
    ph = rng.uniform(0, 2 * np.pi, 3)
    fr = rng.uniform(0.25, 0.6)

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        top = Hb * (
            0.78
            + 0.12 * np.sin(fr * u + ph[0])
            + 0.07 * np.sin(2.7 * fr * u + ph[1])
            + 0.04 * np.sin(7.1 * fr * u + ph[2])
        )
        return (v <= top).astype(np.int8)

    return shape


def draw_facades(
    cv: Canvas, cam: Camera, st: Street, d: Domain, look: Look, rng: np.random.Generator
) -> None:
    p = d.priors
    for side in (-1, 1):
        Xf = side * (st.edge(side) + st.walk(side) + st.verge(side) + rng.uniform(0.0, 1.5))
        shade = look.side_shade(Xf)
        z = float(rng.uniform(-10.0, 2.0))
        while z < Z_FAR:
            L = float(rng.uniform(*p.segment_len))
            r = rng.random()
            if r < p.p_building:
                Hb = float(rng.uniform(*p.building_height))
                shape = _building_shape(
                    L,
                    Hb,
                    rng.uniform(2.8, 3.6),
                    rng.uniform(1.8, 3.5),
                    rng.uniform(0.35, 0.6),
                    rng.uniform(0.35, 0.6),
                    bool(rng.random() < 0.4),
                )
                mats = [
                    look.mat("building", C["building"], shade),
                    look.mat("window", C["building"], shade),
                    look.mat("glass", C["building"], shade),
                ]
                side_plane(cv, cam, Xf, z, z + L, Hb, shape, mats)
            elif r < p.p_building + p.p_treeline:
                Hb = float(rng.uniform(4.0, 12.0))
                mats = [look.mat("vegetation", C["vegetation"], shade)]
                side_plane(cv, cam, Xf, z, z + L, Hb * 1.25, _treeline_shape(Hb, rng), mats)
            else:
                # An open lot: grass runs on to a distant tree line.
                Xb = Xf + side * float(rng.uniform(15.0, 40.0))
                Hb = float(rng.uniform(5.0, 12.0))
                mats = [look.mat("vegetation", C["vegetation"], shade)]
                side_plane(cv, cam, Xb, z, z + L, Hb * 1.25, _treeline_shape(Hb, rng), mats)
            z += L


def draw_walls_fences(
    cv: Canvas, cam: Camera, st: Street, d: Domain, look: Look, rng: np.random.Generator
) -> None:
    p = d.priors
    for side in (-1, 1):
        X = side * (st.edge(side) + st.walk(side) + 0.1)
        shade = look.side_shade(X)
        if rng.random() < p.p_wall:
            z0, L, h = rng.uniform(2.0, 40.0), rng.uniform(8.0, 40.0), rng.uniform(0.8, 2.6)

            def wall(u: np.ndarray, v: np.ndarray, px: np.ndarray, h: float = h) -> np.ndarray:
                return np.where(v > h - np.maximum(0.15, px), 2, 1).astype(np.int8)

            mats = [look.mat("wall", C["wall"], shade), look.mat("wall", C["wall"], shade * 1.15)]
            side_plane(cv, cam, X, z0, z0 + L, h, wall, mats)
        if rng.random() < p.p_fence:
            Xf = X + side * 0.3
            z0, L, h = rng.uniform(2.0, 50.0), rng.uniform(8.0, 40.0), rng.uniform(1.0, 2.0)
            sp = float(rng.uniform(0.15, 0.3))

            def fence(
                u: np.ndarray,
                v: np.ndarray,
                px: np.ndarray,
                h: float = h,
                sp: float = sp,
                z0: float = z0,
                Xf: float = Xf,
            ) -> np.ndarray:
                # Along the street a pixel spans more metres than up (foreshortening).
                pu = px * (u + z0) / abs(Xf)
                post = (u % 2.5) < 2 * thick(0.1, pu)
                rail = (np.abs(v - 0.2) < thick(0.06, px)) | (
                    np.abs(v - h + 0.05) < thick(0.06, px)
                )
                # Bars merge into a solid panel once they would be thinner than a stroke, as
                # a fence does in a low-resolution photograph.
                bars = ((u % sp) < 0.45 * sp) | (0.45 * sp < MIN_STROKE_PX * pu)
                return (post | rail | bars).astype(np.int8)

            side_plane(cv, cam, Xf, z0, z0 + L, h, fence, [look.mat("fence", C["fence"], shade)])


# ---- objects ------------------------------------------------------------------------------


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """Depths: near objects are as common per metre of image height as far ones."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _depth_in_view(rng: np.random.Generator, cam: Camera, width: int, X: float, kind: str) -> float:
    """A log-uniform depth from ``DEPTHS[kind]`` at which lateral position X is in the picture.

    The near end of the range moves out to where X is at least ``FRAME_MARGIN`` of the width
    inside the image border, so small objects beside the street are not drawn where the
    camera cannot see them (one draw from ``rng`` either way).
    """
    lo, hi = DEPTHS[kind]
    room = (width - cam.cx if X > 0 else cam.cx) - FRAME_MARGIN * width  # pixels to the border
    if room > 0:
        lo = max(lo, cam.f * abs(X) / room)
    return _log_uniform(rng, min(lo, 0.8 * hi), hi)


def draw_tree(
    cv: Canvas, cam: Camera, X: float, Z: float, look: Look, rng: np.random.Generator
) -> None:
    r = float(rng.uniform(1.4, 3.2))
    trunk = float(rng.uniform(1.8, 3.5))
    cy = trunk + 0.8 * r
    ph = rng.uniform(0, 2 * np.pi, 3)
    tw = float(rng.uniform(0.2, 0.4))

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        ang = np.arctan2(v - cy, u)
        rr = r * (
            1
            + 0.16 * np.sin(3 * ang + ph[0])
            + 0.10 * np.sin(5 * ang + ph[1])
            + 0.06 * np.sin(11 * ang + ph[2])
        )
        parts = np.zeros(u.shape, np.int8)
        parts[(np.abs(u) < thick(tw, px)) & (v < cy)] = 1
        parts[(u / 1.1) ** 2 + (v - cy) ** 2 < rr**2] = 2
        return parts

    mats = [
        look.mat("trunk", C["vegetation"], look.shade_front),
        look.mat("vegetation", C["vegetation"], look.shade_front),
    ]
    billboard(cv, cam, X, Z, 1.4 * r, cy + 1.3 * r, shape, mats)


def draw_pole(
    cv: Canvas,
    cam: Camera,
    X: float,
    Z: float,
    side: int,
    kind: str,
    look: Look,
    rng: np.random.Generator,
) -> None:
    """A pole (trainId pole) carrying a traffic light, a sign, a street lamp or nothing."""
    s = look.shade_front
    pw = float(rng.uniform(0.12, 0.25))
    height = {
        "light": rng.uniform(3.5, 6.0),
        "sign": rng.uniform(2.4, 3.4),
        "lamp": rng.uniform(5.0, 8.0),
        "plain": rng.uniform(2.5, 5.0),
    }[kind]
    arm = 0.0
    if kind == "lamp":
        arm = float(rng.uniform(0.8, 1.8))
    elif kind == "light" and rng.random() < 0.5:
        arm = float(rng.uniform(2.0, 5.0))  # the light hangs over the road
    inward = -side  # towards the road centre
    lamp_on = int(rng.integers(3))
    sign_shape = int(rng.integers(3))
    mats = [
        look.mat("pole", C["pole"], s),
        look.mat("light_body", C["traffic light"], s),
        look.mat("lamp", C["traffic light"], 1.0),
        look.mat("sign", C["traffic sign"], s),
        look.mat("sign_face", C["traffic sign"], s),
    ]
    lamp_dark = Material(C["traffic light"], mats[1].rgb * 1.6 + 0.05, shade=s)
    mats.append(lamp_dark)

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        parts = np.zeros(u.shape, np.int8)
        parts[(np.abs(u) < thick(pw, px)) & (v <= height)] = 1
        if arm > 0:
            ua = u * inward
            parts[(ua >= 0) & (ua <= arm) & (np.abs(v - height) < thick(0.12, px))] = 1
        if kind == "light":
            cu = inward * arm if arm > 0 else 0.0
            # A signal head with its backplate (v2: 0.56 x 1.15 m, was a bare 0.4 x 0.95 m head).
            top = height - (0.05 if arm > 0 else -1.1)
            body = box(u, v, cu - 0.28, cu + 0.28, top - 1.15, top)
            body |= (np.abs(u - cu) < thick(0.0, px)) & (v > top - 1.15) & (v < top)  # >= 2 px
            parts[body] = 2
            for k in range(3):
                lamp = disc(u, v, cu, top - 0.22 - 0.355 * k, 0.13)
                parts[body & lamp] = 3 if k == lamp_on else 6
        elif kind == "sign":
            cy, r = height - 0.35, 0.38
            if sign_shape == 0:
                outer, inner = disc(u, v, 0, cy, r), disc(u, v, 0, cy, 0.7 * r)
            elif sign_shape == 1:  # triangle, point up
                outer = (v > cy - r * 0.8) & (np.abs(u) < (cy + r - v) * 0.6)
                inner = (v > cy - r * 0.5) & (np.abs(u) < (cy + 0.6 * r - v) * 0.6)
            else:
                outer, inner = (
                    box(u, v, -r, r, cy - r, cy + r),
                    box(u, v, -0.75 * r, 0.75 * r, cy - 0.75 * r, cy + 0.75 * r),
                )
            parts[outer] = 4
            parts[inner] = 5
        elif kind == "lamp":
            parts[box(u * inward, v, arm - 0.45, arm + 0.05, height - 0.25, height + 0.05)] = 1
        return parts

    billboard(cv, cam, X, Z, max(arm, 0.0) + 0.6, height + 1.0, shape, mats)


@dataclass(frozen=True)
class VehicleKind:
    name: str
    width: tuple[float, float]
    height: tuple[float, float]
    length: tuple[float, float]


VEHICLES = {
    "car": VehicleKind("car", (1.7, 1.95), (1.35, 1.6), (3.9, 4.8)),
    "truck": VehicleKind("truck", (2.3, 2.55), (3.0, 3.9), (6.5, 10.0)),
    "bus": VehicleKind("bus", (2.45, 2.6), (2.9, 3.3), (10.5, 12.5)),
    "train": VehicleKind("train", (2.55, 2.7), (3.3, 3.7), (24.0, 40.0)),
}


def _vehicle_end(kind: str, w: float, h: float, front: bool):
    """Back (or front, for oncoming traffic) face. Parts: body, glass, tyre, lights."""
    hw = w / 2

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        au = np.abs(u)
        parts = np.zeros(u.shape, np.int8)
        if kind == "car":
            body = (au <= hw) & (v >= 0.22) & (v <= 0.55 * h + 0.15)
            cab_hw = hw * (0.92 - 0.2 * np.clip((v - 0.6 * h) / (0.4 * h), 0, 1))
            cab = (au <= cab_hw) & (v > 0.55 * h) & (v <= h)
            parts[body | cab] = 1
            parts[(au <= cab_hw - 0.12) & (v > 0.62 * h) & (v <= h - 0.08)] = 2
            parts[(au >= hw - 0.4) & (au <= hw - 0.05) & (v < 0.35)] = 3
            parts[(au >= hw - 0.38) & (au <= hw - 0.1) & (v > 0.45 * h) & (v < 0.55 * h)] = 4
        elif kind == "truck":
            parts[(au <= hw) & (v >= 0.95) & (v <= h)] = 1
            parts[(au <= hw - 0.25) & (v >= 0.35) & (v < 0.95)] = 3  # chassis: dark
            parts[(au >= hw - 0.5) & (au <= hw - 0.1) & (v < 0.5)] = 3
            parts[(au < thick(0.04, px)) & (v >= 1.1) & (v <= h - 0.1)] = 2  # door seam
            parts[(au >= hw - 0.3) & (au <= hw - 0.08) & (v > 1.0) & (v < 1.25)] = 4
            if front:  # oncoming: we see the cab instead
                parts[(au <= hw - 0.1) & (v > h - 1.6) & (v < h - 0.5)] = 2
        else:  # bus, train: one tall box with a large end window
            parts[(au <= hw) & (v >= 0.3) & (v <= h)] = 1
            lo = 0.55 * h if kind == "bus" else 0.45 * h
            parts[(au <= hw - 0.2) & (v > lo) & (v < h - 0.3)] = 2
            if kind == "bus":
                parts[(au >= hw - 0.5) & (au <= hw - 0.1) & (v < 0.45)] = 3
                parts[(au >= hw - 0.35) & (au <= hw - 0.1) & (v > 0.55) & (v < 0.8)] = 4
            else:  # a tram: a skirt hides the bogies; a pantograph rises above the roof
                parts[(au <= hw) & (v >= 0.3) & (v < 0.75)] = 4
                panto = seg_dist(u, v, (-0.5, h), (0.0, h + 0.7)) < thick(0.05, px)
                panto |= seg_dist(u, v, (0.5, h), (0.0, h + 0.7)) < thick(0.05, px)
                panto |= (np.abs(v - h - 0.7) < thick(0.05, px)) & (au < 0.7)
                parts[panto] = 1
        return parts

    return shape


def _vehicle_side(kind: str, h: float, L: float, away: bool, rng: np.random.Generator):
    """Flank of a vehicle. u runs from the near end; ``d`` is the distance from the front."""
    seg = float(rng.uniform(7.5, 10.0))  # tram articulation: one body section

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        d = L - u if away else u
        parts = np.zeros(u.shape, np.int8)
        if kind == "car":
            body = (v >= 0.22) & (v <= 0.55 * h + 0.15)
            t = np.clip((v - 0.55 * h) / (0.45 * h), 0, 1)
            cab = (v > 0.55 * h) & (v <= h) & (d > 1.0 + 0.9 * t) & (d < L - 0.5 - 0.5 * t)
            parts[body | cab] = 1
            parts[
                cab
                & (v > 0.62 * h)
                & (v < h - 0.07)
                & (d > 1.2 + 0.9 * t)
                & (d < L - 0.7 - 0.5 * t)
                & (np.abs(d - 0.5 * L) > thick(0.08, px))
            ] = 2
            for c in (0.8, L - 0.8):
                parts[disc(d, v, c, 0.32, 0.32)] = 3
        elif kind == "truck":
            parts[(v >= 0.95) & (v <= h) & (d > 2.6)] = 1  # cargo box: no windows
            parts[(v >= 0.5) & (v <= h - 0.35) & (d <= 2.3)] = 1  # cab
            parts[(v >= 1.6) & (v <= h - 0.75) & (d > 0.3) & (d < 1.6)] = 2
            parts[(v >= 0.45) & (v < 0.95) & (d > 2.3)] = 3
            for c in (1.2, L - 2.6, L - 1.3):
                parts[disc(d, v, c, 0.5, 0.5)] = 3
        elif kind == "bus":
            parts[(v >= 0.3) & (v <= h)] = 1
            band = (v > 1.25) & (v < h - 0.35) & (d > 0.4) & (d < L - 0.4)
            band &= (d % 1.45) > thick(0.16, px) * 2
            doors = (
                ((np.abs(d - 1.6) < 0.55) | (np.abs(d - L / 2) < 0.55)) & (v > 0.4) & (v < h - 0.35)
            )
            parts[band | doors] = 2
            for c in (2.5, L - 2.9):
                parts[disc(d, v, c, 0.5, 0.5)] = 3
        else:  # train / tram
            parts[(v >= 0.3) & (v <= h)] = 1
            band = (v > 1.5) & (v < h - 0.55) & (d > 0.8) & (d < L - 0.8)
            band &= (d % 2.1) > thick(0.3, px) * 2
            doors = (np.abs((d % seg) - seg / 2) < 0.65) & (v > 0.45) & (v < h - 0.45)
            parts[band | doors] = 2
            parts[((d % seg) < thick(0.35, px) * 2) & (v > 0.5)] = 3  # articulation joint
            parts[(v >= 0.3) & (v < 0.75)] = 4  # skirt over the bogies
        return parts

    return shape


def draw_vehicle(
    cv: Canvas,
    cam: Camera,
    kind: str,
    X: float,
    Z: float,
    away: bool,
    look: Look,
    rng: np.random.Generator,
    spec: tuple[float, float, float],
) -> None:
    w, h, L = spec
    label = C[kind]
    body = look.colour(kind)
    iid = cv.new_instance()  # end face and flank are one object
    # Source and target differ in which faces the sun lights; the end face uses the front shade.
    end_mats = [
        look.mat(kind, label, look.shade_front, body, iid),
        look.mat("glass", label, look.shade_front, instance=iid),
        look.mat("tyre", label, look.shade_front, instance=iid),
        look.mat("rear_light" if away else "head_light", label, 1.0, instance=iid),
    ]
    if kind == "train":  # part 4 is the skirt, not lights
        end_mats[3] = look.mat(kind, label, look.shade_front * 0.6, body, iid)
    billboard(
        cv,
        cam,
        X,
        Z,
        w / 2,
        h + (0.8 if kind == "train" else 0.0),
        _vehicle_end(kind, w, h, front=not away),
        end_mats,
    )
    # The flank facing the camera's side of the street is visible past the end face.
    if abs(X) > w / 2:
        Xp = X - np.sign(X) * w / 2
        shade = look.side_shade(-Xp)  # a flank facing the camera faces the street's centre
        side_mats = [
            look.mat(kind, label, shade, body, iid),
            look.mat("glass", label, shade, instance=iid),
            look.mat("tyre", label, shade, instance=iid),
            look.mat(kind, label, shade * 0.6, body, iid),
        ]
        side_plane(cv, cam, float(Xp), Z, Z + L, h, _vehicle_side(kind, h, L, away, rng), side_mats)


def figure_parts(
    u: np.ndarray,
    v: np.ndarray,
    px: np.ndarray,
    j: dict[str, tuple[float, float]],
    head_r: float,
    torso_w: float,
    limb_w: float,
) -> np.ndarray:
    """A human figure from joint positions: 1 = upper clothes, 2 = lower clothes, 3 = skin.

    Pedestrians and riders share this model (and the same clothes palette) on purpose:
    only the pose and the two-wheeler underneath tell a rider from a person.
    """
    parts = np.zeros(u.shape, np.int8)
    lw, tw = thick(limb_w, px), thick(torso_w, px)
    legs = (seg_dist(u, v, j["hip"], j["knee_a"]) < lw) | (
        seg_dist(u, v, j["knee_a"], j["foot_a"]) < lw
    )
    legs |= (seg_dist(u, v, j["hip"], j["knee_b"]) < lw) | (
        seg_dist(u, v, j["knee_b"], j["foot_b"]) < lw
    )
    parts[legs] = 2
    upper = seg_dist(u, v, j["hip"], j["shoulder"]) < tw
    upper |= seg_dist(u, v, j["shoulder"], j["hand"]) < thick(limb_w * 0.8, px)
    parts[upper] = 1
    parts[disc(u, v, j["head"][0], j["head"][1], max(head_r, 0.5 * float(px.flat[0])))] = 3
    parts[disc(u, v, j["hand"][0], j["hand"][1], limb_w * 0.6)] = 3
    return parts


def _mirror(
    j: dict[str, tuple[float, float]], s: float, k: float
) -> dict[str, tuple[float, float]]:
    return {n: (s * x * k, y * k) for n, (x, y) in j.items()}


def draw_person(
    cv: Canvas, cam: Camera, X: float, Z: float, look: Look, rng: np.random.Generator
) -> None:
    k = float(rng.uniform(1.1, 1.4) if rng.random() < 0.1 else rng.uniform(1.55, 1.95))
    s = float(rng.choice([-1.0, 1.0]))
    st = float(rng.uniform(0.0, 0.24))  # stride
    j = _mirror(
        {
            "head": (0.0, 0.92),
            "shoulder": (0.0, 0.81),
            "hip": (0.0, 0.52),
            "knee_a": (st * 0.3, 0.27),
            "foot_a": (st * 0.5, 0.02),
            "knee_b": (-st * 0.3, 0.27),
            "foot_b": (-st * 0.5, 0.02),
            "hand": (-st * 0.4, 0.48),
        },
        s,
        k,
    )
    iid = cv.new_instance()
    mats = [
        look.mat("cloth", C["person"], look.shade_front, instance=iid),
        look.mat("cloth", C["person"], look.shade_front, instance=iid),
        look.mat("skin", C["person"], look.shade_front, instance=iid),
    ]

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        return figure_parts(u, v, px, j, 0.068 * k, 0.19 * k, 0.085 * k)

    billboard(cv, cam, X, Z, 0.35 * k, 1.0 * k, shape, mats)


def two_wheeler_parts(
    u: np.ndarray, v: np.ndarray, px: np.ndarray, moto: bool, s: float
) -> np.ndarray:
    """Side view of a bicycle or motorcycle: 1 = frame/body, 2 = tyres."""
    u = u * s
    parts = np.zeros(u.shape, np.int8)
    if moto:
        r, cx = 0.32, 0.72
        for c in (-cx, cx):
            dd = np.hypot(u - c, v - r)
            parts[dd < r] = 2
            parts[dd < 0.45 * r] = 1
        body = ((u / 0.62) ** 2 + ((v - 0.62) / 0.24) ** 2) < 1
        body |= ((u - 0.12) / 0.32) ** 2 + ((v - 0.86) / 0.12) ** 2 < 1  # tank
        body |= box(u, v, -0.62, -0.05, 0.8, 0.9)  # seat
        body |= seg_dist(u, v, (cx, r), (0.45, 1.08)) < thick(0.07, px)  # fork
        parts[body] = 1
    else:
        r, cx = 0.34, 0.52
        ring = thick(0.06, px)
        for c in (-cx, cx):
            parts[np.abs(np.hypot(u - c, v - r) - r + ring / 2) < ring] = 2
        fw = thick(0.05, px)
        frame = np.zeros(u.shape, bool)
        pts = {
            "rear": (-cx, r),
            "crank": (0.0, 0.3),
            "seat": (-0.2, 0.88),
            "head": (0.38, 0.9),
            "front": (cx, r),
            "bar": (0.42, 1.02),
        }
        for a, b in (
            ("rear", "crank"),
            ("crank", "seat"),
            ("seat", "rear"),
            ("seat", "head"),
            ("crank", "head"),
            ("head", "front"),
            ("head", "bar"),
        ):
            frame |= seg_dist(u, v, pts[a], pts[b]) < fw
        parts[frame] = 1
    return parts


def draw_two_wheeler(
    cv: Canvas,
    cam: Camera,
    X: float,
    Z: float,
    moto: bool,
    ridden: bool,
    look: Look,
    rng: np.random.Generator,
) -> None:
    s = float(rng.choice([-1.0, 1.0]))
    label = C["motorcycle"] if moto else C["bicycle"]
    kind = "moto" if moto else "bike"
    sh = look.shade_front
    # The two-wheeler and its rider are two instances of two classes, as in Cityscapes.
    vid = cv.new_instance()
    rid = cv.new_instance() if ridden else 0
    mats = [
        look.mat(kind, label, sh, instance=vid),
        look.mat("tyre", label, sh, instance=vid),
        look.mat("cloth", C["rider"], sh, instance=rid),
        look.mat("cloth", C["rider"], sh, instance=rid),
        look.mat("moto" if moto else "skin", C["rider"], sh, instance=rid),
    ]  # helmet or face
    k = float(rng.uniform(0.92, 1.08))
    if moto:
        j = {
            "head": (0.2, 1.62),
            "shoulder": (0.1, 1.42),
            "hip": (-0.22, 0.94),
            "knee_a": (0.22, 0.78),
            "foot_a": (0.05, 0.42),
            "knee_b": (0.18, 0.8),
            "foot_b": (0.02, 0.45),
            "hand": (0.45, 1.06),
        }
    else:
        j = {
            "head": (0.2, 1.70),
            "shoulder": (0.12, 1.50),
            "hip": (-0.2, 1.0),
            "knee_a": (0.14, 0.80),
            "foot_a": (0.06, 0.28),
            "knee_b": (0.05, 0.95),
            "foot_b": (-0.08, 0.45),
            "hand": (0.42, 1.04),
        }
    j = _mirror(j, s, k)

    def shape(u: np.ndarray, v: np.ndarray, px: np.ndarray) -> np.ndarray:
        parts = two_wheeler_parts(u, v, px, moto, s)
        if ridden:
            fig = figure_parts(u, v, px, j, (0.13 if moto else 0.11) * k, 0.3 * k, 0.14 * k)
            parts = np.where(fig > 0, fig + 2, parts).astype(np.int8)
        return parts

    billboard(cv, cam, X, Z, 1.15, 1.95 if ridden else 1.2, shape, mats)


# ---- the scene ----------------------------------------------------------------------------


def _place_vehicle(
    st: Street,
    kind: str,
    rng: np.random.Generator,
    spec: tuple[float, float, float],
    cam: Camera,
    width: int,
) -> tuple[float, float, bool] | None:
    """Pick (X, Z, moving away) in a lane or parking strip without overlapping another."""
    L = spec[2]
    for _ in range(6):
        if kind == "train":
            if st.tram_x is None:
                return None
            X = st.tram_x
        else:
            slots = [-LANE * k for k in range(st.left_lanes + 1)]
            if kind in ("car", "truck"):
                if st.parking_r:
                    slots += [st.road_r - 1.1] * 2
                if st.parking_l:
                    slots += [-st.road_l + 1.1]
            X = float(slots[int(rng.integers(len(slots)))])
        kind_z = "vehicle_ego_lane" if abs(X) < 1.0 else "vehicle"
        Z = _depth_in_view(rng, cam, width, X, kind_z)
        if st.reserve(X, Z, Z + L):
            # Lanes left of the centre line carry oncoming traffic; parked cars face either way.
            centre_line = -LANE / 2 - (LANE if st.left_lanes >= 2 else 0.0)
            oncoming = bool(centre_line - X > 0.1)
            parked = abs(X - st.road_r + 1.1) < 0.05 or abs(X + st.road_l - 1.1) < 0.05
            away = bool(rng.random() < 0.5) if parked else not oncoming
            return X, Z, away
    return None


def render(
    domain: Domain, rng: np.random.Generator, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene: (H, W, 3) uint8 RGB image, (H, W) uint8 trainId label and (H, W)
    int64 panoptic ids (``trainId * 1000 + k`` for things, see :mod:`.panoptic`)."""
    H, W = hw
    p = domain.priors
    look = Look(domain.style, rng, texture_bank())
    cam = Camera(
        f=W * float(rng.uniform(*p.focal)),
        cx=W * float(0.5 + rng.uniform(-0.06, 0.06)),
        hy=H * float(rng.uniform(*p.horizon)),
        h=float(rng.uniform(*p.cam_height)),
    )
    cv = Canvas.empty(H, W, IGNORE_INDEX)
    st = sample_street(domain, rng)
    draw_sky(cv, cam, look, rng)
    draw_ground(cv, cam, st, look)
    draw_facades(cv, cam, st, domain, look, rng)
    draw_walls_fences(cv, cam, st, domain, look, rng)

    for _ in range(rng.poisson(p.trees)):
        side = int(rng.choice([-1, 1]))
        X = side * (st.edge(side) + st.walk(side) * rng.uniform(0.55, 0.95) + st.verge(side) * 0.5)
        draw_tree(cv, cam, float(X), _log_uniform(rng, *DEPTHS["tree"]), look, rng)
    for _ in range(rng.poisson(p.poles)):
        side = int(rng.choice([-1, 1]))
        r = rng.random()
        kind = (
            "light"
            if r < p.p_traffic_light
            else "sign"
            if r < p.p_traffic_light + p.p_sign
            else "lamp"
            if r < 0.75
            else "plain"
        )
        X = side * (st.edge(side) + 0.45)
        if kind in ("light", "sign"):
            Z = _depth_in_view(rng, cam, W, float(X), "signal")
        else:
            Z = _log_uniform(rng, *DEPTHS["pole"])
        draw_pole(cv, cam, float(X), Z, side, kind, look, rng)

    n = {
        "car": rng.poisson(p.cars),
        "truck": rng.poisson(p.trucks),
        "bus": rng.poisson(p.buses),
        "train": st.trams,
    }
    for kind in ("train", "bus", "truck", "car"):  # long vehicles first: they need free lanes
        vk = VEHICLES[kind]
        for _ in range(n[kind]):
            spec = (
                float(rng.uniform(*vk.width)),
                float(rng.uniform(*vk.height)),
                float(rng.uniform(*vk.length)),
            )
            placed = _place_vehicle(st, kind, rng, spec, cam, W)
            if placed is not None:
                X, Z, away = placed
                draw_vehicle(cv, cam, kind, X, Z, away, look, rng, spec)

    for _ in range(rng.poisson(p.persons)):
        side = int(rng.choice([-1, 1]))
        X = side * (st.edge(side) + rng.uniform(0.4, max(st.walk(side) - 0.3, 0.5)))
        Z = _depth_in_view(rng, cam, W, float(X), "person")
        draw_person(cv, cam, float(X), Z, look, rng)
        if rng.random() < p.p_group:
            # Companions walk beside each other (half a metre or more apart), not in a file.
            for k in range(int(rng.integers(1, 4))):
                dx = (k + 1) * float(rng.uniform(0.45, 0.8)) * (1 if k % 2 else -1)
                draw_person(cv, cam, float(X + dx), Z + float(rng.uniform(-0.8, 0.8)), look, rng)
    if st.crosswalk_z is not None:
        for _ in range(rng.poisson(p.persons * 0.4)):
            draw_person(
                cv,
                cam,
                float(rng.uniform(-st.road_l, st.road_r)),
                st.crosswalk_z + float(rng.uniform(0.5, 3.5)),
                look,
                rng,
            )
    for _ in range(rng.poisson(p.riders)):
        side = int(rng.choice([-1, 1]))
        # Riders keep to the edge of the traffic lane: beside the parking strip if there is one.
        parked = st.parking_r if side > 0 else st.parking_l
        X = side * (st.edge(side) - (2.2 + 0.7 if parked else 0.8))
        draw_two_wheeler(
            cv,
            cam,
            float(X),
            _depth_in_view(rng, cam, W, float(X), "rider"),
            bool(rng.random() < p.p_rider_motorcycle),
            True,
            look,
            rng,
        )
    for moto, rate in ((False, p.parked_bicycles), (True, p.parked_motorcycles)):
        for _ in range(rng.poisson(rate)):
            side = int(rng.choice([-1, 1]))
            X = side * (st.edge(side) + rng.uniform(0.3, 0.9))
            draw_two_wheeler(
                cv,
                cam,
                float(X),
                _depth_in_view(rng, cam, W, float(X), "parked_two_wheeler"),
                moto,
                False,
                look,
                rng,
            )

    if domain.style.realistic:
        _realistic_optics(cv, cam, rng)
    img = np.clip(cv.img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img, cv.label, panoptic_from_instances(cv.label, cv.inst)


# ---- the target's camera: light, bonnet, lens and sensor --------------------------------


def _gauss_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (radius 2) of an (H, W, C) image with edge padding."""
    k = np.exp(-0.5 * (np.arange(-2, 3) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    H, W = img.shape[:2]
    p = np.pad(img, ((2, 2), (0, 0), (0, 0)), mode="edge")
    img = sum(k[i] * p[i : i + H] for i in range(5))
    p = np.pad(img, ((0, 0), (2, 2), (0, 0)), mode="edge")
    return sum(k[i] * p[:, i : i + W] for i in range(5))


def _realistic_optics(cv: Canvas, cam: Camera, rng: np.random.Generator) -> None:
    H, W = cv.hw
    img = cv.img
    # Cast shadows (trees, buildings) as soft blobs on the ground surfaces.
    ground = np.isin(cv.label, (C["road"], C["sidewalk"], C["terrain"]))
    shadow = np.clip((smooth_noise(rng, H, W, (4, 6)) - rng.uniform(0.35, 0.65)) * 4.0, 0, 1)
    img *= (1.0 - rng.uniform(0.2, 0.5) * shadow * ground)[..., None]
    # Ego-vehicle bonnet at the bottom: Cityscapes labels it "ego vehicle" -> ignore.
    hood_h = H * rng.uniform(0.05, 0.10)
    xs = (cv.xc - cam.cx) / W
    top = H - hood_h + H * 0.25 * xs**2
    hood = cv.yc[:, None] >= top[None, :]
    paint = np.asarray(rng.uniform(0.05, 0.25, 3), np.float32)
    # Dark paint with a faint mirrored reflection of the scene above it.
    img[hood] = 0.75 * paint + 0.2 * img[::-1][hood]
    cv.label[hood] = IGNORE_INDEX
    # Exposure, white balance and the camera's tone curve.
    gains = rng.uniform(0.85, 1.1) * rng.normal(1.0, 0.035, 3).astype(np.float32)
    img = np.clip(img * gains, 0.0, 1.0) ** rng.uniform(0.8, 1.25)
    # Vignetting.
    rr = ((cv.xc[None, :] - W / 2) / (W / 2)) ** 2 + ((cv.yc[:, None] - H / 2) / (H / 2)) ** 2
    img *= (1.0 - rng.uniform(0.08, 0.3) * rr / 2.0)[..., None]
    # Lens blur, then sensor noise (luminance and a little chroma).
    img = _gauss_blur(img.astype(np.float32), float(rng.uniform(0.3, 0.65)))
    sd = rng.uniform(0.005, 0.02)
    img += rng.normal(0.0, sd, (H, W, 1)) + rng.normal(0.0, sd / 3, (H, W, 3))
    cv.img = img.astype(np.float32)
