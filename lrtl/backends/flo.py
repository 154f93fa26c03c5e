"""`flo` flow backend: import MotionGrouping-layout `.flo` files (METHOD.md §2.2) for parity checks, and the
Middlebury `.flo` reader and writer."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lrtl.cli import StageError
from lrtl.imageops import resize_flow

FLO_TAG = 202021.25  # Middlebury .flo magic number


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Middlebury `.flo` -> float32 [H, W, 2] (u, v) in pixels."""
    path = Path(path)
    with open(path, "rb") as handle:
        tag = np.fromfile(handle, np.float32, 1)
    if tag.size != 1 or tag[0] != np.float32(FLO_TAG):
        raise StageError(f"{path}: not a Middlebury .flo file (bad tag); re-export or delete it")
    flow = cv2.readOpticalFlow(str(path))
    if flow is None:
        raise StageError(f"{path}: could not read this .flo file (truncated?); re-export or delete it")
    return flow


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """float [H, W, 2] -> Middlebury `.flo`, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.flo")
    try:
        if not cv2.writeOpticalFlow(str(tmp), np.ascontiguousarray(flow, dtype=np.float32)):
            raise OSError(f"cv2.writeOpticalFlow failed for {tmp}")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def motiongrouping_flo_path(root: str | os.PathLike, subdir: str, sequence: str, frame_names: Sequence[str],
                            source: int, gap: int) -> Path:
    """Where MotionGrouping keeps the flow source -> source+gap (METHOD.md §2.2 gap naming).

    Forward `Flows_gap{g}/<subdir>/<seq>/<name of i>.flo` holds i -> i+g; backward
    `Flows_gap-{g}/<subdir>/<seq>/<name of i+g>.flo` holds (i+g) -> i: named after its source frame.
    """
    folder = Path(root) / f"Flows_gap{gap}"
    if subdir:
        folder = folder / subdir
    return folder / sequence / f"{Path(frame_names[source]).stem}.flo"


# --------------------------------------------------------------------------- stage


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
