"""``PanopticQuality`` against cityscapesscripts' official evaluator (``evaluatePanoptic``) and
hand-computed cases: crowd regions, void, unmatched and tiny segments, IoU at exactly 0.5,
accumulation over images, and the NaN rule for classes without segments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gbw.metrics import PanopticQuality

pytest.importorskip("cityscapesscripts")

THINGS = tuple(range(11, 19))
VOID = 255_000
D = 1000


# --- the official evaluator on gbw maps --------------------------------------------------


def _coco_segments(pan: np.ndarray, *, gt: bool) -> tuple[np.ndarray, list[dict]]:
    """A gbw map as a COCO panoptic PNG (RGB, id = R + 256 G + 256^2 B) and its segments.

    The COCO format reserves id 0 for void, and road stuff is gbw id 0, so every segment is
    written as ``gbw id + 1``; void pixels get 0."""
    rgb = np.zeros((*pan.shape, 3), dtype=np.uint8)
    segments = []
    for gid in np.unique(pan):
        if gid == VOID:
            continue
        mask = pan == gid
        cid = int(gid + 1)
        rgb[mask] = (cid % 256, cid // 256 % 256, cid // 65536)
        cls = int(gid // D)
        crowd = int(gt and cls in THINGS and gid % D == 0)
        segments.append({"id": cid, "category_id": cls, "area": int(mask.sum()), "iscrowd": crowd})
    return rgb, segments


def official(tmp: Path, gts: list[np.ndarray], preds: list[np.ndarray]) -> dict:
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
    from cityscapesscripts.helpers.labels import labels

    categories = [
        {"id": lab.trainId, "name": lab.name, "isthing": int(lab.hasInstances)}
        for lab in labels
        if not lab.ignoreInEval
    ]
    assert sorted(c["id"] for c in categories) == list(range(19))
    for kind, maps in (("gt", gts), ("pred", preds)):
        folder = tmp / kind
        folder.mkdir(parents=True, exist_ok=True)
        anns = []
        for i, pan in enumerate(maps):
            rgb, segments = _coco_segments(pan, gt=kind == "gt")
            name = f"img{i:03d}_panoptic.png"
            Image.fromarray(rgb).save(folder / name)
            anns.append({"image_id": f"img{i:03d}", "file_name": name, "segments_info": segments})
        (tmp / f"{kind}.json").write_text(
            json.dumps({"annotations": anns, "categories": categories})
        )
    return evaluatePanoptic(
        str(tmp / "gt.json"),
        str(tmp / "gt"),
        str(tmp / "pred.json"),
        str(tmp / "pred"),
        str(tmp / "result.json"),
    )


def ours(gts: list[np.ndarray], preds: list[np.ndarray]):
    metric = PanopticQuality()
    for g, p in zip(gts, preds):
        metric.update(torch.from_numpy(p), torch.from_numpy(g))
    return metric


def assert_equal_to_official(tmp: Path, gts: list[np.ndarray], preds: list[np.ndarray]):
    ref = official(tmp, gts, preds)
    m = ours(gts, preds).compute()
    for c in range(19):
        r = ref["per_class"][c]
        if math.isnan(m.pq[c]):  # no segment: the official script writes 0 and skips it
            assert (r["pq"], r["sq"], r["rq"]) == (0.0, 0.0, 0.0), c
            assert m.tp[c] == m.fp[c] == m.fn[c] == 0
            continue
        for key in ("pq", "sq", "rq"):
            assert float(getattr(m, key)[c]) == pytest.approx(r[key], abs=1e-12), (c, key)
    assert sum(not math.isnan(v) for v in m.pq.tolist()) == ref["All"]["n"]
    for which, name in (("all", "All"), ("things", "Things"), ("stuff", "Stuff")):
        n = sum(not math.isnan(float(m.pq[c])) for c in m.subset(which))
        assert n == ref[name]["n"]
        if n:
            assert m.mean("pq", which) == pytest.approx(ref[name]["pq"], abs=1e-12)
            assert m.mean("sq", which) == pytest.approx(ref[name]["sq"], abs=1e-12)
            assert m.mean("rq", which) == pytest.approx(ref[name]["rq"], abs=1e-12)
    return m


# --- random scenes -----------------------------------------------------------------------


def random_gt(rng: np.random.Generator, h: int = 48, w: int = 64) -> np.ndarray:
    """Stuff blocks, thing instances (some tiny), crowd regions and void."""
    stuff = rng.choice([0, 1, 2, 5, 8, 10], size=(h // 8 + 1, w // 8 + 1))
    pan = np.kron(stuff, np.ones((8, 8), dtype=np.int64))[:h, :w] * D
    next_k: dict[int, int] = {}
    for _ in range(int(rng.integers(3, 9))):
        cls = int(rng.choice([11, 12, 13, 13, 13, 17, 18]))
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        sh, sw = int(rng.integers(1, 14)), int(rng.integers(1, 18))  # 1-pixel segments too
        next_k[cls] = next_k.get(cls, 0) + 1
        pan[y : y + sh, x : x + sw] = cls * D + next_k[cls]
    for _ in range(int(rng.integers(0, 3))):  # crowd regions of thing classes (k = 0)
        cls = int(rng.choice([11, 13]))
        y, x = int(rng.integers(0, h - 6)), int(rng.integers(0, w - 6))
        pan[y : y + 6, x : x + int(rng.integers(3, 10))] = cls * D
    for _ in range(int(rng.integers(1, 4))):  # void
        y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 4))
        pan[y : y + int(rng.integers(1, 10)), x : x + int(rng.integers(1, 12))] = VOID
    return pan


def random_pred(rng: np.random.Generator, gt: np.ndarray) -> np.ndarray:
    """The ground truth, perturbed: shifted and relabelled segments, spurious instances,
    thing ids with k = 0, void patches and pixel noise."""
    h, w = gt.shape
    pan = np.roll(gt, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), axis=(0, 1)).copy()
    for gid in np.unique(pan):
        if gid == VOID:
            continue
        r = rng.random()
        if r < 0.15:  # wrong class
            pan[pan == gid] = int(rng.choice([0, 1, 2, 11, 13])) * D + gid % D
        elif r < 0.25 and (pan == gid).any():  # grow into the neighbourhood
            ys, xs = np.nonzero(pan == gid)
            pan[max(ys.min() - 3, 0) : ys.max() + 4, max(xs.min() - 3, 0) : xs.max() + 4] = gid
    for _ in range(int(rng.integers(0, 4))):  # spurious instances (some on void or crowd)
        cls = int(rng.choice([11, 13, 18]))
        y, x = int(rng.integers(0, h - 2)), int(rng.integers(0, w - 2))
        pan[y : y + int(rng.integers(1, 8)), x : x + int(rng.integers(1, 8))] = cls * D + 500 + _
    for _ in range(int(rng.integers(0, 3))):  # void predictions
        y, x = int(rng.integers(0, h - 3)), int(rng.integers(0, w - 3))
        pan[y : y + 3, x : x + int(rng.integers(1, 6))] = VOID
    noise = rng.random(gt.shape) < 0.02
    pan[noise] = rng.choice([0, 2, 13 * D + 1, VOID], size=int(noise.sum()))
    return pan


def test_random_scenes_equal_the_official_evaluator(tmp_path):
    rng = np.random.default_rng(0)
    gts = [random_gt(rng) for _ in range(12)]
    preds = [random_pred(rng, g) for g in gts]
    m = assert_equal_to_official(tmp_path, gts, preds)
    # the cases carry what they are meant to: matches, misses, false positives, thing classes
    assert int(m.tp.sum()) > 20 and int(m.fn.sum()) > 5 and int(m.fp.sum()) > 5
    assert int(m.tp[list(THINGS)].sum()) > 5


def test_perfect_prediction_and_one_image_at_a_time(tmp_path):
    rng = np.random.default_rng(1)
    gts = [random_gt(rng) for _ in range(3)]
    # a perfect prediction (crowd regions predicted as they are, void as void)
    m = assert_equal_to_official(tmp_path / "a", gts, [g.copy() for g in gts])
    seen = [c for c in range(19) if not math.isnan(m.pq[c])]
    assert all(float(m.pq[c]) == 1.0 for c in seen if int(m.fp[c]) == 0)
    # accumulation over update calls == one evaluation of all images (batched (B, H, W) too)
    preds = [random_pred(rng, g) for g in gts]
    whole = ours(gts, preds).compute()
    batched = PanopticQuality()
    batched.update(torch.from_numpy(np.stack(preds)), torch.from_numpy(np.stack(gts)))
    b = batched.compute()
    assert torch.equal(whole.tp, b.tp) and torch.equal(whole.fp, b.fp)
    assert torch.allclose(whole.pq, b.pq, equal_nan=True)


# --- hand-made cases ---------------------------------------------------------------------


def _canvas(h: int = 10, w: int = 10, fill: int = 0) -> np.ndarray:
    return np.full((h, w), fill, dtype=np.int64)


def test_hand_made_void_crowd_and_threshold_cases(tmp_path):
    gts, preds = [], []
    # 1) a car of 20 px; the prediction covers it plus 10 px of void: IoU = 20 / 20 = 1
    g = _canvas(fill=2 * D)
    g[0:2, 0:10] = 13 * D + 1
    g[2:3, 0:10] = VOID
    p = _canvas(fill=2 * D)
    p[0:3, 0:10] = 13 * D + 7
    gts.append(g)
    preds.append(p)
    # 2) IoU exactly 0.5 is no match: GT person 4 px, prediction 2 of them -> 2 / 4
    g = _canvas(fill=2 * D)
    g[0, 0:4] = 11 * D + 1
    p = g.copy()
    p[0, 2:4] = 2 * D
    gts.append(g)
    preds.append(p)
    # 3) unmatched predictions: on crowd of its class (not FP), on crowd of another class (FP),
    #    mostly on void (not FP), half on void (FP: "more than half" is needed)
    g = _canvas(fill=0)
    g[0:4, 0:4] = 13 * D  # car crowd
    g[6:10, 6:10] = VOID
    p = _canvas(fill=0)
    p[0:2, 0:3] = 13 * D + 1  # car on car crowd -> ignored
    p[2:4, 0:3] = 11 * D + 1  # person on car crowd -> FP (person)
    p[6:9, 6:8] = 18 * D + 1  # bicycle fully on void -> ignored
    p[5:7, 0:2] = 12 * D + 1  # rider on road GT, no void or crowd -> FP
    p[8:10, 4:8] = 17 * D + 1  # motorcycle 8 px, 4 on void -> exactly half -> FP
    gts.append(g)
    preds.append(p)
    # 4) tiny segments: a 1-pixel GT rider matched by a 1-pixel prediction, a 1-pixel GT
    #    bicycle missed; stuff sky predicted as two segments (one matches)
    g = _canvas(fill=10 * D)
    g[5, 5] = 12 * D + 1
    g[9, 9] = 18 * D + 1
    p = _canvas(fill=10 * D)
    p[5, 5] = 12 * D + 3
    p[9, 9] = 10 * D
    p[0:2, :] = 10 * D + 1  # a second sky segment: unmatched -> FP sky
    gts.append(g)
    preds.append(p)
    m = assert_equal_to_official(tmp_path, gts, preds)
    # hand counts
    assert (int(m.tp[13]), int(m.fp[13]), int(m.fn[13])) == (1, 0, 0)  # case 1; crowd ignored
    assert float(m.sq[13]) == pytest.approx(1.0)
    assert (int(m.tp[11]), int(m.fp[11]), int(m.fn[11])) == (0, 2, 1)  # cases 2 and 3
    assert (int(m.tp[18]), int(m.fp[18]), int(m.fn[18])) == (0, 0, 1)  # void pred ignored
    assert (int(m.tp[17]), int(m.fp[17])) == (0, 1)  # half on void is still a FP
    assert (int(m.tp[12]), int(m.fp[12]), int(m.fn[12])) == (1, 1, 0)
    assert (int(m.tp[10]), int(m.fp[10])) == (1, 1)
    assert math.isnan(m.pq[3]) and math.isnan(m.sq[3])  # wall: no segment anywhere
    assert float(m.sq[11]) == 0.0  # segments but no TP: SQ 0, counted in the mean
    # rider: one TP with IoU 1 and one FP -> PQ = 1 / (1 + 0.5)
    assert float(m.pq[12]) == pytest.approx(1 / 1.5)


def test_subset_means_things_stuff_and_dict():
    g = _canvas(fill=0)
    g[0:5, 0:5] = 13 * D + 1
    p = g.copy()
    metric = PanopticQuality()
    metric.update(torch.from_numpy(p), torch.from_numpy(g))
    m = metric.compute(classes=(0, 3, 13))
    assert m.mpq == 1.0 and m.mean("pq", "things") == 1.0 and m.mean("pq", "stuff") == 1.0
    assert m.subset("things") == (13,) and m.subset("stuff") == (0, 3)
    d = m.as_dict([f"c{i}" for i in range(19)])
    assert d["mPQ"] == 1.0 and d["mPQ_things"] == 1.0 and math.isnan(d["PQ/c3"])
    assert "PQ/c5" not in d


def test_bad_inputs_raise():
    metric = PanopticQuality()
    with pytest.raises(ValueError, match=r"id 20001 has class 20"):
        metric.update(torch.tensor([[20001]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="differ"):
        metric.update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=">= 0"):
        metric.update(torch.tensor([[-1]]), torch.tensor([[0]]))
    with pytest.raises(ValueError, match="integer"):
        metric.update(torch.zeros(2, 2), torch.zeros(2, 2))
