"""The EDAPS fusion on hand-made maps, and against a loop that follows the reference code
(``get_cityscapes_instance_format_for_maskrcnn`` + ``merge_semantic_and_instance``) step by
step on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gbw.models.panoptic_fusion import fuse_panoptic, paste_instances

D = 1000
VOID = 255 * D
ROAD, BUILDING, SKY, PERSON, CAR, BICYCLE = 0, 2, 10, 11, 13, 18


def masks_of(*boxes: tuple[int, int, int, int], size: tuple[int, int] = (8, 8)) -> torch.Tensor:
    out = torch.zeros(len(boxes), *size, dtype=torch.bool)
    for i, (y1, y2, x1, x2) in enumerate(boxes):
        out[i, y1:y2, x1:x2] = True
    return out


def test_score_threshold_majority_vote_and_void_rules():
    sem = torch.full((8, 8), ROAD)
    sem[0:4, 0:4] = CAR
    sem[0:2, 0:1] = PERSON  # a minority of the mask's thing pixels
    sem[6:8, 6:8] = BICYCLE  # a thing without any detection -> void
    masks = masks_of((0, 5, 0, 4), (6, 8, 6, 8))  # car box spills 4 px onto road
    scores = torch.tensor([0.96, 0.94])  # the bicycle detection is below 0.95
    pan = fuse_panoptic(sem, masks, scores, stuff_area=4)
    # the instance takes the majority class (car, not the detector's), on its thing pixels only
    assert (pan[0:4, 0:4] == CAR * D + 1).all()  # the person pixels join the car
    assert (pan[4, 0:4] == VOID).all()  # road under the mask: neither instance nor stuff
    assert (pan[6:8, 6:8] == VOID).all()  # thing pixels without an instance
    assert (pan[5:8, 0:6] == ROAD * D).all()  # road stuff: 64 - 16 - 4 - 4 = 40 px >= 4
    assert set(pan.unique().tolist()) == {ROAD * D, CAR * D + 1, VOID}


def test_stuff_area_counts_uncovered_pixels_and_void_stays_void():
    sem = torch.full((8, 8), ROAD)
    sem[0:2, :] = SKY  # 16 px of sky, 8 of them under a mask
    sem[7, 7] = 255  # an ignore value in the semantic map: void, never road
    masks = masks_of((0, 1, 0, 8))
    pan = fuse_panoptic(sem, masks, torch.tensor([0.99]), stuff_area=9)
    assert (pan[0:2, :] == VOID).all()  # 8 uncovered sky px < 9: sky is dropped
    assert pan[7, 7] == VOID
    pan = fuse_panoptic(sem, masks, torch.tensor([0.99]), stuff_area=8)
    assert (pan[1, :] == SKY * D).all() and (pan[0, :] == VOID).all()


def test_overlaps_higher_score_wins_or_reference_order():
    sem = torch.full((8, 8), CAR)
    sem[6:8, :] = ROAD
    # a person detection (class 0) with a higher score and a car detection (class 2) below
    masks = masks_of((0, 4, 0, 6), (0, 4, 2, 8))
    scores = torch.tensor([0.99, 0.97])
    det = torch.tensor([0, 2])
    pan = fuse_panoptic(sem, masks, scores, det, stuff_area=1)
    assert (pan[0:4, 0:6] == CAR * D + 1).all()  # rank 1 keeps its whole mask
    assert (pan[0:4, 6:8] == CAR * D + 2).all()
    ref = fuse_panoptic(sem, masks, scores, det, stuff_area=1, order="reference")
    assert (ref[0:4, 0:2] == CAR * D + 1).all()  # the later class overwrites the overlap
    assert (ref[0:4, 2:8] == CAR * D + 2).all()
    # an instance wholly covered by a better one disappears; numbering stays 1, 2, ... per class
    masks = masks_of((0, 4, 0, 8), (1, 3, 1, 3), (4, 6, 0, 2))
    pan = fuse_panoptic(sem, masks, torch.tensor([0.99, 0.98, 0.97]), stuff_area=1)
    assert set(pan.unique().tolist()) == {ROAD * D, CAR * D + 1, CAR * D + 2, VOID}
    assert (pan[4:6, 0:2] == CAR * D + 2).all()  # the third detection is the second car
    with pytest.raises(ValueError, match="detector classes"):
        fuse_panoptic(sem, masks, torch.ones(3), order="reference")


def test_ids_count_per_class():
    sem = torch.full((8, 8), BUILDING)
    sem[0:2, 0:2] = CAR
    sem[0:2, 4:6] = CAR
    sem[5:7, 5:7] = PERSON
    masks = masks_of((0, 2, 0, 2), (0, 2, 4, 6), (5, 7, 5, 7))
    pan = fuse_panoptic(sem, masks, torch.tensor([0.96, 0.99, 0.97]), stuff_area=1)
    assert pan[0, 4] == CAR * D + 1 and pan[0, 0] == CAR * D + 2  # by score
    assert pan[5, 5] == PERSON * D + 1
    none = fuse_panoptic(sem, masks[:0], torch.zeros(0), stuff_area=1)
    assert (none[sem == BUILDING] == BUILDING * D).all() and (none[sem != BUILDING] == VOID).all()


# --- against the reference algorithm, written out as loops ---------------------------------


def reference_fusion(sem, masks, scores, classes, things, stuff_area, th):
    """EDAPS: instances pasted class by class (descending score within a class, as mmdet's
    per-class results), later masks overwrite; then ``merge_semantic_and_instance``."""
    h, w = sem.shape
    ins = np.zeros((h, w), dtype=np.int64)
    count = 1
    for c in range(8):
        idx = [i for i in np.argsort(-scores, kind="stable") if classes[i] == c]
        for i in idx:
            if scores[i] >= th:
                ins[masks[i]] = count
                count += 1
    pan = np.full((h, w), VOID, dtype=np.int64)
    thing_sem = np.isin(sem, things)
    tracker: dict[int, int] = {}
    for ins_id in np.unique(ins):
        if ins_id == 0:
            continue
        m = (ins == ins_id) & thing_sem
        if not m.any():
            continue
        values, counts = np.unique(sem[m], return_counts=True)
        cls = int(values[np.argmax(counts)])  # smallest class on ties
        tracker[cls] = tracker.get(cls, 0) + 1
        pan[m] = cls * D + tracker[cls]
    for c in np.unique(sem):
        if c in things:
            continue
        m = (sem == c) & (ins == 0)
        if m.sum() >= stuff_area:
            pan[m] = c * D
    return pan


@pytest.mark.parametrize("seed", range(5))
def test_reference_order_equals_the_reference_loops(seed):
    rng = np.random.default_rng(seed)
    h, w = 24, 32
    sem = rng.choice([0, 1, 2, 10, 11, 13, 13, 18], size=(h // 4, w // 4))
    sem = np.kron(sem, np.ones((4, 4), dtype=np.int64))
    n = 7
    masks = np.zeros((n, h, w), dtype=bool)
    for i in range(n):
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        masks[i, y : y + rng.integers(3, 12), x : x + rng.integers(3, 14)] = True
    scores = rng.uniform(0.9, 1.0, size=n)
    classes = rng.integers(0, 8, size=n)
    expected = reference_fusion(sem, masks, scores, classes, list(range(11, 19)), 20, 0.95)
    got = fuse_panoptic(
        torch.from_numpy(sem),
        torch.from_numpy(masks),
        torch.from_numpy(scores),
        torch.from_numpy(classes),
        stuff_area=20,
        order="reference",
    )
    assert np.array_equal(got.numpy(), expected)


def test_paste_instances_checks_shapes():
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        paste_instances(torch.zeros(4, 4, dtype=torch.bool), torch.zeros(1))
    with pytest.raises(ValueError, match="order must be"):
        paste_instances(torch.zeros(1, 4, 4, dtype=torch.bool), torch.ones(1), order="mmdet")
