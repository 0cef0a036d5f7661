"""MiniCity: the embedded synthetic-to-real street-scene benchmark (see docs/minicity.md).

A procedural domain pair drawn with real perspective: a flat-shaded "synthetic" source with
GTA5-like class priors and a photo-textured, noisy, blurred "real" target with
Cityscapes-like priors, 19 Cityscapes trainIds, strong source imbalance and built-in
confusable pairs (train vs bus/truck, rider vs person). Generated once, cached on disk.

    from gbw.data.minicity import MiniCity, ensure_minicity
    path = ensure_minicity(root, seed=0, size="default")   # ~30 s of CPU the first time
    ds = MiniCity("source_train", root)                    # image (3,H,W) float, label (H,W)
    pan = MiniCity("source_train", root, with_panoptic=True)[0]["panoptic"]  # trainId*1000+k
"""

from __future__ import annotations

from gbw.data.minicity.cache import (
    SIZES,
    SPLITS,
    VERSION,
    Size,
    default_root,
    ensure_minicity,
    load_class_stats,
    minicity_dir,
)
from gbw.data.minicity.dataset import MiniCity
from gbw.data.minicity.stats import (
    CONFUSABLE_PAIRS,
    EVAL_CLASSES,
    PRIOR_SHIFT,
    SOURCE_UNDER_1PCT,
    ClassRow,
    class_table,
    describe,
    render_counts,
)

__all__ = [
    "CONFUSABLE_PAIRS",
    "EVAL_CLASSES",
    "PRIOR_SHIFT",
    "SIZES",
    "SOURCE_UNDER_1PCT",
    "SPLITS",
    "VERSION",
    "ClassRow",
    "MiniCity",
    "Size",
    "class_table",
    "default_root",
    "describe",
    "ensure_minicity",
    "load_class_stats",
    "minicity_dir",
    "render_counts",
]
