"""Segmentation measures and frame-selection rules of the evaluation protocol (METHOD.md §9).

Region similarity J and boundary F follow the definitions of the official DAVIS evaluation
(davisvideochallenge/davis2017-evaluation `davis2017/metrics.py`: `db_eval_iou`, `db_eval_boundary`,
`_seg2bmap`; `davis2017/utils.py`: `db_statistics`), re-implemented here from those definitions:

- J = |P ∩ G| / |P ∪ G|, and 1 when both masks are empty (METHOD.md §11 item 10; the reference's 0 is
  `empty=0.0`, chosen by lrtl.evaluate for `compat: reference` runs).
- F: one-pixel boundary maps of both masks (a pixel is a boundary pixel when it differs from its east,
  south or south-east neighbour, with the last row / column compared only along the image edge), each
  dilated by a disk of radius ceil(bound_th * image diagonal) pixels; precision = fraction of predicted
  boundary pixels within that distance of the GT boundary, recall the converse; F = 2PR / (P + R). Empty
  boundaries follow the official conventions (both empty -> F = 1; exactly one empty -> F = 0).
- Statistics of a per-frame series: mean, recall (fraction of frames > 0.5) and decay (mean of the first
  quarter minus mean of the last quarter, with the official bin edges).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

FRAME_RULES = ("reference", "official", "annotated")


def jaccard(pred: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> float:
    """Region similarity of two boolean masks [H, W]; `empty` when both are empty.

    empty = 1.0 is the official DAVIS convention (lrtl default); the GWM/LRTL reference scores 0.0
    (METHOD.md §11 item 10, `compat: reference`).
    """
    pred, gt = _as_bool_pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return float(empty)
    return float(np.count_nonzero(pred & gt) / union)


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a boolean mask [H, W] (DAVIS `_seg2bmap` at the mask's own size)."""
    seg = np.asarray(seg, dtype=bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    # Along the last row only the east neighbour exists, along the last column only the south one.
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def disk(radius: int) -> np.ndarray:
    """Disk footprint uint8 [2r+1, 2r+1]: offsets with x² + y² <= r² (skimage.morphology.disk)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_tolerance(shape: Sequence[int], bound_th: float = 0.008) -> int:
    """Dilation radius in pixels: bound_th itself when >= 1, else ceil(bound_th * image diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(*shape[:2])))


def boundary_precision_recall(
    pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008
) -> tuple[float, float]:
    """(precision, recall) of the predicted boundary against the GT boundary (DAVIS empty conventions)."""
    pred, gt = _as_bool_pair(pred, gt)
    footprint = disk(boundary_tolerance(pred.shape, bound_th))
    pred_b = boundary_map(pred)
    gt_b = boundary_map(gt)
    n_pred = int(np.count_nonzero(pred_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_pred == 0 and n_gt == 0:
        return 1.0, 1.0
    if n_pred == 0:
        return 1.0, 0.0
    if n_gt == 0:
        return 0.0, 1.0
    pred_near = cv2.dilate(pred_b.astype(np.uint8), footprint).astype(bool)
    gt_near = cv2.dilate(gt_b.astype(np.uint8), footprint).astype(bool)
    precision = np.count_nonzero(pred_b & gt_near) / n_pred
    recall = np.count_nonzero(gt_b & pred_near) / n_gt
    return float(precision), float(recall)


def f_boundary(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure of two boolean masks [H, W] (DAVIS `db_eval_boundary`)."""
    precision, recall = boundary_precision_recall(pred, gt, bound_th)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def statistics(per_frame: Sequence[float]) -> tuple[float, float, float]:
    """(mean, recall, decay) of a per-frame series in frame order (DAVIS `db_statistics`).

    Recall is the fraction of frames with a value > 0.5. Decay is the mean over the first of four
    temporal bins minus the mean over the last; bin edges are round(linspace(1, n, 5)) - 1, each bin
    including its end edge. NaN values are ignored.
    """
    values = np.asarray(per_frame, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    finite = ~np.isnan(values)
    mean = float(np.mean(values[finite])) if finite.any() else math.nan
    recall = float(np.mean(values[finite] > 0.5)) if finite.any() else math.nan
    edges = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    bins = [values[edges[i] : edges[i + 1] + 1] for i in range(4)]
    decay = _nanmean(bins[0]) - _nanmean(bins[3])
    return mean, recall, decay


def best_of_two(merged_bin: np.ndarray, gt: np.ndarray, empty: float = 1.0) -> tuple[float, int]:
    """(IoU, index) of the better of the two binary merged masks [2, H, W] against gt [H, W] (METHOD.md §9.3).

    Ties go to index 0; `empty` is the IoU of an empty mask against an empty gt (see jaccard).
    """
    if merged_bin.shape[0] != 2:
        raise ValueError(f"best_of_two expects 2 masks, got {merged_bin.shape[0]}")
    ious = [jaccard(merged_bin[i], gt, empty) for i in range(2)]
    index = int(ious[1] > ious[0])
    return ious[index], index


def scored_frames(n_frames: int, gt_index: Sequence[int], rule: str) -> np.ndarray:
    """Which annotated frames are scored under `rule`: bool [A] aligned with gt_index (METHOD.md §9.4).

    Every rule scores only frames with a gap-1 forward flow, so never the last frame N-1.
    - `reference`: the GWM/LRTL evaluation on DAVIS, frames 2 .. N-2 (names <= 1 dropped).
    - `official`: the official DAVIS 2016 rule, frames 1 .. N-2.
    - `annotated`: every annotated frame except the last frame (SegTrackv2, FBMS sparse GT).
    """
    index = np.asarray(gt_index, dtype=np.int64)
    first = {"reference": 2, "official": 1, "annotated": 0}.get(rule)
    if first is None:
        raise ValueError(f"unknown frame rule {rule!r}; expected one of {FRAME_RULES}")
    return (index >= first) & (index <= n_frames - 2)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(np.mean(finite)) if finite.size else math.nan


def _as_bool_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred).astype(bool)
    gt = np.asarray(gt).astype(bool)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"masks must be 2-D of equal shape, got {pred.shape} and {gt.shape}")
    return pred, gt
