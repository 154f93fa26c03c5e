"""`oracle` track backend: exact tracks and visibility of a synthetic sequence (tests and sanity checks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from lrtl.backends.oracle_flow import load_scene


class OracleTracker:
    """Scene.track at the scene's resolution, mapped to the frame resolution (pixel centres)."""

    name = "oracle"

    def __init__(self, *, inputs: Any, params: Any) -> None:
        self.scene = load_scene(inputs.ground_truth)
        self.scale = np.array([self.scene.width / inputs.width, self.scene.height / inputs.height],
                              np.float32)  # scene px per frame px

    def track(self, query_frame: int, query_xy: np.ndarray, window_start: int, window_len: int
              ) -> tuple[np.ndarray, np.ndarray]:
        frames = np.arange(window_start, window_start + window_len)
        scene_xy = (query_xy + 0.5) * self.scale - 0.5  # [N, 2] at scene resolution
        tracks, vis = self.scene.track(scene_xy, query_frame, frames)  # [T_w, N, 2], [T_w, N]
        tracks = (tracks + 0.5) / self.scale - 0.5
        tracks[query_frame - window_start] = query_xy
        return tracks.astype(np.float32), vis

    def provenance(self) -> dict[str, Any]:
        return {}
