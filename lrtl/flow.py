"""Flow stage: forward and backward optical flow of one sequence for every configured gap.

    python -m lrtl.flow --frames F.zarr --params '<json of config flow>' [--weights RAFT.pth]
                        [--ground-truth GT.zarr] [--flo-root DIR] [--threads N] --out flow.zarr

Writes the flow store of lrtl.stores (forward_{g} / backward_{g} float32 [T, H, W, 2], pixels at frame
resolution); gap 1 is always computed because the flow-chaining tracker needs it.  Backends (METHOD.md §13):
`dis` (OpenCV DIS on grayscale, CPU default), `raft` (torchvision raft_large with a local state dict, 20
updates, padded to a multiple of 8), `oracle` (exact flow of a synthetic sequence), `flo` (import of
MotionGrouping-layout `.flo` files, METHOD.md §2.2).  Also the `.flo` read/write helpers.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
from tqdm import tqdm

from lrtl import stores
from lrtl.backends import flow_backend
from lrtl.cli import StageError, add_settings_argument, json_params, run_stage
from lrtl.params import Params, require_active_backend
from lrtl.runtime import limit_threads
from lrtl.settings import merge_settings

log = logging.getLogger(__name__)



@dataclasses.dataclass(frozen=True)
class DisParams(Params):
    preset: str            # ultrafast | fast | medium (paper-free CPU default: medium)
    finest_scale: int      # pyramid level the flow is refined down to: 0 = the frames resolution, 1 = half (the presets
                           # stop at 1 or 2)
    min_texture: float     # grey levels (0..1) per px: the flow of pixels with less texture is filled from the
                           # textured ones around (lrtl.flow_fill); 0 = DIS's own flow everywhere


@dataclasses.dataclass(frozen=True)
class RaftParams(Params):
    weights: str           # local state-dict path (declared rule input, passed as --weights)
    iterations: int        # flow updates (paper 20)
    device: str            # auto | cpu | cuda
    batch_size: int        # frame pairs per forward pass


@dataclasses.dataclass(frozen=True)
class FloParams(Params):
    subdir: str            # folder between Flows_gap{g}/ and <sequence>/ (DAVIS: "1080p", others: "")


@dataclasses.dataclass(frozen=True)
class FlowParams(Params):
    backend: str           # dis | raft | oracle | flo
    gaps: tuple[int, ...]  # positive frame gaps; both directions are computed
    # Backend sections; the workflow passes null for the inactive ones, so that editing them reruns nothing.
    dis: DisParams | None
    raft: RaftParams | None
    flo: FloParams | None

    def __post_init__(self) -> None:
        require_active_backend(self, "flow")


def flow_pairs(n_frames: int, gap: int) -> list[tuple[int, int]]:
    """The (source, target) frame pairs of a signed gap: t -> t+gap for every valid t."""
    return [(t, t + gap) for t in range(n_frames) if 0 <= t + gap < n_frames]


def all_gaps(gaps: Sequence[int]) -> list[int]:
    """Sorted positive gaps, gap 1 included."""
    gaps = sorted({int(g) for g in gaps} | {1})
    if gaps[0] <= 0:
        raise StageError(f"flow.gaps must be positive integers, got {list(gaps)}")
    return gaps


def compute_flows(backend, n_frames: int, height: int, width: int, gaps: Sequence[int],
                  batch_size: int) -> dict[int, np.ndarray]:
    """Signed gap -> float32 [T, H, W, 2]; rows without a target frame stay zero."""
    flows = {}
    jobs = [(g, pair) for gap in gaps for g in (gap, -gap) for pair in flow_pairs(n_frames, g)]
    for g in {g for g, _ in jobs}:
        flows[g] = np.zeros((n_frames, height, width, 2), np.float32)  # [T, H, W, 2]
    batch_size = max(1, batch_size)
    for start in tqdm(range(0, len(jobs), batch_size), desc="flow", disable=None):
        batch = jobs[start:start + batch_size]
        result = backend.compute([pair for _, pair in batch])  # [P, H, W, 2]
        for (g, (i, _)), flow in zip(batch, result, strict=True):
            flows[g][i] = flow
    return flows


def run_flow(*, frames: str | os.PathLike, out: str | os.PathLike, params: FlowParams,
             weights: str | os.PathLike | None = None, ground_truth: str | os.PathLike | None = None,
             flo_root: str | os.PathLike | None = None) -> None:
    group = stores.open_store(frames, "frames")
    rgb = group["rgb"][...]  # [T, H, W, 3]
    n_frames, height, width, _ = rgb.shape
    attrs = dict(group.attrs)
    gaps = all_gaps(params.gaps)
    if n_frames <= gaps[-1]:
        raise StageError(
            f"{frames}: {n_frames} frame(s) of {attrs.get('source')}, but flow gap {gaps[-1]} needs more than "
            f"{gaps[-1]}: a sequence needs more frames than its largest flow gap; lower flow.gaps (or "
            f"datasets.<name>.gaps), or move the sequence out of the dataset folder"
        )
    cls = flow_backend(params.backend)
    backend = cls(rgb=rgb, params=params, weights=weights, ground_truth=ground_truth, flo_root=flo_root,
                  sequence=attrs.get("sequence", ""), frame_names=attrs.get("frame_names"))
    batch = params.raft.batch_size if params.backend == "raft" else 8
    log.info("%s flow for gaps %s on %d frames of %dx%d", params.backend, gaps, n_frames, width, height)
    flows = compute_flows(backend, n_frames, height, width, gaps, batch)
    stores.write_flow(out, flows, backend=params.backend, params=params.to_dict(),
                      dataset=attrs.get("dataset"), sequence=attrs.get("sequence"), **backend.provenance())
    log.info("wrote %s", out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lrtl.flow", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", required=True, help="frames store of the sequence")
    parser.add_argument("--params", required=True, type=json_params, help="JSON of the config `flow` section")
    add_settings_argument(parser)
    parser.add_argument("--weights", help="RAFT state dict (backend raft)")
    parser.add_argument("--ground-truth", help="synthetic ground-truth store (backend oracle)")
    parser.add_argument("--flo-root", help="folder holding Flows_gap{±g}/ (backend flo)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (the rule's threads; omitted: OpenCV's and torch's choice)"
    )
    parser.add_argument("--out", required=True, help="flow store to write")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        params = FlowParams.from_mapping(merge_settings(args.params, args.settings), "flow")
        limit_threads(args.threads, torch_too=params.backend == "raft")
        run_flow(frames=args.frames, out=args.out, params=params, weights=args.weights,
                 ground_truth=args.ground_truth, flo_root=args.flo_root)

    run_stage("flow", body, build_parser(), argv)


if __name__ == "__main__":
    main()
