"""The flow-chaining tracker against the synthetic generator's exact tracks."""

from __future__ import annotations

import numpy as np
import pytest

from lrtl.backends.flowchain import FlowChainTracker, bilinear
from lrtl.flow import FlowParams, run_flow
from lrtl.synthetic import load_scene
from lrtl.tracks import TrackInputs, TracksParams, query_grid, window_bounds
from tests.conftest import config_section

FLOW = config_section("flow", backend="oracle", gaps=[1])
TRACKS = config_section("tracks", backend="flowchain", chunk_size=4, stride=2, window=12, points_per_batch=1000,
                        storage="float32")


def test_bilinear_is_exact_on_an_affine_field():
    yy, xx = np.mgrid[0:20, 0:30].astype(np.float32)
    field = np.stack([2 * xx + 0.5 * yy, -yy + 3], -1)  # [H, W, 2]
    pts = np.random.default_rng(0).uniform([0, 0], [29, 19], (100, 2)).astype(np.float32)
    expected = np.stack([2 * pts[:, 0] + 0.5 * pts[:, 1], -pts[:, 1] + 3], 1)
    assert np.allclose(bilinear(field, pts), expected, atol=1e-4)


@pytest.fixture(scope="module")
def oracle_run(tiny_dataset, tmp_path_factory):
    name, paths = next(iter(tiny_dataset["sequences"].items()))
    flow = tmp_path_factory.mktemp("flowchain") / "flow.zarr"
    run_flow(
        frames=paths["frames"],
        out=flow,
        params=FlowParams.from_mapping(FLOW),
        ground_truth=paths["ground_truth"],
    )
    scene = load_scene(paths["ground_truth"])
    params = TracksParams.from_mapping(TRACKS)
    inputs = TrackInputs(
        frames=paths["frames"],
        n_frames=scene.n_frames,
        height=scene.height,
        width=scene.width,
        frame_range=(0, scene.n_frames),
        flow=flow,
    )
    tracker = FlowChainTracker(inputs=inputs, params=params)
    results = []
    for q in range(0, scene.n_frames, 3):
        start, length = window_bounds(q, scene.n_frames, params.window)
        xy = query_grid(q, scene.height, scene.width, params.stride)
        pred = tracker.track(q, xy, start, length)
        exact = scene.track(xy, q, np.arange(start, start + length))
        results.append((q - start, pred, exact))
    return results


def test_flowchain_on_exact_flow_matches_the_exact_tracks(oracle_run):
    for q, (tracks, vis), (gt_tracks, gt_vis) in oracle_run:
        assert vis[q].all() and np.array_equal(tracks[q], gt_tracks[q])
        both = vis & gt_vis
        assert both.mean() > 0.5
        err = np.linalg.norm(tracks - gt_tracks, axis=-1)[both]
        assert err.max() < 0.05  # exact flow chained: only float error
        assert (vis == gt_vis).mean() > 0.85
        # predicted visible but really hidden: rare (the stop rules catch occlusions)
        assert (vis & ~gt_vis).sum() <= 0.02 * vis.sum()


def test_forward_backward_check_stops_tracks_at_an_occlusion(oracle_run):
    occluded = stopped = 0
    for q, (_, vis), (gt_tracks, gt_vis) in oracle_run:
        h, w = 64, 96
        inside = (
            (gt_tracks[..., 0] >= 1)
            & (gt_tracks[..., 0] <= w - 2)
            & (gt_tracks[..., 1] >= 1)
            & (gt_tracks[..., 1] <= h - 2)
        )
        hidden = inside & ~gt_vis  # in the frame but behind another layer
        occluded += hidden.sum()
        stopped += (hidden & ~vis).sum()
        # once stopped, a track stays invisible and holds its position
        for direction in (slice(q, None), slice(q, None, -1)):
            v = vis[direction]
            assert not (np.diff(v.astype(int), axis=0) > 0).any()
    assert occluded > 0
    assert stopped / occluded > 0.97


def test_hold_keeps_the_last_position_after_a_stop(oracle_run):
    for q, (tracks, vis), _ in oracle_run:
        for t in range(q + 1, len(vis)):
            held = ~vis[t] & ~vis[t - 1]
            assert np.array_equal(tracks[t][held], tracks[t - 1][held])
