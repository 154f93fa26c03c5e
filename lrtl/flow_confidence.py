"""Where an optical flow field can be trusted: the forward-backward check, densely.

A pixel x of the flow w = F_{t->t+g} is consistent when the flow back from where it lands, ŵ = F_{t+g->t}(x + w)
(bilinear), returns it close to x (Sundaram, Brox & Keutzer, ECCV 2010, eq. 5, as the flowchain tracker checks
each step of a track):

    |w + ŵ|² < alpha (|w|² + |ŵ|²) + beta,   and x + w inside the frame.

Occluded pixels, and regions where the flow is noise (no texture: sky, road, water), fail it in either direction
more often than textured surfaces seen in both frames. The flow loss of training weights pixels by this check
(`data.flow_confidence`), so that a segment is not fitted to motion that is not there.

    ok = consistent(forward, backward)                 # bool [H, W]
    weight = consistency_weights(fields, signed, size)  # float32 [T, h, w] in [0, 1]: the fraction of pixels of
                                                        # each cell of the loss grid that pass, per frame
    trust = read_trust(path, size)                     # float32 [T, h, w]: the same for each frame's gap-1 motion
                                                       # (the motion merge of inference, `infer.motion_trust`)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
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


def consistency_weights(fields: Mapping[int, Any], signed: int, size: Sequence[int]) -> np.ndarray:
    """Per frame t, the fraction of the pixels of flow t -> t+signed that pass the check, area-averaged onto `size`
    [h, w] -> float32 [T, h, w]; 1 where the flow does not exist (the last |signed| frames of a direction, never
    used). fields: signed gap -> [T, H, W, 2] (arrays already read, or a flow store's arrays), both directions."""
    n_frames = len(fields[signed])
    height, width = int(size[0]), int(size[1])
    out = np.ones((n_frames, height, width), np.float32)  # [T, h, w]
    for t in range(max(0, -signed), min(n_frames, n_frames - signed)):
        out[t] = consistency_weights_at(fields, signed, t, (height, width))
    return out


def consistency_weights_at(fields: Mapping[int, Any], signed: int, t: int, size: Sequence[int]) -> np.ndarray:
    """consistency_weights of one frame t -> float32 [h, w]."""
    ok = consistent(fields[signed][t], fields[-signed][t + signed])
    return cv2.resize(ok.astype(np.float32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)


def read_trust(path: str | os.PathLike, size: Sequence[int]) -> np.ndarray:
    """A flow store -> the consistency of every frame's gap-1 motion at `size`, float32 [T, h, w]: of the forward
    flow t -> t+1, and for the last frame of the backward flow t -> t-1 (as lrtl.model_inputs.input_flow_field)."""
    group = stores.open_flow(path)
    n_frames = int(group.attrs["n_frames"])
    if n_frames < 2:
        return np.ones((n_frames, int(size[0]), int(size[1])), np.float32)
    fields = {1: group[stores.flow_name(1)], -1: group[stores.flow_name(-1)]}  # read frame by frame
    trust = consistency_weights(fields, 1, size)  # [T, h, w]; the last frame has no forward flow
    trust[-1] = consistency_weights_at(fields, -1, n_frames - 1, size)
    return trust
