"""No-learning baseline from point tracks: trajectories clustered by motion, labels densified to pixels.

    python -m lrtl.track_baseline --tracks TRACKS/index.json --frames F.zarr \
        --params '<json of config track_baseline>' --out masks.zarr

The classical route the paper's trajectory loss descends from (Brox & Malik, ECCV 2010; Ochs, Malik & Brox,
TPAMI 2014): points that move together belong together. For every frame t:

1. the tracks of query frame t (its stride grid, all visible at t), over the frames [t - half_window,
   t + half_window] of their window;
2. per frame step s, their velocities; the dominant (camera) motion, an affine flow of the position fitted by
   least squares and refitted `fit_iterations` times on the half of the tracks with the lower residual, is
   subtracted: r_i(s) is track i's residual velocity, divided by the frame's motion unit (the median over
   tracks of their mean residual speed, at least `min_unit_px`), so that slow and fast videos compare alike;
3. `points` tracks drawn at random; the motion distance of two tracks is the largest squared difference of
   their residual velocities over the steps where both are visible (Brox & Malik's max over time), and the
   affinity exp(-d_motion / (2 motion_sigma^2)) * exp(-|x_i - x_j|^2 / (2 (spatial_sigma * diagonal)^2));
4. scikit-learn spectral clustering of that affinity into `clusters` groups; every track of the grid takes the
   cluster with the largest summed affinity to it;
5. a cluster is foreground when the median residual speed of its tracks (mean over their visible steps)
   exceeds both `threshold` motion units and `threshold_px` pixels per frame; if none does, the cluster with
   the fastest residual motion is; its tracks slower than `member_fraction` x `threshold` motion units are not;
6. the labels of the grid are spread to pixels by normalised Gaussian convolution (sigma = the grid stride).

The store has the masks layout of lrtl.infer with K = 2, soft = merged = [foreground, 1 - foreground], at the
frames (and tracks) resolution, so lrtl.evaluate scores it like the other runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lrtl.camera import fit_affine
from lrtl.cli import StageError, json_params, run_stage
from lrtl.params import Params
from lrtl.stores import open_store, write_baseline_masks
from lrtl.track_store import open_sequence_tracks

log = logging.getLogger(__name__)

RUN = "baseline_tracks"


@dataclasses.dataclass(frozen=True)
class TrackBaselineParams(Params):
    half_window: int  # frames on each side of t whose motion is compared
    points: int  # tracks clustered per frame (a random subset of the query grid)
    clusters: int  # spectral clusters per frame
    min_unit_px: float  # px/frame: the smallest motion unit (the median residual speed of a frame's tracks)
    motion_sigma: float  # motion units: scale of residual-velocity differences in the affinity
    spatial_sigma: float  # fraction of the frame diagonal: scale of distances in the affinity
    threshold: float  # motion units: median residual speed above which a cluster is foreground
    threshold_px: float  # px/frame: ... and above which in pixels
    member_fraction: float  # a track of a moving cluster stays foreground above this fraction of `threshold`
    fit_iterations: int  # affine camera refits on the lower-residual half of the tracks
    seed: int  # the random subset of tracks


def camera_residuals(xy: np.ndarray, velocity: np.ndarray, valid: np.ndarray, iterations: int) -> np.ndarray:
    """Velocities [N, 2] at positions xy [N, 2] minus the dominant affine motion fitted on the `valid` ones
    (lrtl.camera.fit_affine) -> residual velocities [N, 2], zero where not valid."""
    if valid.sum() < 3:  # too few to fit a camera motion: no residual
        return np.zeros_like(velocity)
    residual = velocity - fit_affine(xy, velocity, valid, iterations)
    return np.where(valid[:, None], residual, 0.0)


def residual_velocities(tracks: np.ndarray, vis: np.ndarray, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """tracks [L, N, 2], vis [L, N] -> residual velocities [L-1, N, 2] and their validity [L-1, N]."""
    velocity = tracks[1:] - tracks[:-1]  # [S, N, 2]
    valid = vis[1:] & vis[:-1]  # [S, N]
    scale = float(max(np.ptp(tracks[..., 0]), np.ptp(tracks[..., 1]), 1.0))
    residual = np.stack([
        camera_residuals(tracks[s] / scale, velocity[s].astype(np.float64), valid[s], iterations)
        for s in range(len(velocity))
    ]) if len(velocity) else np.zeros((0, tracks.shape[1], 2))
    return residual.astype(np.float32), valid


def motion_distance(ra: np.ndarray, va: np.ndarray, rb: np.ndarray, vb: np.ndarray) -> np.ndarray:
    """Largest squared residual-velocity difference over the steps where both tracks are visible.

    ra [S, A, 2], va [S, A], rb [S, B, 2], vb [S, B] -> [A, B] (0 where two tracks share no step)."""
    out = np.zeros((ra.shape[1], rb.shape[1]), np.float32)
    for s in range(ra.shape[0]):
        d = ((ra[s][:, None, :] - rb[s][None, :, :]) ** 2).sum(-1)  # [A, B]
        both = va[s][:, None] & vb[s][None, :]
        np.maximum(out, np.where(both, d, 0.0), out=out)
    return out


def densify(xy: np.ndarray, labels: np.ndarray, height: int, width: int, sigma: float) -> np.ndarray:
    """Labels in [0, 1] at points xy [N, 2] -> soft map [H, W] by normalised Gaussian convolution."""
    cols = np.clip(np.round(xy[:, 0]).astype(int), 0, width - 1)
    rows = np.clip(np.round(xy[:, 1]).astype(int), 0, height - 1)
    votes = np.zeros((height, width), np.float32)
    counts = np.zeros((height, width), np.float32)
    np.add.at(votes, (rows, cols), labels.astype(np.float32))
    np.add.at(counts, (rows, cols), 1.0)
    votes = cv2.GaussianBlur(votes, (0, 0), sigma)
    counts = cv2.GaussianBlur(counts, (0, 0), sigma)
    return np.where(counts > 1e-6, votes / np.maximum(counts, 1e-6), 0.0).astype(np.float32)


def frame_foreground(
    tracks: np.ndarray, vis: np.ndarray, t_index: int, height: int, width: int, stride: float,
    params: TrackBaselineParams, rng: np.random.Generator,
) -> np.ndarray:
    """Foreground [H, W] in [0, 1] of the frame at row t_index of one query frame's tracks [L, N, 2], vis [L, N]."""
    from scipy.spatial import cKDTree
    from sklearn.cluster import SpectralClustering

    n = tracks.shape[1]
    if n == 0 or tracks.shape[0] < 2:
        return np.zeros((height, width), np.float32)
    residual, valid = residual_velocities(tracks, vis, params.fit_iterations)  # [S, N, 2], [S, N]
    xy = tracks[t_index]  # [N, 2] the query grid at t
    steps = valid.sum(axis=0)  # [N]
    speed = np.linalg.norm(residual, axis=-1).sum(axis=0) / np.maximum(steps, 1)  # [N] mean residual speed
    # residuals in units of the frame's typical (background) residual speed: the camera fit's noise floor
    unit = max(float(np.median(speed[steps > 0])) if (steps > 0).any() else 0.0, params.min_unit_px)
    residual = residual / unit
    # half the tracks drawn at random, half the fastest, so that a small moving object is represented
    m = min(params.points, n)
    fastest = np.argsort(-speed)[: m // 2]
    rest = np.setdiff1d(np.arange(n), fastest)
    chosen = np.sort(np.concatenate([fastest, rng.choice(rest, m - len(fastest), replace=False)]))
    spatial = params.spatial_sigma * float(np.hypot(height, width))  # px
    motion = motion_distance(residual[:, chosen], valid[:, chosen], residual[:, chosen], valid[:, chosen])
    space = ((xy[chosen][:, None, :] - xy[chosen][None, :, :]) ** 2).sum(-1)
    matrix = np.exp(-motion / (2 * params.motion_sigma**2) - space / (2 * spatial**2)).astype(np.float64)  # [M, M]
    k = min(params.clusters, len(chosen))
    if k < 2:
        labels_chosen = np.zeros(len(chosen), np.int64)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "graph is not fully connected"
            labels_chosen = SpectralClustering(
                k, affinity="precomputed", assign_labels="cluster_qr", random_state=0
            ).fit_predict(matrix)
    # every grid track joins the cluster of its nearest clustered track, in the affinity's own units
    features = np.concatenate(
        [residual.transpose(1, 0, 2).reshape(n, -1) / params.motion_sigma, xy / spatial], axis=1
    )  # [N, 2S + 2]
    labels = labels_chosen[cKDTree(features[chosen]).query(features, k=1)[1]]  # [N]
    medians = np.array([np.median(speed[labels == c]) if (labels == c).any() else 0.0 for c in range(k)])
    moving = (medians > params.threshold * unit) & (medians > params.threshold_px)
    if not moving.any():
        moving = medians == medians.max()
    # a member of a moving cluster that itself barely moves (a cluster also takes in its surroundings) is dropped
    foreground = moving[labels] & (speed > params.member_fraction * params.threshold * unit)
    return densify(xy, foreground.astype(np.float32), height, width, stride)


def run_track_baseline(
    *, tracks: str | Path, frames: str | Path, out: str | Path, params: TrackBaselineParams
) -> None:
    started = time.perf_counter()
    if params.clusters < 1 or params.points < 2 or params.half_window < 1:
        raise StageError("track_baseline: clusters >= 1, points >= 2 and half_window >= 1 are required")
    frame_attrs = dict(open_store(frames, "frames").attrs)
    reader = open_sequence_tracks(tracks)
    if reader.n_frames != frame_attrs["n_frames"]:
        raise StageError(
            f"{tracks}: {reader.n_frames} frames but {frames} has {frame_attrs['n_frames']}; rebuild the tracks"
        )
    height, width = reader.height, reader.width
    stride = float(np.sqrt(height * width / max(len(reader.query_xy(0)), 1)))  # the query grid spacing, px
    rng = np.random.default_rng(params.seed)
    masks = []
    for t in range(reader.n_frames):
        tr, vis, start = reader.query(t, frames=(t - params.half_window, t + params.half_window + 1))
        fg = frame_foreground(tr, vis, t - start, height, width, stride, params, rng)  # [H, W]
        masks.append(np.stack([fg, 1 - fg]))
    merged = np.stack(masks)  # [T, 2, H, W]
    log.info(
        "track baseline: foreground covers %.1f%% of the pixels on average; %d frames in %.1f s",
        100 * (merged[:, 0] > 0.5).mean(), len(masks), time.perf_counter() - started,
    )
    write_baseline_masks(out, merged, frame_attrs, RUN, params.to_dict())


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.track_baseline", description=__doc__.split("\n")[0])
    parser.add_argument("--tracks", required=True, help="tracks index.json of the sequence")
    parser.add_argument("--frames", required=True, help="frames store of the sequence (identity attrs)")
    parser.add_argument(
        "--params", required=True, type=json_params, help="JSON of the config section `track_baseline`"
    )
    parser.add_argument("--out", required=True, help="masks store to write")

    def body(args: argparse.Namespace) -> None:
        params = TrackBaselineParams.from_mapping(args.params, "track_baseline")
        log.info("params: %s", params)
        run_track_baseline(tracks=args.tracks, frames=args.frames, out=args.out, params=params)

    run_stage("track_baseline", body, parser, argv)


if __name__ == "__main__":
    main()
