"""`dis` flow backend: OpenCV DIS optical flow on grayscale frames (Kroeger et al., ECCV 2016)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from lrtl.cli import StageError
from lrtl.flow_fill import fill_untextured

PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DisFlow:
    """Flow between frames of `rgb` uint8 [T, H, W, 3] with the preset of `params.dis.preset`, refined down to the
    pyramid level `params.dis.finest_scale` (0: every pixel of the frames; the medium preset alone stops at half).
    Where the source frame has less texture than `params.dis.min_texture`, the flow is filled from the textured pixels
    around (lrtl.flow_fill: DIS's flow of a flat patch is noise)."""

    def __init__(self, *, rgb: np.ndarray, params: Any, **_: Any) -> None:
        preset = params.dis.preset
        if preset not in PRESETS:
            raise StageError(f"flow.dis.preset must be one of {sorted(PRESETS)}, not {preset!r}")
        self.preset = preset
        self.gray = np.stack([cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in rgb])  # [T, H, W]
        self.dis = cv2.DISOpticalFlow_create(PRESETS[preset])
        self.finest_scale = params.dis.finest_scale
        self.dis.setFinestScale(self.finest_scale)
        self.min_texture = params.dis.min_texture

    def compute(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        flows = [fill_untextured(self.dis.calc(self.gray[i], self.gray[j], None), self.gray[i], self.min_texture)
                 for i, j in pairs]  # P x [H, W, 2]
        return np.stack(flows).astype(np.float32)  # [P, H, W, 2]

    def provenance(self) -> dict[str, Any]:
        return {"opencv_version": cv2.__version__, "dis_preset": self.preset, "dis_finest_scale": self.finest_scale,
                "dis_min_texture": self.min_texture}
