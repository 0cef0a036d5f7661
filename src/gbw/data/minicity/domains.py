"""The two MiniCity domains: what each scene contains (priors) and how it looks (style).

Source ("synthetic", loosely GTA5-like): flat per-instance colours from a saturated
video-game palette, fixed sun, clean aliased edges, many cars and trucks, open sky, few
people. Target ("real", loosely Cityscapes-like): a muted palette, textures cut from real
photographs, random sun and white balance, cloud, cast shadows, lens blur, vignetting,
sensor noise, an ego-vehicle bonnet (ignore label, as in Cityscapes), and different class
priors: more people, riders, bicycles, buses, trams and trees; fewer cars and trucks; less
sky. The numbers below follow those two real datasets' well-known tendencies and were
adjusted against the measured class statistics and the source-only gap (docs/minicity.md);
none was tuned by running an adaptation or class-weighting method.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Priors:
    """Scene-content distributions of a domain. Ranges are uniform (lo, hi); rates Poisson."""

    focal: tuple[float, float]  # focal length as a fraction of the image width
    horizon: tuple[float, float]  # horizon row as a fraction of the image height
    cam_height: tuple[float, float]  # metres
    left_lanes: tuple[int, ...]  # number of lanes left of the ego lane (choices)
    p_parking: float  # parking lane on a side
    sidewalk: tuple[float, float]  # width, metres
    p_verge: float  # grass verge between sidewalk and facade, per side
    verge: tuple[float, float]
    segment_len: tuple[float, float]  # facade segment length, metres
    p_building: float  # facade segment kinds: building / tree line / open
    p_treeline: float
    building_height: tuple[float, float]
    p_wall: float  # per side
    p_fence: float  # per side
    p_crosswalk: float
    p_tram_tracks: float  # tracks without a tram (trams always run on tracks)
    trees: float
    poles: float
    p_traffic_light: float  # per pole
    p_sign: float  # per pole
    cars: float
    trucks: float
    buses: float
    trams: float
    persons: float
    p_group: float  # a pedestrian brings 1-3 companions
    riders: float
    p_rider_motorcycle: float
    parked_bicycles: float
    parked_motorcycles: float


@dataclass(frozen=True)
class Style:
    """How a domain renders: palettes (candidates per material kind), photo textures, optics."""

    palette: dict[str, tuple[tuple[RGB, ...], float]]  # kind -> (colour choices, jitter sd)
    textures: dict[str, tuple[str, float, float]]  # kind -> (grey photo, strength, px/metre)
    photos: dict[str, tuple[tuple[str, ...], float, float]]  # kind -> (colour photos, alpha, ppm)
    realistic: bool  # random sun/white balance, clouds, shadows, blur, noise, vignette, bonnet


@dataclass(frozen=True)
class Domain:
    name: str
    priors: Priors
    style: Style


# fmt: off
# field: (source, target). Read side by side, this table *is* the prior shift.
_PRIORS: dict[str, tuple[object, object]] = {
    "focal":              ((0.82, 0.98), (0.92, 1.08)),  # Cityscapes' lens is longer
    "horizon":            ((0.36, 0.46), (0.34, 0.42)),
    "cam_height":         ((1.3, 1.8), (1.2, 1.5)),
    "left_lanes":         ((1, 2, 2, 3), (1, 1, 2)),  # GTA5's wide roads, narrower city streets
    "p_parking":          (0.5, 0.75),
    "sidewalk":           ((2.5, 4.5), (2.0, 4.0)),
    "p_verge":            (0.45, 0.25),
    "verge":              ((1.0, 5.0), (0.8, 3.0)),
    "segment_len":        ((12.0, 35.0), (10.0, 30.0)),
    "p_building":         (0.62, 0.70),
    "p_treeline":         (0.14, 0.22),
    "building_height":    ((8.0, 30.0), (12.0, 36.0)),  # less sky in the target
    "p_wall":             (0.5, 0.3),
    "p_fence":            (0.4, 0.35),
    "p_crosswalk":        (0.15, 0.35),
    "p_tram_tracks":      (0.02, 0.20),
    "trees":              (1.6, 4.0),
    "poles":              (4.0, 6.0),
    "p_traffic_light":    (0.09, 0.18),
    "p_sign":             (0.22, 0.35),
    "cars":               (7.0, 4.5),
    "trucks":             (0.5, 0.10),
    "buses":              (0.22, 0.35),
    "trams":              (0.08, 0.18),
    "persons":            (3.5, 8.0),
    "p_group":            (0.15, 0.35),
    "riders":             (0.35, 0.80),
    "p_rider_motorcycle": (0.55, 0.20),  # Cityscapes' riders are mostly cyclists
    "parked_bicycles":    (0.20, 0.60),
    "parked_motorcycles": (0.08, 0.10),
}
SOURCE_PRIORS = Priors(**{k: v[0] for k, v in _PRIORS.items()})  # type: ignore[arg-type]
TARGET_PRIORS = Priors(**{k: v[1] for k, v in _PRIORS.items()})  # type: ignore[arg-type]

# Material kind: (source colour choices, jitter sd), (target colour choices, jitter sd).
_PALETTES: dict[str, tuple[tuple[tuple[RGB, ...], float], tuple[tuple[RGB, ...], float]]] = {
    # Source skies: clear, hazy and overcast (GTA5 has a weather cycle too).
    "sky_top": ((((0.22, 0.45, 0.92), (0.40, 0.58, 0.88), (0.60, 0.64, 0.72)), 0.03),
                (((0.58, 0.66, 0.78), (0.70, 0.72, 0.76)), 0.04)),
    "sky_horizon": ((((0.62, 0.78, 0.98), (0.80, 0.84, 0.90)), 0.03),
                    (((0.82, 0.84, 0.86),), 0.03)),
    "road": ((((0.30, 0.30, 0.33),), 0.025), (((0.40, 0.40, 0.42), (0.34, 0.35, 0.36)), 0.03)),
    "marking": ((((0.95, 0.95, 0.90),), 0.02), (((0.82, 0.82, 0.80),), 0.03)),
    "rail": ((((0.55, 0.52, 0.50),), 0.02), (((0.50, 0.48, 0.46),), 0.03)),
    "sidewalk": ((((0.66, 0.60, 0.56), (0.58, 0.58, 0.60)), 0.03),
                 (((0.56, 0.54, 0.52), (0.50, 0.48, 0.48)), 0.03)),
    "curb": ((((0.80, 0.80, 0.78),), 0.02), (((0.66, 0.66, 0.64),), 0.03)),
    "terrain": ((((0.58, 0.62, 0.28), (0.62, 0.55, 0.32)), 0.04),
                (((0.44, 0.46, 0.30), (0.50, 0.46, 0.34)), 0.04)),
    "vegetation": ((((0.15, 0.48, 0.10), (0.24, 0.54, 0.14)), 0.04),
                   (((0.22, 0.34, 0.14), (0.30, 0.40, 0.20), (0.26, 0.36, 0.22)), 0.03)),
    "trunk": ((((0.36, 0.24, 0.14),), 0.03), (((0.30, 0.26, 0.22),), 0.03)),
    "building": ((((0.78, 0.66, 0.50), (0.62, 0.30, 0.24), (0.56, 0.56, 0.60), (0.86, 0.82, 0.70),
                   (0.42, 0.46, 0.56)), 0.04),
                 (((0.62, 0.58, 0.52), (0.52, 0.42, 0.36), (0.50, 0.50, 0.52), (0.72, 0.70, 0.64),
                   (0.44, 0.44, 0.42)), 0.04)),
    "window": ((((0.14, 0.20, 0.36),), 0.03), (((0.22, 0.24, 0.27),), 0.03)),
    "wall": ((((0.62, 0.60, 0.54), (0.52, 0.46, 0.42)), 0.04),
             (((0.56, 0.56, 0.54), (0.46, 0.44, 0.42)), 0.04)),
    "fence": ((((0.46, 0.34, 0.22), (0.52, 0.52, 0.55)), 0.03),
              (((0.40, 0.38, 0.36), (0.30, 0.32, 0.30)), 0.03)),
    "pole": ((((0.34, 0.36, 0.40),), 0.03), (((0.40, 0.42, 0.42), (0.28, 0.30, 0.30)), 0.03)),
    "light_body": ((((0.14, 0.14, 0.10), (0.55, 0.45, 0.10)), 0.02),
                   (((0.16, 0.16, 0.16),), 0.02)),
    "lamp": ((((0.95, 0.10, 0.05), (1.0, 0.75, 0.05), (0.10, 0.90, 0.30)), 0.02),
             (((0.90, 0.30, 0.20), (0.95, 0.70, 0.30), (0.40, 0.90, 0.60)), 0.03)),
    "sign": ((((0.88, 0.10, 0.10), (0.10, 0.30, 0.88), (0.96, 0.84, 0.10)), 0.03),
             (((0.75, 0.18, 0.16), (0.18, 0.34, 0.68), (0.88, 0.78, 0.26)), 0.03)),
    "sign_face": ((((0.96, 0.96, 0.96),), 0.02), (((0.88, 0.88, 0.86),), 0.02)),
    "skin": ((((0.92, 0.72, 0.56), (0.64, 0.44, 0.32), (0.40, 0.26, 0.18)), 0.03),
             (((0.80, 0.64, 0.52), (0.58, 0.42, 0.34), (0.36, 0.26, 0.20)), 0.03)),
    # People wear the same kinds of clothes in both domains: the palettes overlap, the
    # source's is brighter on average and the target's darker, as in GTA5 vs Cityscapes.
    "cloth": ((((0.82, 0.12, 0.12), (0.12, 0.22, 0.72), (0.10, 0.10, 0.12), (0.92, 0.92, 0.92),
                (0.20, 0.62, 0.22), (0.92, 0.72, 0.12), (0.52, 0.36, 0.22), (0.26, 0.26, 0.30),
                (0.30, 0.34, 0.48), (0.58, 0.52, 0.44)), 0.04),
              (((0.16, 0.16, 0.20), (0.30, 0.30, 0.34), (0.48, 0.44, 0.40), (0.20, 0.24, 0.36),
                (0.56, 0.22, 0.20), (0.70, 0.70, 0.68), (0.70, 0.20, 0.18), (0.20, 0.34, 0.64),
                (0.86, 0.86, 0.82)), 0.03)),
    "car": ((((0.82, 0.10, 0.10), (0.10, 0.22, 0.72), (0.92, 0.92, 0.92), (0.10, 0.10, 0.10),
              (0.62, 0.62, 0.64), (0.92, 0.80, 0.10), (0.20, 0.50, 0.22)), 0.04),
            (((0.30, 0.30, 0.32), (0.58, 0.58, 0.60), (0.80, 0.80, 0.80), (0.10, 0.10, 0.12),
              (0.24, 0.30, 0.44), (0.50, 0.16, 0.14)), 0.03)),
    "truck": ((((0.92, 0.92, 0.90), (0.72, 0.16, 0.10), (0.20, 0.36, 0.72), (0.62, 0.62, 0.62)),
               0.03),
              (((0.80, 0.80, 0.78), (0.40, 0.44, 0.50), (0.30, 0.30, 0.30)), 0.03)),
    # Bus and train palettes overlap on purpose (the confusable pair).
    "bus": ((((0.86, 0.16, 0.10), (0.16, 0.36, 0.76), (0.96, 0.80, 0.10), (0.92, 0.92, 0.90)),
             0.03),
            (((0.86, 0.84, 0.78), (0.76, 0.60, 0.22), (0.30, 0.44, 0.58)), 0.03)),
    "train": ((((0.92, 0.92, 0.90), (0.86, 0.16, 0.10), (0.96, 0.80, 0.10), (0.72, 0.74, 0.78)),
               0.03),
              (((0.86, 0.84, 0.78), (0.70, 0.18, 0.16), (0.44, 0.50, 0.50)), 0.03)),
    "glass": ((((0.10, 0.12, 0.18),), 0.02), (((0.16, 0.18, 0.22),), 0.02)),
    "tyre": ((((0.07, 0.07, 0.07),), 0.01), (((0.10, 0.10, 0.10),), 0.01)),
    "rear_light": ((((0.85, 0.05, 0.05),), 0.02), (((0.70, 0.12, 0.10),), 0.02)),
    "head_light": ((((0.95, 0.95, 0.80),), 0.02), (((0.86, 0.86, 0.80),), 0.02)),
    "moto": ((((0.10, 0.10, 0.10), (0.76, 0.10, 0.10), (0.20, 0.22, 0.62)), 0.03),
             (((0.12, 0.12, 0.12), (0.50, 0.16, 0.14), (0.36, 0.36, 0.40)), 0.03)),
    "bike": ((((0.10, 0.10, 0.10), (0.20, 0.42, 0.82), (0.82, 0.20, 0.20), (0.82, 0.82, 0.82)),
              0.03),
             (((0.12, 0.12, 0.12), (0.30, 0.36, 0.50), (0.50, 0.22, 0.20)), 0.03)),
}

# Target only: kind -> (grey photo, strength, texture pixels per metre). The photo's
# luminance modulates the flat colour, sampled at the surface's metric coordinates.
_TARGET_TEXTURES: dict[str, tuple[str, float, float]] = {
    "road": ("gravel", 0.14, 250.0),      # fine asphalt grain
    "sidewalk": ("brick", 0.25, 60.0),    # paving
    "curb": ("moon", 0.30, 40.0),
    "terrain": ("grass", 0.40, 60.0),
    "vegetation": ("grass", 0.45, 45.0),  # leaves
    "trunk": ("gravel", 0.30, 80.0),
    "building": ("brick", 0.28, 22.0),
    "wall": ("moon", 0.45, 30.0),         # concrete
    "fence": ("gravel", 0.30, 40.0),
    "pole": ("moon", 0.25, 60.0),
    "car": ("camera", 0.18, 25.0),        # reflections in paint and glass
    "truck": ("camera", 0.15, 20.0),
    "bus": ("camera", 0.15, 20.0),
    "train": ("camera", 0.15, 20.0),
    "glass": ("camera", 0.45, 15.0),
    "window": ("camera", 0.40, 15.0),
}
# Target only: kind -> (colour photos, blend alpha, pixels per metre): patterned cloth etc.
_TARGET_PHOTOS: dict[str, tuple[tuple[str, ...], float, float]] = {
    "cloth": (("astronaut", "coffee", "chelsea", "rocket"), 0.4, 120.0),
    "skin": (("astronaut", "chelsea"), 0.25, 200.0),
    "moto": (("rocket", "coffee"), 0.30, 120.0),
    "bike": (("rocket", "coffee"), 0.30, 120.0),
}
# fmt: on

SOURCE_STYLE = Style(
    palette={k: v[0] for k, v in _PALETTES.items()}, textures={}, photos={}, realistic=False
)
TARGET_STYLE = Style(
    palette={k: v[1] for k, v in _PALETTES.items()},
    textures=_TARGET_TEXTURES,
    photos=_TARGET_PHOTOS,
    realistic=True,
)

SOURCE = Domain("source", SOURCE_PRIORS, SOURCE_STYLE)
TARGET = Domain("target", TARGET_PRIORS, TARGET_STYLE)
DOMAINS: dict[str, Domain] = {"source": SOURCE, "target": TARGET}
