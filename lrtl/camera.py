"""The dominant (camera) motion of a frame and what moves against it.

Three estimates of the camera's flow, for the flow baseline (lrtl.baseline, `camera_model`), the track baseline
(lrtl.track_baseline, affine) and the motion merge of inference (lrtl.infer, lmeds):
- `median`: the median flow vector (a translation);
- `affine`: a least-squares affine motion v = a0 + a1 x + a2 y (per component), refitted `iterations` times on
  the points whose residual is at most the median (fit_affine). Deterministic and fast, but a start from all
  points can settle on a wrong inlier set once moving objects cover a third of the frame or more;
- `lmeds`: OpenCV's least-median-of-squares affine map between the pixel grid and its flow-displaced copy
  (cv2.estimateAffine2D, deterministic), robust up to half of the pixels moving otherwise; ~15 ms per frame at
  96x176.

    camera = camera_flow(flow, "lmeds")         # [H, W, 2]
    speed = residual_speed(flow)                # [H, W]: |flow - camera|, px (lmeds)
    speed = residual_speed(flow, "epipolar")    # [H, W]: distance from the epipolar line, px

A camera that translates sees a rigid scene move by depth: near ground fast, far hillside and sky slowly. No
affine map fits that, so under `lmeds` the depth layers themselves "move". `epipolar` measures what no rigid
scene point can do whatever its depth: leave its epipolar line. A fundamental matrix F is fitted to the whole
field by least median of squares (cv2.findFundamentalMat, FM_LMEDS, deterministic); a pixel's residual is the
distance of where it lands, x' = x + flow, from its epipolar line F x (Hartley & Zisserman, ch. 9-11). Motion
along that line is not seen, and when the camera only turns (or sees one plane) F is not determined: a still
camera fits every F, and a panning one that follows an object fits an F through which the object, still in the
image, passes for a far static point. So when the affine map already explains half the pixels to within STILL_PX
(no parallax to measure) the field keeps the `lmeds` residual.
"""

from __future__ import annotations

import cv2
import numpy as np

CAMERA_MODELS = ("median", "affine", "lmeds")
RESIDUAL_MODELS = ("lmeds", "epipolar")
EPIPOLAR_STRIDE = 3  # every 3rd pixel (row-major) of the field is a correspondence of the fundamental-matrix fit
STILL_PX = 0.2  # median lmeds residual, px at the merge's input size, below which the affine map explains the field
#                (no parallax to see). DIS flow of a panning camera sits at 0.1-0.15 (DAVIS blackswan, where 0.1 let
#                the swan pass for a far point on seed 1: J 48.8 -> 28.4); the parallax scenes at 0.25-0.75.


def fit_affine(xy: np.ndarray, velocity: np.ndarray, valid: np.ndarray, iterations: int) -> np.ndarray:
    """The dominant affine motion [N, 2] at positions xy [N, 2] (any fixed scale) of velocities [N, 2], fitted on
    the `valid` [N] points and refitted `iterations` times (at least once) on the valid ones whose residual is at
    most the median."""
    design = np.concatenate([np.ones((len(xy), 1)), xy], axis=1)  # [N, 3]
    target = velocity.astype(np.float64)  # [N, 2]
    inliers = valid.copy()
    for _ in range(max(1, iterations) + 1):
        coef, *_ = np.linalg.lstsq(design[inliers], target[inliers], rcond=None)  # [3, 2]
        fitted = design @ coef  # [N, 2]
        norm = np.linalg.norm(target - fitted, axis=1)
        inliers = valid & (norm <= np.median(norm[valid]))
    return fitted


def camera_flow(flow: np.ndarray, model: str, iterations: int = 2) -> np.ndarray:
    """Estimate of the dominant (camera) flow [H, W, 2] of a flow field [H, W, 2] (CAMERA_MODELS; `iterations`
    is read by `affine` only)."""
    if model not in CAMERA_MODELS:
        raise ValueError(f"camera model must be one of {CAMERA_MODELS}, not {model!r}")
    if model == "median":
        return np.broadcast_to(np.median(flow.reshape(-1, 2), axis=0), flow.shape)
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[:height, :width]
    if model == "lmeds":
        grid = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float32)  # [P, 2]
        matrix, _ = cv2.estimateAffine2D(grid, grid + flow.reshape(-1, 2).astype(np.float32), method=cv2.LMEDS)
        if matrix is not None:  # None when no affine map fits (e.g. a degenerate field): fall back to `affine`
            fitted = grid @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32) - grid
            return fitted.reshape(height, width, 2)
    xy = np.stack([xs.ravel() / width, ys.ravel() / height], axis=1)  # [P, 2]
    fitted = fit_affine(xy, flow.reshape(-1, 2), np.ones(height * width, dtype=bool), iterations)
    return fitted.reshape(height, width, 2).astype(np.float32)


def residual_speed(flow: np.ndarray, model: str = "lmeds") -> np.ndarray:
    """What moves against the camera [H, W] in a flow field [H, W, 2], in its pixels: |flow - camera flow| under a
    CAMERA_MODELS model, or the distance from the epipolar line (`epipolar`)."""
    if model == "epipolar":
        return epipolar_distance(flow)
    return np.linalg.norm(flow - camera_flow(flow, model), axis=-1)


def epipolar_distance(flow: np.ndarray) -> np.ndarray:
    """Distance [H, W] px of x + flow(x) from the epipolar line F x of every pixel x of a flow field [H, W, 2], F
    fitted to the field by least median of squares; the lmeds residual where the affine map fits (STILL_PX) or no F
    is found."""
    affine = residual_speed(flow, "lmeds")  # [H, W]
    if np.median(affine) < STILL_PX:
        return affine
    height, width = flow.shape[:2]
    ys, xs = np.mgrid[:height, :width]
    source = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1)  # [P, 3] homogeneous
    target = source.copy()
    target[:, :2] += flow.reshape(-1, 2)
    fit = slice(None, None, EPIPOLAR_STRIDE)
    matrix, _ = cv2.findFundamentalMat(source[fit, :2], target[fit, :2], cv2.FM_LMEDS)
    if matrix is None or matrix.shape != (3, 3):  # degenerate fields, or several solutions stacked
        return affine
    lines = source @ matrix.T  # [P, 3]: a x' + b y' + c = 0 in the target frame
    distance = np.abs((lines * target).sum(axis=1)) / np.maximum(np.hypot(lines[:, 0], lines[:, 1]), 1e-12)
    return distance.reshape(height, width).astype(np.float32)
