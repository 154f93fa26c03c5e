"""Where an optical flow field can be trusted: the forward-backward check, densely.

A pixel x of the flow w = F_{t->t+g} is consistent when the flow back from where it lands, ŵ = F_{t+g->t}(x + w)
(bilinear), returns it close to x (Sundaram, Brox & Keutzer, ECCV 2010, eq. 5, as the flowchain tracker checks
each step of a track):

    |w + ŵ|² < alpha (|w|² + |ŵ|²) + beta,   and x + w inside the frame.

Occluded pixels, and regions where the flow is noise (no texture: sky, road, water), fail it in either direction
more often than textured surfaces seen in both frames. The flow loss of training weights pixels by this check
(`data.flow_confidence`), so that a segment is not fitted to motion that is not there.

    ok = consistent(forward, backward)                 # bool [H, W]
    weight = consistency_weights(group, signed, size)  # float32 [T, h, w] in [0, 1]: the fraction of pixels of
                                                       # each cell of the loss grid that pass, per frame
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from lrtl import stores

FB_ALPHA = 0.01  # Sundaram et al. 2010 (and tracks.flowchain.fb_alpha)
FB_BETA = 0.5  # px², at the flow store's resolution (and tracks.flowchain.fb_beta)


def consistent(forward: np.ndarray, backward: np.ndarray, alpha: float = FB_ALPHA, beta: float = FB_BETA
               ) -> np.ndarray:
    """Forward-backward check of forward flow [H, W, 2] (t -> t+g) against backward flow [H, W, 2] (t+g -> t)
    -> bool [H, W]."""
    height, width = forward.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    map_x, map_y = xs + forward[..., 0], ys + forward[..., 1]  # [H, W] each: where x lands in t+g
    back = cv2.remap(backward.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)  # [H, W, 2]
    inside = (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    error = np.sum((forward + back) ** 2, axis=-1)
    scale = np.sum(forward**2, axis=-1) + np.sum(back**2, axis=-1)
    return inside & (error < alpha * scale + beta)


def consistency_weights(group: Any, signed: int, size: Sequence[int]) -> np.ndarray:
    """Per frame t of a flow store, the fraction of the pixels of flow t -> t+signed that pass the check, area-
    averaged onto `size` [h, w] -> float32 [T, h, w]; 1 where the flow does not exist (the last |signed| frames
    of a direction, never used)."""
    n_frames = int(group.attrs["n_frames"])
    height, width = int(size[0]), int(size[1])
    out = np.ones((n_frames, height, width), np.float32)  # [T, h, w]
    forward_all = group[stores.flow_name(signed)]
    backward_all = group[stores.flow_name(-signed)]
    for t in range(max(0, -signed), min(n_frames, n_frames - signed)):
        ok = consistent(forward_all[t], backward_all[t + signed]).astype(np.float32)  # [H, W]
        out[t] = cv2.resize(ok, (width, height), interpolation=cv2.INTER_AREA)
    return out
