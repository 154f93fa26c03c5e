"""What the small network sees: RGB, optical flow, or both (`model.backbone.inputs`).

The paper's network sees RGB only (a frozen DINO ViT). A small network trained from scratch on a CPU learns
little from RGB on real video: it splits frames by position and colour. Given the flow as well, it segments
by motion, as MotionGrouping's flow-only network does (Yang et al., ICCV 2021). The flow input of frame t is

1. the gap-1 forward flow t -> t+1 of the flow store; the last frame, which has none, takes the backward
   flow t -> t-1 negated (the nearest estimate of its forward motion);
2. resized to the model input size (area averaging), pixels rescaled to that size;
3. the per-frame median flow vector subtracted (the dominant, usually camera, translation);
4. divided by a per-frame scale, the 95th percentile of the remaining magnitude, at least `MIN_SCALE` px (so
   that a static frame is not blown up into noise), and clipped to +-`CLIP`.

Steps 3-4 make the input invariant to the camera's translation and to the speed of the scene, which vary more
across real videos than anything the network could learn from a few of them. (Removing the camera's full affine
motion instead, as the motion merge does, scored the same on DAVIS2016-dev: J 46.1 vs 46.6.)

The motion merge of inference (lrtl.infer) reads each frame's speed against the camera (read_residual_speed): the
same flow at the input size against the camera: minus the frame's dominant affine motion (lrtl.camera, lmeds), or
its distance from the epipolar lines (epipolar; `infer.motion_residual`).

    inputs = input_kinds(model_cfg)                  # ("rgb",) | ("flow",) | ("rgb", "flow")
    motion = read_motion(flow_store, size)           # float32 [T, h, w, 2], px at size: the store read once
    flow = input_flow_of(motion)                     # float32 [T, 2, h, w] when "flow" in inputs
    speed = residual_speed_of(motion, "lmeds")       # float32 [T, h, w], px at size (the motion merge)
    x = model_input(rgb_uint8, flow[batch], inputs)  # float32 [B, C, h, w], C = 3 (rgb) + 2 (flow)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from lrtl.camera import residual_speed
from lrtl.imageops import resize_flow
from lrtl.stores import open_flow, read_flow

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

INPUT_KINDS = ("rgb", "flow")
CHANNELS = {"rgb": 3, "flow": 2}
MIN_SCALE = 0.5  # px at the model input size: the smallest flow scale a frame is normalised by
CLIP = 3.0  # normalised flow is clipped to +-CLIP


def normalize_images(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [B, H, W, 3] in 0..255 (uint8 or float) -> float32 [B, 3, H, W] with ImageNet mean/std."""
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"normalize_images expects [B, H, W, 3], got {tuple(rgb.shape)}")
    images = rgb.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


def input_kinds(model_cfg: Mapping[str, Any]) -> tuple[str, ...]:
    """The inputs of a model cfg (train params' `model` section): backbone.inputs, ("rgb",) when absent or null
    (the DINO backbone, whose inputs the workflow passes as null)."""
    inputs = (model_cfg.get("backbone") or {}).get("inputs")
    return check_inputs(inputs) if inputs else ("rgb",)


def check_inputs(inputs: Sequence[str]) -> tuple[str, ...]:
    unknown = [kind for kind in inputs if kind not in INPUT_KINDS]
    if unknown or not inputs or len(set(inputs)) != len(inputs):
        raise ValueError(
            f"model.backbone.inputs must list each of {INPUT_KINDS} at most once (at least one), got {list(inputs)}"
        )
    return tuple(kind for kind in INPUT_KINDS if kind in inputs)  # canonical order: rgb channels first


def in_channels(inputs: Sequence[str]) -> int:
    return sum(CHANNELS[kind] for kind in check_inputs(inputs))


def uses_flow(model_cfg: Mapping[str, Any]) -> bool:
    return "flow" in input_kinds(model_cfg)


def encode_flow(flow: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """One frame's flow float [H, W, 2] in pixels -> the network's flow input float32 [2, h, w] (steps 2-4)."""
    return encode_resized(resize_flow(np.asarray(flow, np.float32), int(size[0]), int(size[1]), interpolation="area"))


def encode_resized(resized: np.ndarray) -> np.ndarray:
    """Steps 3-4 on one frame's flow already at the input size, float32 [h, w, 2] px -> float32 [2, h, w]."""
    residual = resized - np.median(resized.reshape(-1, 2), axis=0)  # [h, w, 2]
    scale = max(float(np.percentile(np.linalg.norm(residual, axis=-1), 95)), MIN_SCALE)
    return np.clip(residual / scale, -CLIP, CLIP).transpose(2, 0, 1).astype(np.float32)


def input_flow_field(group: Any, t: int) -> np.ndarray:
    """Step 1: the flow field [H, W, 2] that represents frame t's motion (a flow store opened by lrtl.stores)."""
    n_frames = int(group.attrs["n_frames"])
    if n_frames < 2:
        return np.zeros((group.attrs["height"], group.attrs["width"], 2), np.float32)
    if t < n_frames - 1:
        return read_flow(group, 1, t)
    return -read_flow(group, -1, t)


def read_motion(path: str | os.PathLike, size: Sequence[int]) -> np.ndarray:
    """A flow store -> every frame's flow (steps 1-2) float32 [T, h, w, 2] at `size`, px at that size: read once,
    then encoded for the network (input_flow_of) and / or measured against the camera (residual_speed_of)."""
    group = open_flow(path)
    height, width = int(size[0]), int(size[1])
    return np.stack([
        resize_flow(input_flow_field(group, t), height, width, interpolation="area")
        for t in range(int(group.attrs["n_frames"]))
    ])


def input_flow_of(motion: np.ndarray) -> np.ndarray:
    """read_motion's [T, h, w, 2] -> the network's flow input float32 [T, 2, h, w]."""
    return np.stack([encode_resized(field) for field in motion])


def residual_speed_of(motion: np.ndarray, model: str = "lmeds") -> np.ndarray:
    """read_motion's [T, h, w, 2] -> every frame's speed against the camera float32 [T, h, w], px, under a
    lrtl.camera.RESIDUAL_MODELS model."""
    return np.stack([residual_speed(field, model) for field in motion]).astype(np.float32)


def read_input_flow(path: str | os.PathLike, size: Sequence[int]) -> np.ndarray:
    """A flow store -> the flow input of every frame, float32 [T, 2, h, w] at `size` (the model input size)."""
    return input_flow_of(read_motion(path, size))


def read_residual_speed(path: str | os.PathLike, size: Sequence[int], model: str = "lmeds") -> np.ndarray:
    """A flow store -> every frame's speed against the camera float32 [T, h, w] at `size` (px at that size)."""
    return residual_speed_of(read_motion(path, size), model)


def model_input(rgb: torch.Tensor, flow: torch.Tensor | None, inputs: Sequence[str]) -> torch.Tensor:
    """rgb [B, h, w, 3] 0..255 and encoded flow [B, 2, h, w] (or None without "flow") -> float32 [B, C, h, w]:
    ImageNet-normalised RGB channels, then the 2 flow channels."""
    parts = []
    if "rgb" in inputs:
        parts.append(normalize_images(rgb))
    if "flow" in inputs:
        if flow is None:
            raise ValueError("this model takes optical flow as input (model.backbone.inputs), but none was given")
        parts.append(flow.to(device=rgb.device, dtype=torch.float32))
    return torch.cat(parts, dim=1).contiguous()
