"""`flo` flow backend: import MotionGrouping-layout `.flo` files (METHOD.md §2.2) for parity checks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lrtl.cli import StageError


class FloFlow:
    """Reads `Flows_gap{±g}/<subdir>/<sequence>/<frame>.flo` under `flo_root`, resized to frame resolution."""

    def __init__(self, *, rgb: np.ndarray, params: Any, flo_root: str | os.PathLike | None = None,
                 sequence: str = "", frame_names: Sequence[str] | None = None, **_: Any) -> None:
        if flo_root is None:
            raise StageError("the flo backend needs --flo-root DIR (the folder holding Flows_gap1/ ...)")
        if not frame_names:
            raise StageError("the frames store has no frame_names attr; the flo backend needs them")
        self.root, self.subdir, self.sequence = flo_root, params.flo.subdir, sequence
        self.frame_names = list(frame_names)
        self.height, self.width = rgb.shape[1:3]

    def compute(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        from lrtl.flow import motiongrouping_flo_path, read_flo, resize_flow

        flows = []
        for i, j in pairs:
            path = motiongrouping_flo_path(self.root, self.subdir, self.sequence, self.frame_names, i, j - i)
            if not path.is_file():
                raise StageError(f"{path}: missing .flo file for flow {i} -> {j}; "
                                 f"check --flo-root and flow.flo.subdir")
            flows.append(resize_flow(read_flo(path), self.height, self.width))
        return np.stack(flows).astype(np.float32)  # [P, H, W, 2]

    def provenance(self) -> dict[str, Any]:
        return {"flo_root": str(self.root)}
