"""Tracks stage: dense point tracks of every query frame, one job per (sequence, chunk of query frames).

    python -m lrtl.tracks chunk --frames F.zarr [--flow FLOW.zarr] [--ground-truth GT.zarr]
                                [--hub-repo DIR --checkpoint FILE] --chunk 3 --params '<json of tracks>'
                                --dataset NAME --sequence NAME --out chunk-003.zarr
    python -m lrtl.tracks index --frames F.zarr --chunks c0.zarr c1.zarr ... --params '<json>'
                                --out index.json

Query scheme (METHOD.md §3): every frame q is a query frame; its points are the stride grid with offset
k = q mod stride², ox = k mod stride, oy = k // stride (row-major, so the grid position is the track's
identity); the tracker sees T_w = min(T, window) frames starting at s_q = clamp(q - window // 2, 0, T - T_w).
Chunk c holds query frames [c·chunk_size, min(T, (c+1)·chunk_size)).  Backends: lrtl.backends (`flowchain`,
`cotracker`, `oracle`).  Store layout, resume and the reader for training: lrtl.track_store.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from lrtl import __version__, stores
from lrtl.backends import track_backend
from lrtl.cli import StageError, add_settings_argument, json_params, run_stage
from lrtl.params import Params, require_active_backend
from lrtl.runtime import input_identity, limit_threads
from lrtl.settings import merge_settings, result_params
from lrtl.track_store import PartialChunk, SequenceTracks, open_chunk, open_sequence_tracks

log = logging.getLogger(__name__)

__all__ = ["TracksParams", "run_chunk", "run_index", "open_sequence_tracks", "SequenceTracks", "main",
           "query_grid", "grid_offset", "window_bounds", "chunk_query_frames", "n_chunks"]


@dataclasses.dataclass(frozen=True)
class FlowChainParams(Params):
    fb_alpha: float        # forward-backward stop: |w + ŵ|² >= fb_alpha (|w|² + |ŵ|²) + fb_beta  (0.01)
    fb_beta: float         # px² (0.5)
    boundary_alpha: float  # motion-boundary stop: |∇u|² + |∇v|² > boundary_alpha |w|² + boundary_beta (0.01)
    boundary_beta: float   # (0.002)
    fill: str              # hold | flow: position after a stop (held, or carried on by the flow; invisible)


@dataclasses.dataclass(frozen=True)
class CoTrackerParams(Params):
    source: str                   # local | github
    repo: str                     # github owner/name (source github)
    commit: str                   # pinned co-tracker commit (checked against the local clone)
    repo_dir: str                 # local clone (source local), passed as --hub-repo
    entry: str                    # hub entry point: cotracker2 | cotracker3_offline
    checkpoint: str               # local state dict, passed as --checkpoint
    height: int                   # model input height, px (paper 384)
    width: int                    # model input width, px (paper 512)
    iterations: int               # refinement iterations (paper 6)
    visibility_threshold: float   # visible <=> probability > threshold (paper 0.9)
    device: str                   # auto | cpu | cuda
    aux_grid: int                 # aux context grid side (paper 32; 0 = none), tracked with every batch
    aux_offset: int               # aux points are queried at q ± aux_offset (paper 7)


@dataclasses.dataclass(frozen=True)
class TracksParams(Params):
    backend: str             # flowchain | cotracker | oracle
    chunk_size: int          # query frames per job
    stride: int              # query grid stride, px (paper 4)
    window: int              # frames seen per query frame, centred (paper 101)
    points_per_batch: int    # query points per tracker pass (bounds GPU memory)
    storage: str             # float32 | fixed16 (int16, 1/16 px)
    # Backend sections; the workflow passes null for the inactive ones, so that editing them reruns nothing.
    flowchain: FlowChainParams | None
    cotracker: CoTrackerParams | None

    def __post_init__(self) -> None:
        require_active_backend(self, "tracks")


# --------------------------------------------------------------------------- query scheme


def n_chunks(n_frames: int, chunk_size: int) -> int:
    return math.ceil(n_frames / chunk_size)


def chunk_query_frames(chunk: int, chunk_size: int, n_frames: int) -> np.ndarray:
    """Query frames of chunk `chunk`: [c·chunk_size, min(T, (c+1)·chunk_size)), int [Q]."""
    if chunk_size < 1:
        raise StageError(f"tracks.chunk_size must be >= 1, not {chunk_size}")
    if not 0 <= chunk < n_chunks(n_frames, chunk_size):
        raise StageError(f"chunk {chunk} does not exist: {n_frames} frames in chunks of {chunk_size} make "
                         f"{n_chunks(n_frames, chunk_size)} chunks (0..{n_chunks(n_frames, chunk_size) - 1})")
    return np.arange(chunk * chunk_size, min(n_frames, (chunk + 1) * chunk_size))


def window_bounds(q: int, n_frames: int, window: int) -> tuple[int, int]:
    """(s_q, T_w): T_w = min(T, window) frames from s_q = clamp(q - window // 2, 0, T - T_w)."""
    length = min(n_frames, window)
    return int(np.clip(q - window // 2, 0, n_frames - length)), length


def grid_offset(q: int, stride: int) -> tuple[int, int]:
    """(ox, oy) of query frame q: k = q mod stride², ox = k mod stride, oy = k // stride."""
    k = q % (stride * stride)
    return k % stride, k // stride


def query_grid(q: int, height: int, width: int, stride: int) -> np.ndarray:
    """Grid points of query frame q, float32 [N, 2] (x, y), row-major."""
    ox, oy = grid_offset(q, stride)
    xs = np.arange(ox, width, stride, dtype=np.float32)
    ys = np.arange(oy, height, stride, dtype=np.float32)
    grid_x, grid_y = np.meshgrid(xs, ys)  # [Ny, Nx]
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)  # [N, 2]


def max_grid_points(height: int, width: int, stride: int) -> int:
    return math.ceil(width / stride) * math.ceil(height / stride)


# --------------------------------------------------------------------------- chunk job


@dataclasses.dataclass(frozen=True)
class TrackInputs:
    """What a backend may need; each backend checks its own."""

    frames: Path
    n_frames: int
    height: int
    width: int
    frame_range: tuple[int, int]      # frames [lo, hi) any window of the job touches
    flow: Path | None = None
    ground_truth: Path | None = None
    hub_repo: Path | None = None
    checkpoint: Path | None = None


def run_chunk(*, frames: str | os.PathLike, chunk: int, params: TracksParams, dataset: str, sequence: str,
              out: str | os.PathLike, flow: str | os.PathLike | None = None,
              ground_truth: str | os.PathLike | None = None, hub_repo: str | os.PathLike | None = None,
              checkpoint: str | os.PathLike | None = None) -> None:
    frames_group = stores.open_store(frames, "frames")
    n_frames = int(frames_group.attrs["n_frames"])
    height, width = int(frames_group.attrs["height"]), int(frames_group.attrs["width"])
    queries = chunk_query_frames(chunk, params.chunk_size, n_frames)  # [Q]
    bounds = [window_bounds(int(q), n_frames, params.window) for q in queries]
    window = bounds[0][1]
    starts = np.array([s for s, _ in bounds], np.int32)  # [Q]
    grids = [query_grid(int(q), height, width, params.stride) for q in queries]
    n_max = max(len(g) for g in grids)
    query_xy = np.zeros((len(queries), n_max, 2), np.float32)  # [Q, N_max, 2]
    for i, grid in enumerate(grids):
        query_xy[i, : len(grid)] = grid
    n_points = np.array([len(g) for g in grids], np.int32)

    backend_class = track_backend(params.backend)
    # A backend whose weights the params name only by path (cotracker) adds their identity to the signature.
    identity = getattr(backend_class, "resume_identity", None)
    # A partial store is resumed only into the same job: result params, format, chunk and the identity of every
    # input store (a flow rebuilt or repaired since the partial store was started makes it stale).
    signature = {"params": result_params("tracks", params.to_dict()), "format_version": stores.FORMAT_VERSION,
                 "dataset": dataset, "sequence": sequence, "chunk": chunk, "n_frames": n_frames, "height": height,
                 "width": width, "inputs": input_identity([frames, flow, ground_truth]),
                 **(identity(params=params, checkpoint=_path(checkpoint)) if identity else {})}
    attrs = {"dataset": dataset, "sequence": sequence, "chunk": chunk, "backend": params.backend,
             "params": result_params("tracks", params.to_dict()), "n_frames": n_frames, "height": height,
             "width": width, "stride": params.stride, "query_frames": queries.tolist(), "lrtl_version": __version__}
    partial = PartialChunk(out, signature=signature, query_frames=queries, window_start=starts,
                           query_xy=query_xy, n_points=n_points, window=window, storage=params.storage,
                           extra_attrs=attrs)
    todo = [i for i in range(len(queries)) if not partial.done[i]]
    log.info("chunk %d of %s/%s: query frames %d..%d (%d to do), window %d, %d points max, backend %s",
             chunk, dataset, sequence, queries[0], queries[-1], len(todo), window, n_max, params.backend)
    provenance: dict[str, Any] = {}
    if todo:
        inputs = TrackInputs(frames=Path(frames), n_frames=n_frames, height=height, width=width,
                             frame_range=(int(starts[todo].min()), int(starts[todo].max()) + window),
                             flow=_path(flow), ground_truth=_path(ground_truth), hub_repo=_path(hub_repo),
                             checkpoint=_path(checkpoint))
        backend = backend_class(inputs=inputs, params=params)
        provenance = backend.provenance()
        for i in tqdm(todo, desc=f"tracks {sequence} chunk {chunk}", disable=None):
            q = int(queries[i])
            tracks, vis = backend.track(q, grids[i], int(starts[i]), window)  # [T_w, N, 2], [T_w, N]
            partial.write(i, tracks, vis)
    partial.finish(provenance)
    log.info("wrote %s", out)


def _path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)


# --------------------------------------------------------------------------- index


def run_index(*, frames: str | os.PathLike, chunks: Sequence[str | os.PathLike], params: TracksParams,
              out: str | os.PathLike) -> None:
    """Check that the chunks query every frame exactly once with the configured params; write index.json."""
    frames_group = stores.open_store(frames, "frames")
    n_frames = int(frames_group.attrs["n_frames"])
    height, width = int(frames_group.attrs["height"]), int(frames_group.attrs["width"])
    out = Path(out)
    seen: dict[int, list[str]] = {}
    entries, meta = [], {}
    expected = stores._jsonable(result_params("tracks", params.to_dict()))
    for path in chunks:
        group = open_chunk(path)
        attrs = dict(group.attrs)
        if attrs.get("params") != expected:
            raise StageError(f"{path}: tracks chunk was written with other tracks params than the config; "
                             f"delete it and rerun snakemake")
        if (attrs["n_frames"], attrs["height"], attrs["width"]) != (n_frames, height, width):
            raise StageError(f"{path}: tracks chunk is for {attrs['n_frames']} frames of "
                             f"{attrs['width']}x{attrs['height']}, but {frames} has {n_frames} of "
                             f"{width}x{height}; delete it and rerun snakemake")
        query_frames = [int(q) for q in group["query_frames"][...]]
        for q in query_frames:
            seen.setdefault(q, []).append(str(path))
        entries.append({"path": os.path.relpath(Path(path), out.parent), "chunk": attrs["chunk"],
                        "query_frames": query_frames})
        meta = {k: attrs[k] for k in ("dataset", "sequence", "backend", "stride", "window")}
    missing = [q for q in range(n_frames) if q not in seen]
    duplicated = {q: paths for q, paths in seen.items() if len(paths) > 1}
    outside = sorted(q for q in seen if not 0 <= q < n_frames)
    if missing or duplicated or outside:
        raise StageError(f"tracks chunks {[str(c) for c in chunks]} do not query every frame of {frames} "
                         f"exactly once: missing frames {missing}, duplicated frames {duplicated}, frames "
                         f"outside 0..{n_frames - 1}: {outside}; pass all "
                         f"{n_chunks(n_frames, params.chunk_size)} chunks of the sequence")
    index = {"kind": "tracks_index", "format_version": stores.FORMAT_VERSION, "lrtl_version": __version__,
             "n_frames": n_frames, "height": height, "width": width, "chunk_size": params.chunk_size,
             "params": expected, **meta, "chunks": sorted(entries, key=lambda e: e["chunk"])}
    stores.write_json(out, index)
    log.info("wrote %s (%d chunks, %d query frames)", out, len(entries), n_frames)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lrtl.tracks", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    chunk = commands.add_parser("chunk", help="track the query frames of one chunk")
    chunk.add_argument("--frames", required=True, help="frames store of the sequence")
    chunk.add_argument("--flow", help="flow store (backend flowchain)")
    chunk.add_argument("--ground-truth", help="synthetic ground-truth store (backend oracle)")
    chunk.add_argument("--hub-repo", help="local co-tracker clone (backend cotracker, source local)")
    chunk.add_argument("--checkpoint", help="co-tracker state dict (backend cotracker)")
    chunk.add_argument("--chunk", required=True, type=int, help="chunk number (0-based)")
    chunk.add_argument("--params", required=True, type=json_params, help="JSON of config section `tracks`")
    add_settings_argument(chunk)
    chunk.add_argument("--dataset", required=True)
    chunk.add_argument("--sequence", required=True)
    chunk.add_argument("--out", required=True, help="chunk store to write")
    chunk.add_argument("--threads", type=int, help="CPU threads (the rule's threads; omitted: all cores)")
    index = commands.add_parser("index", help="check coverage of all chunks and write index.json")
    index.add_argument("--frames", required=True, help="frames store of the sequence")
    index.add_argument("--chunks", required=True, nargs="+", help="all chunk stores of the sequence")
    index.add_argument("--params", required=True, type=json_params, help="JSON of config section `tracks`")
    add_settings_argument(index)
    index.add_argument("--out", required=True, help="index.json to write")
    return parser


def parse_params(mapping: dict[str, Any]) -> TracksParams:
    return TracksParams.from_mapping(mapping, "tracks")


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        params = parse_params(merge_settings(args.params, args.settings))
        if args.command == "chunk":
            limit_threads(args.threads, torch_too=params.backend == "cotracker")
            run_chunk(frames=args.frames, chunk=args.chunk, params=params, dataset=args.dataset,
                      sequence=args.sequence, out=args.out, flow=args.flow, ground_truth=args.ground_truth,
                      hub_repo=args.hub_repo, checkpoint=args.checkpoint)
        else:
            run_index(frames=args.frames, chunks=args.chunks, params=params, out=args.out)

    run_stage("tracks", body, build_parser(), argv)


if __name__ == "__main__":
    main()
