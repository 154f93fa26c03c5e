"""`oracle` flow backend: the exact flow of a synthetic sequence (tests and sanity checks only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrtl.cli import StageError
from lrtl.imageops import resize_flow


def load_scene(ground_truth: str | os.PathLike | None) -> Any:
    """The synthetic scene behind a ground-truth store; a StageError names the missing flag/file."""
    if ground_truth is None:
        raise StageError("the oracle backend needs --ground-truth GT.zarr (the synthetic ground-truth store)")
    if not os.path.exists(ground_truth):
        raise StageError(f"{ground_truth}: no synthetic ground-truth store; produce it with the synthetic "
                         f"rule (snakemake {ground_truth})")
    from lrtl.synthetic import load_scene as load

    return load(ground_truth)


class OracleFlow:
    """Exact flow, resized (nearest, values rescaled) to the frame resolution if the scene differs."""

    def __init__(self, *, rgb: np.ndarray, ground_truth: str | os.PathLike | None = None, **_: Any) -> None:
        self.scene = load_scene(ground_truth)
        n_frames, self.height, self.width = rgb.shape[:3]
        if self.scene.n_frames != n_frames:
            raise StageError(f"{ground_truth}: scene has {self.scene.n_frames} frames, the frames store "
                             f"{n_frames}; regenerate one of them")

    def compute(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:

        flows = [resize_flow(self.scene.flow(i, j - i), self.height, self.width) for i, j in pairs]
        return np.stack(flows).astype(np.float32)  # [P, H, W, 2]

    def provenance(self) -> dict[str, Any]:
        return {}
