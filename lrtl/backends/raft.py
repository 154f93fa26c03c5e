"""`raft` flow backend: torchvision's RAFT-large architecture with a state dict from a local file.

METHOD.md §13: 20 flow updates on frames padded to a multiple of 8 (replicate padding split evenly, as the
original InputPadder); `Raft_Large_Weights.C_T_V1` is the port of the raft-things checkpoint.  Nothing is
downloaded: the weights file is a declared rule input filled by the `download_weights` rule.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lrtl.cli import StageError
from lrtl.runtime import file_sha256, resolve_device

MIN_SIZE = 128


def load_raft(weights: str | os.PathLike | None, device: str):
    """raft_large(weights=None) with the state dict of `weights`; StageError names the file and the rule."""
    import torch
    from torchvision.models.optical_flow import raft_large

    if weights is None or not Path(weights).is_file():
        raise StageError(f"RAFT weights file {weights} not found; run `snakemake download_weights` on a "
                         f"machine with internet (or copy the file there), or set flow.backend: dis")
    model = raft_large(weights=None, progress=False)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StageError(f"{weights}: not a torchvision raft_large state dict ({str(err)[:300]})") from err
    return model.to(device).eval()


class RaftFlow:
    """Flow between frames of `rgb` uint8 [T, H, W, 3]."""

    def __init__(self, *, rgb: np.ndarray, params: Any, weights: str | os.PathLike | None = None,
                 **_: Any) -> None:
        import torch

        self.device = resolve_device(params.raft.device, "flow.raft.device")
        self.iterations = params.raft.iterations
        self.weights = weights
        self.model = load_raft(weights, self.device)
        self.rgb = torch.from_numpy(np.ascontiguousarray(rgb))  # [T, H, W, 3] uint8

    def _images(self, index: Sequence[int]):
        import torch.nn.functional as F

        images = self.rgb[list(index)].permute(0, 3, 1, 2).float().to(self.device)  # [P, 3, H, W]
        images = images / 127.5 - 1.0  # torchvision's RAFT transform: [0, 1] then Normalize(0.5, 0.5)
        height, width = images.shape[-2:]
        # multiple of 8, and at least 128 px: RAFT's 4-level correlation pyramid needs 16 cells at 1/8
        pad_h = max(MIN_SIZE, height + (-height) % 8) - height
        pad_w = max(MIN_SIZE, width + (-width) % 8) - width
        pad = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        return F.pad(images, pad, mode="replicate"), pad  # [P, 3, H', W']

    def compute(self, pairs: Sequence[tuple[int, int]]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            source, pad = self._images([i for i, _ in pairs])
            target, _ = self._images([j for _, j in pairs])
            flow = self.model(source, target, num_flow_updates=self.iterations)[-1]  # [P, 2, H', W']
            left, right, top, bottom = pad
            flow = flow[..., top:flow.shape[-2] - bottom, left:flow.shape[-1] - right]  # [P, 2, H, W]
            return flow.permute(0, 2, 3, 1).float().cpu().numpy()  # [P, H, W, 2]

    def provenance(self) -> dict[str, Any]:
        return {"weights_sha256": file_sha256(self.weights), "device": str(self.device)}
