"""Flow and point-tracking backends behind two small Protocols, looked up by the config enum.

Flow backends (`flow.backend`): `dis` (OpenCV DIS, CPU default), `raft` (torchvision RAFT-large, local
weights), `oracle` (exact synthetic flow).  Track backends (`tracks.backend`): `flowchain` (CPU default,
chained gap-1 flow), `cotracker` (torch.hub from a local clone + local checkpoint), `oracle` (exact synthetic
tracks).  Modules are imported lazily, so the CPU paths never import torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from lrtl.cli import StageError


class FlowBackend(Protocol):
    """Optical flow between frames of one sequence (frames given to the constructor)."""

    def compute(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        """Flow from frame i to frame j for every (i, j), float32 [P, H, W, 2] in pixels (u, v)."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Extra store attrs (library versions, weights sha256)."""
        ...


class TrackBackend(Protocol):
    """Point tracks of one query frame inside its window."""

    name: str

    def track(self, query_frame: int, query_xy: np.ndarray, window_start: int, window_len: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """query_xy float32 [N, 2] pixel (x, y) at `query_frame`; returns (tracks float32 [T_w, N, 2] pixel
        (x, y) at frames window_start .. window_start+T_w-1, vis bool [T_w, N])."""
        ...

    def provenance(self) -> dict[str, Any]:
        """Extra store attrs (e.g. co-tracker commit, checkpoint sha256)."""
        ...


FLOW_BACKENDS = {
    "dis": "lrtl.backends.dis:DisFlow",
    "raft": "lrtl.backends.raft:RaftFlow",
    "oracle": "lrtl.backends.oracle_flow:OracleFlow",
    "flo": "lrtl.backends.flo:FloFlow",
}

TRACK_BACKENDS = {
    "flowchain": "lrtl.backends.flowchain:FlowChainTracker",
    "cotracker": "lrtl.backends.cotracker:CoTrackerTracker",
    "oracle": "lrtl.backends.oracle_tracks:OracleTracker",
}


def _resolve(registry: dict[str, str], name: str, what: str) -> Any:
    if name not in registry:
        raise StageError(f"unknown {what} backend {name!r}; choose one of {sorted(registry)}")
    module, attr = registry[name].split(":")
    return getattr(importlib.import_module(module), attr)


def flow_backend(name: str) -> Any:
    """The class registered for `flow.backend` = name."""
    return _resolve(FLOW_BACKENDS, name, "flow")


def track_backend(name: str) -> Any:
    """The class registered for `tracks.backend` = name."""
    return _resolve(TRACK_BACKENDS, name, "tracks")
