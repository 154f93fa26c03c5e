"""Edge-aware upsampling of merged masks to the frames-store resolution with the frame as guide.

The guided filter (He, Sun & Tang, ECCV 2010): in every (2r+1) x (2r+1) window the output is the least-squares
linear function a * I + b of the grey frame I that best fits the bilinearly upsampled mask (ridge `eps` on a),
averaged over the windows that cover a pixel. Where the frame has an edge, the mask's edge moves onto it; in flat
regions the mask is only smoothed. A small network predicts masks on a coarse grid (the CPU default: one cell per
10 x 10 px of the 240 x 432 frames store); the filter puts their boundaries back on the image's edges.
(opencv-contrib's ximgproc.guidedFilter is the same filter; this is the plain box-filter form, with OpenCV.)
"""

from __future__ import annotations

import cv2
import numpy as np

from lrtl.imageops import upsample


def box_mean(values: np.ndarray, radius: int) -> np.ndarray:
    """Mean over the (2 radius + 1)^2 window around every pixel, edges reflected: float32 [H, W] -> [H, W]."""
    size = (2 * radius + 1, 2 * radius + 1)
    return cv2.boxFilter(values, cv2.CV_32F, size, normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, source: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """guide float32 [H, W] (0..1), source float32 [H, W] -> the guided-filter output float32 [H, W]."""
    guide = guide.astype(np.float32)
    source = source.astype(np.float32)
    mean_i, mean_p = box_mean(guide, radius), box_mean(source, radius)
    cov_ip = box_mean(guide * source, radius) - mean_i * mean_p
    var_i = box_mean(guide * guide, radius) - mean_i * mean_i
    a = cov_ip / (var_i + eps)  # [H, W] per-window slope
    b = mean_p - a * mean_i  # [H, W] per-window offset
    return box_mean(a, radius) * guide + box_mean(b, radius)


def refine_merged(merged: np.ndarray, rgb: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """merged float [2, h, w] and the frame uint8 [H, W, 3] -> merged float32 [2, H, W]: each mask bilinearly
    upsampled to H x W, guided-filtered with the grey frame, clipped to [0, 1]."""
    height, width = rgb.shape[:2]
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0  # [H, W]
    upsampled = upsample(merged, height, width)  # [2, H, W]
    return np.stack([np.clip(guided_filter(grey, mask, radius, eps), 0.0, 1.0) for mask in upsampled])
