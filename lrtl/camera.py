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
"""

from __future__ import annotations

import cv2
import numpy as np

CAMERA_MODELS = ("median", "affine", "lmeds")


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
    """|flow - camera flow| [H, W] of a flow field [H, W, 2], in its pixels."""
    return np.linalg.norm(flow - camera_flow(flow, model), axis=-1)
