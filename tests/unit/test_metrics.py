"""lrtl.metrics on hand-drawn masks, DAVIS conventions, frame rules and best-of-2."""

import numpy as np
import pytest

from lrtl import metrics


def square(shape, top, left, size):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + size, left : left + size] = True
    return mask


def ellipse(cy, cx, ry, rx, shape=(120, 200)):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def test_jaccard_hand_drawn():
    a = square((20, 20), 5, 5, 10)
    b = square((20, 20), 5, 8, 10)  # 10 x 7 overlap, union 130
    assert metrics.jaccard(a, b) == pytest.approx(70 / 130)
    assert metrics.jaccard(a, a) == 1.0
    assert metrics.jaccard(a, ~a) == 0.0


def test_jaccard_empty_cases():
    empty = np.zeros((8, 8), dtype=bool)
    assert metrics.jaccard(empty, empty) == 1.0  # official DAVIS convention (METHOD §11 item 10)
    assert metrics.jaccard(square((8, 8), 1, 1, 3), empty) == 0.0
    assert metrics.jaccard(empty, square((8, 8), 1, 1, 3)) == 0.0
    # the reference convention (compat: reference): both empty -> 0; nothing else changes
    assert metrics.jaccard(empty, empty, empty=0.0) == 0.0
    assert metrics.jaccard(square((8, 8), 1, 1, 3), square((8, 8), 1, 1, 3), empty=0.0) == 1.0
    assert metrics.best_of_two(np.stack([empty, square((8, 8), 1, 1, 3)]), empty, empty=0.0) == (0.0, 0)
    assert metrics.best_of_two(np.stack([square((8, 8), 1, 1, 3), empty]), empty) == (1.0, 1)


def test_boundary_map_is_closed_outline():
    bmap = metrics.boundary_map(square((20, 20), 5, 5, 10))
    # outline of the 11 x 11 box rows 4..14, cols 4..14 (offset half a pixel towards the origin)
    assert bmap.sum() == 40
    assert bmap[4, 4:15].all() and bmap[14, 4:15].all() and bmap[4:15, 4].all() and bmap[4:15, 14].all()


def test_f_boundary_identical_is_one():
    a = ellipse(60, 90, 30, 50)
    assert metrics.f_boundary(a, a) == 1.0


def test_f_boundary_shifted_matches_hand_computation():
    # 20x20 image: tolerance ceil(0.008 * 28.3) = 1 px (a 5-pixel cross). The two 40-pixel outlines are
    # 3 columns apart: top and bottom rows match on 9 of 11 pixels each, the near side column on its 2 end
    # pixels, the far side column not at all -> 20 / 40 = 0.5 precision, and recall 0.5 by symmetry.
    a = square((20, 20), 5, 5, 10)
    b = square((20, 20), 5, 8, 10)
    assert metrics.boundary_tolerance(a.shape) == 1
    assert metrics.boundary_precision_recall(b, a) == (0.5, 0.5)
    assert metrics.f_boundary(b, a) == pytest.approx(0.5)
    assert metrics.f_boundary(b, a) < 1


def test_f_boundary_empty_conventions():
    empty = np.zeros((10, 10), dtype=bool)
    blob = square((10, 10), 2, 2, 4)
    assert metrics.f_boundary(empty, empty) == 1.0
    assert metrics.f_boundary(blob, empty) == 0.0
    assert metrics.f_boundary(empty, blob) == 0.0


# Values printed by the official davis2017-evaluation code (davis2017/metrics.py at its default branch)
# on the same masks; lrtl.metrics was also checked frame by frame against it on the OSVOS predictions the
# official repository ships, scored against the DAVIS2016 ground truth (139 frames, max |difference| 0).
GOLDEN = [
    (ellipse(60, 90, 30, 50), ellipse(64, 99, 28, 50), 0.7432847275518035, 0.25, 0.6687697160883281),
    (
        ellipse(60, 90, 30, 50),
        ellipse(40, 60, 15, 20) | ellipse(80, 150, 20, 30),
        0.11412479620572107,
        0.08484848484848485,
        0.25297619047619047,
    ),
    (
        ellipse(0, 0, 50, 80),
        ellipse(10, 5, 50, 70),
        0.809400826446281,
        0.13874854255732608,
        0.4888888888888889,
    ),
    (ellipse(20, 20, 5, 5), ellipse(100, 180, 6, 6), 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize("pred,gt,j,f,f_wide", GOLDEN)
def test_matches_official_davis_code(pred, gt, j, f, f_wide):
    assert metrics.jaccard(pred, gt) == pytest.approx(j, abs=1e-12)
    assert metrics.f_boundary(pred, gt) == pytest.approx(f, abs=1e-12)
    assert metrics.f_boundary(pred, gt, bound_th=0.03) == pytest.approx(f_wide, abs=1e-12)


def test_statistics_match_official():
    values = [0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1, 0.55, 0.45, 0.35]
    mean, recall, decay = metrics.statistics(values)
    assert mean == pytest.approx(0.48636363636363633)
    assert recall == pytest.approx(5 / 11)
    assert decay == pytest.approx(0.25)  # bin edges 0, 3, 5, 8, 10: mean(v[0:4]) - mean(v[8:11]) = 0.7 - 0.45
    assert metrics.statistics([1.0] * 8)[2] == 0.0


def test_best_of_two_picks_better_mask():
    gt = square((16, 16), 4, 4, 6)
    merged = np.stack([~gt, gt])
    assert metrics.best_of_two(merged, gt) == (1.0, 1)
    iou, index = metrics.best_of_two(np.stack([gt, np.zeros_like(gt)]), gt)
    assert (iou, index) == (1.0, 0)
    # all-foreground baseline: [ones, zeros] gives |gt| / |image|
    iou, index = metrics.best_of_two(np.stack([np.ones_like(gt), np.zeros_like(gt)]), gt)
    assert iou == pytest.approx(36 / 256) and index == 0


def test_scored_frames_rules():
    n = 6
    index = np.arange(n)
    assert metrics.scored_frames(n, index, "reference").tolist() == [False, False, True, True, True, False]
    assert metrics.scored_frames(n, index, "official").tolist() == [False, True, True, True, True, False]
    assert metrics.scored_frames(n, index, "annotated").tolist() == [True, True, True, True, True, False]
    # sparse GT (FBMS, 1-based names 1, 20, ..., 100 -> indices 0, 19, ..., 99 of 100 frames):
    # the last one is dropped
    sparse = [0, 19, 39, 59, 79, 99]
    assert metrics.scored_frames(100, sparse, "annotated").tolist() == [True] * 5 + [False]
    with pytest.raises(ValueError):
        metrics.scored_frames(n, index, "bogus")
