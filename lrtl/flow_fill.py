"""Flow where the image has no texture: measure the texture, fill the flow there from the textured pixels around.

DIS matches patches; on a flat patch (sky, white walls, blown-out road) every displacement matches equally well and
its flow is noise, often several times the true motion (on the parallax scenes of lrtl.parallax the sky's DIS flow
is 13-17 px where the exact flow is 3-4 px). The forward-backward check passes about half of it: noise that is
consistent in both directions. What marks such a patch is its structure tensor (Harris & Stephens 1988; Shi &
Tomasi 1994): a patch fixes a displacement only when the gradient varies in two directions, i.e. when the tensor's
smaller eigenvalue is large. `texture_strength` is its square root, a grey-level slope (grey levels 0..1 per px):

    J = G_sigma * [gx², gx gy; gx gy, gy²],   strength = sqrt(lambda_min(J))

The fill is a push-pull interpolation (Gortler et al., SIGGRAPH 1996): weighted values are area-averaged down a
pyramid until every cell has support, then pulled back up, each level keeping its own weighted mean where it has
enough weight and the coarser estimate elsewhere. A textured pixel (weight 1) keeps its flow exactly; an untextured
region takes a smooth blend of the flow of the textured pixels around it, nearer ones weighing more.

    strength = texture_strength(gray)              # float32 [H, W], grey levels per px
    flow = fill_untextured(flow, gray, min_slope)  # float32 [H, W, 2]
    textured = textured_fraction(rgb, (h, w), min_slope)  # float32 [T, h, w]: the motion merge (lrtl.infer)
"""

from __future__ import annotations

import cv2
import numpy as np

TEXTURE_SIGMA_PX = 4.0  # Gaussian window of the structure tensor, px (about the 8 px patches of DIS's presets)
COARSEST_PX = 2  # the pyramid stops when a side would fall below this
FULL_SUPPORT = 0.5  # a pyramid cell with this fraction of weight (or more) keeps its own mean, fully


def texture_strength(gray: np.ndarray, sigma: float = TEXTURE_SIGMA_PX) -> np.ndarray:
    """Square root of the smaller eigenvalue of the structure tensor of a grey image uint8 [H, W] -> float32 [H, W],
    in grey levels (0..1) per px: 0 on a flat patch or a straight edge, the local slope on a corner or texture."""
    image = gray.astype(np.float32) / 255.0  # [H, W]
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # [H, W] slope per px (the 3x3 Sobel sums 8 units)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    jxx = cv2.GaussianBlur(gx * gx, (0, 0), sigma)
    jyy = cv2.GaussianBlur(gy * gy, (0, 0), sigma)
    jxy = cv2.GaussianBlur(gx * gy, (0, 0), sigma)
    smaller = 0.5 * (jxx + jyy - np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2))  # [H, W]
    return np.sqrt(np.maximum(smaller, 0.0)).astype(np.float32)


def push_pull(values: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Fill values float [H, W, C] where weight float [H, W] in [0, 1] is low from where it is high -> float32
    [H, W, C]. Where weight >= FULL_SUPPORT the value is kept; a weight of 0 everywhere gives zeros."""
    weight = weight.astype(np.float32)
    weighted = values.astype(np.float32) * weight[..., None]  # [H, W, C]
    levels = []
    while min(weight.shape) >= 2 * COARSEST_PX:
        levels.append((weighted, weight))
        size = ((weight.shape[1] + 1) // 2, (weight.shape[0] + 1) // 2)  # (w, h) for OpenCV
        weighted = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    total = weight.sum()
    overall = weighted.reshape(-1, weighted.shape[-1]).sum(axis=0) / total if total > 0 else 0.0  # [C]
    estimate = np.where(weight[..., None] > 0, weighted / np.maximum(weight, 1e-12)[..., None], overall)
    for weighted, weight in reversed(levels):
        coarse = cv2.resize(estimate, (weight.shape[1], weight.shape[0]), interpolation=cv2.INTER_LINEAR)
        coarse = coarse.reshape(weight.shape[0], weight.shape[1], -1)  # [h, w, C]
        own = weighted / np.maximum(weight, 1e-12)[..., None]
        keep = np.clip(weight / FULL_SUPPORT, 0.0, 1.0)[..., None]  # [h, w, 1]
        estimate = keep * own + (1.0 - keep) * coarse
    return estimate.astype(np.float32)


def textured_pixels(gray: np.ndarray, min_slope: float) -> np.ndarray:
    """1 where a grey image uint8 [H, W] has a texture_strength of at least min_slope, else 0 -> float32 [H, W]."""
    return (texture_strength(gray) >= min_slope).astype(np.float32)


def fill_untextured(flow: np.ndarray, gray: np.ndarray, min_slope: float) -> np.ndarray:
    """Flow float32 [H, W, 2] of a frame gray uint8 [H, W] with the pixels whose texture_strength is below min_slope
    filled from the others (push_pull) -> float32 [H, W, 2]; unchanged where textured, or if min_slope <= 0."""
    if min_slope <= 0:
        return flow
    textured = textured_pixels(gray, min_slope)  # [H, W]
    if textured.all() or not textured.any():
        return flow
    return push_pull(flow, textured)


def textured_fraction(rgb: np.ndarray, size: tuple[int, int], min_slope: float) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] -> float32 [T, h, w] at size (h, w): the fraction of each cell's pixels whose
    texture_strength is at least min_slope (area averaging), i.e. where a flow field can fix a displacement."""
    height, width = int(size[0]), int(size[1])
    return np.stack([
        cv2.resize(textured_pixels(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), min_slope), (width, height),
                   interpolation=cv2.INTER_AREA)
        for frame in rgb
    ]).astype(np.float32)
