"""Image operations shared by the stages: resizing frames, flow fields and soft masks.

Training and inference resize frames identically (resize_rgb); the flow stage, the flo backend, the oracle and the
training loss resize flow with u, v rescaled (resize_flow); scoring and pictures upsample soft masks as the
reference evaluation does (upsample). Nothing here imports another lrtl module.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np


def resize_rgb(rgb: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3], bicubic as the reference (METHOD.md §9 step 1).

    Shared by training and inference so that both see identically resized frames (cv2 saturates to 0..255).
    """
    height, width = int(size[0]), int(size[1])
    if rgb.shape[1:3] == (height, width):
        return np.ascontiguousarray(rgb)
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC) for frame in rgb])


def resize_flow(flow: np.ndarray, height: int, width: int, *, interpolation: str = "nearest") -> np.ndarray:
    """Resize float [H, W, 2] flow to [height, width, 2] float32, u and v rescaled so that values stay in pixels.

    `nearest`: nearest neighbour, as the reference reads flow files (METHOD.md §2.2). `area`: area averaging
    when shrinking, bilinear otherwise, for the training loss flow at a reduced flow_size, where nearest
    neighbour would alias.
    """
    modes = {"nearest": (cv2.INTER_NEAREST, cv2.INTER_NEAREST), "area": (cv2.INTER_AREA, cv2.INTER_LINEAR)}
    if interpolation not in modes:
        raise ValueError(f"resize_flow: interpolation must be one of {sorted(modes)}, not {interpolation!r}")
    h0, w0 = flow.shape[:2]
    if (h0, w0) == (height, width):
        return flow.astype(np.float32, copy=False)
    shrink, enlarge = modes[interpolation]
    mode = shrink if height <= h0 and width <= w0 else enlarge
    out = cv2.resize(flow, (width, height), interpolation=mode).astype(np.float32)
    out[..., 0] *= width / w0
    out[..., 1] *= height / h0
    return out


def upsample(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of float maps [..., h, w] to [..., height, width] with torch's
    interpolate(align_corners=False), as the reference evaluation does (METHOD.md §9.3)."""
    import torch
    import torch.nn.functional as F

    flat = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32).reshape(1, -1, *masks.shape[-2:]))
    if flat.shape[-2:] != (height, width):
        flat = F.interpolate(flat, size=(height, width), mode="bilinear", align_corners=False)  # [1, N, H, W]
    return flat.numpy().reshape(*masks.shape[:-2], height, width)
