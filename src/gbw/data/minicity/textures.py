"""Real-photograph textures for the MiniCity target domain, cut from ``skimage.data``.

scikit-image ships a handful of real photographs inside its wheel (no download), which gives
the "real" domain real image statistics: grass blades, gravel, brick courses, the fine
structure and colour noise of photographed cloth and reflections. The "synthetic" source
domain never sees them. Only files bundled in the wheel are used; each loader below reads
a local file and raises if it were ever missing, it never fetches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Grey textures: name -> skimage.data loader. What each stands for is set in render.py.
GREY_SOURCES: tuple[str, ...] = ("brick", "grass", "gravel", "camera", "moon")
# Colour photographs used as cloth / paint / reflection patches.
COLOUR_SOURCES: tuple[str, ...] = ("astronaut", "coffee", "chelsea", "rocket")


@dataclass(frozen=True)
class TextureBank:
    """Zero-mean, unit-std grey textures and [0, 1] colour photographs, float32."""

    grey: dict[str, np.ndarray]
    colour: dict[str, np.ndarray]


def _load(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)())


@lru_cache(maxsize=1)
def texture_bank() -> TextureBank:
    """Load (once per process) the photographs the target domain is textured with."""
    grey = {}
    for name in GREY_SOURCES:
        img = _load(name).astype(np.float32)
        if img.ndim == 3:
            img = img.mean(axis=2)
        # Normalise so a material's texture "strength" means the same for every photo.
        grey[name] = ((img - img.mean()) / max(float(img.std()), 1e-6)).astype(np.float32)
    colour = {name: _load(name)[..., :3].astype(np.float32) / 255.0 for name in COLOUR_SOURCES}
    return TextureBank(grey=grey, colour=colour)
