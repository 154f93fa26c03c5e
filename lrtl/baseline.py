"""No-learning baseline masks: residual flow magnitude after removing the camera motion, thresholded.

    python -m lrtl.baseline --flow FLOW.zarr --frames F.zarr --params '<json of config baseline>' \
        --out masks.zarr

For frame t the gap-1 forward flow t -> t+1 is used (the backward flow t -> t-1 for the last frame, which
has no forward flow). The dominant motion is taken to be the camera's and removed:
- `camera_model: median`: subtract the per-frame median flow vector (pure translation);
- `camera_model: affine`: least-squares affine flow u = a0 + a1 x + a2 y (same for v), refitted
  `fit_iterations` times on the pixels whose residual is at most the median residual (robust while the
  foreground covers less than half the frame).
A pixel is foreground when its residual flow magnitude exceeds `threshold_px` pixels (at flow resolution).

The store has the masks layout of lrtl.infer with K = 2: soft = merged = [foreground, 1 - foreground].
Evaluation scores it like the model, best of the two masks per frame. The other trivial baseline,
"everything is foreground", needs no store: lrtl.evaluate records its IoU (`j_all_foreground`) for every
frame and lrtl.tables reports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lrtl.camera import CAMERA_MODELS, camera_flow
from lrtl.cli import StageError, json_params, run_stage
from lrtl.params import Params
from lrtl.stores import open_flow, open_store, read_flow, write_baseline_masks

log = logging.getLogger(__name__)

@dataclasses.dataclass(frozen=True)
class BaselineParams(Params):
    camera_model: str  # median | affine: dominant motion removed before thresholding
    threshold_px: (
        float  # residual flow magnitude above which a pixel is foreground, pixels at flow resolution
    )
    fit_iterations: int  # affine only: refits on the inlier half of the pixels


def foreground_from_flow(flow: np.ndarray, params: BaselineParams) -> np.ndarray:
    """Boolean foreground [H, W] of one frame from its flow [H, W, 2]."""
    residual = flow - camera_flow(flow, params.camera_model, params.fit_iterations)
    return np.linalg.norm(residual, axis=-1) > params.threshold_px


def run_baseline(*, flow: str | Path, frames: str | Path, out: str | Path, params: BaselineParams) -> None:
    if params.camera_model not in CAMERA_MODELS:
        raise StageError(f"baseline.camera_model must be one of {CAMERA_MODELS}, not {params.camera_model!r}")
    frame_attrs = dict(open_store(frames, "frames").attrs)
    group = open_flow(flow)
    n_frames = group.attrs["n_frames"]
    if n_frames != frame_attrs["n_frames"]:
        raise StageError(
            f"{flow}: {n_frames} flow frames but {frames} has {frame_attrs['n_frames']}; "
            f"rebuild the flow store from these frames"
        )
    masks = []
    for t in range(n_frames):
        if n_frames == 1:
            field = np.zeros((group.attrs["height"], group.attrs["width"], 2), np.float32)
        else:
            field = read_flow(group, 1 if t < n_frames - 1 else -1, t)  # [H, W, 2]
        fg = foreground_from_flow(field, params).astype(np.float32)  # [H, W]
        masks.append(np.stack([fg, 1 - fg]))
    merged = np.stack(masks)  # [T, 2, H, W]
    log.info("baseline foreground covers %.1f%% of the pixels on average", 100 * merged[:, 0].mean())
    write_baseline_masks(out, merged, frame_attrs, "baseline", params.to_dict())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--flow", required=True, help="flow store of the sequence (gap 1 is used)")
    parser.add_argument("--frames", required=True, help="frames store of the sequence (identity attrs)")
    parser.add_argument(
        "--params", required=True, type=json_params, help="JSON of the config section `baseline`"
    )
    parser.add_argument("--out", required=True, help="masks store to write")

    def body(args: argparse.Namespace) -> None:
        params = BaselineParams.from_mapping(args.params, "baseline")
        log.info("params: %s", params)
        run_baseline(flow=args.flow, frames=args.frames, out=args.out, params=params)

    run_stage("baseline", body, parser, argv)


if __name__ == "__main__":
    main()
