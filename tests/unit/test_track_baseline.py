"""The no-learning track baseline (lrtl.track_baseline): residual motion, clustering, densification, the CLI."""

from __future__ import annotations

import json

import numpy as np

from lrtl import stores
from lrtl.metrics import best_of_two
from lrtl.track_baseline import (
    TrackBaselineParams,
    camera_residuals,
    densify,
    frame_foreground,
    main,
    motion_distance,
)
from tests.conftest import config_section

PARAMS = TrackBaselineParams.from_mapping(config_section("track_baseline"))


def scene(height=60, width=90, steps=8, camera_zoom=0.01, object_speed=(2.0, 0.5)):
    """Grid tracks (stride 3) under a zooming, panning camera; a 15x20 box moves on top. -> tracks, vis, box."""
    ys, xs = np.mgrid[1:height:3, 1:width:3]
    xy0 = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)  # [N, 2]
    box = (xy0[:, 0] >= 30) & (xy0[:, 0] < 50) & (xy0[:, 1] >= 20) & (xy0[:, 1] < 35)
    centre = np.array([width / 2, height / 2])
    tracks = [xy0]
    for _ in range(steps):
        xy = tracks[-1]
        step = (xy - centre) * camera_zoom + np.array([1.0, -0.5])  # camera: zoom + pan
        step[box] += object_speed
        tracks.append(xy + step)
    return np.stack(tracks).astype(np.float32), np.ones((steps + 1, len(xy0)), bool), box


def test_camera_residuals_vanish_for_an_affine_field_and_not_for_the_object():
    tracks, vis, box = scene()
    velocity = (tracks[1] - tracks[0]).astype(np.float64)
    residual = camera_residuals(tracks[0] / 90.0, velocity, vis[0], iterations=2)
    assert np.abs(residual[~box]).max() < 1e-4
    assert np.linalg.norm(residual[box], axis=1).min() > 1.5


def test_motion_distance_is_the_largest_difference_over_shared_steps():
    ra = np.zeros((3, 1, 2), np.float32)
    rb = np.zeros((3, 2, 2), np.float32)
    rb[1, 0] = [3.0, 4.0]  # 25 at step 1
    rb[2, 1] = [1.0, 0.0]  # 1 at step 2
    va, vb = np.ones((3, 1), bool), np.ones((3, 2), bool)
    np.testing.assert_allclose(motion_distance(ra, va, rb, vb), [[25.0, 1.0]])
    vb[1, 0] = False  # not visible at the step where they differ most
    np.testing.assert_allclose(motion_distance(ra, va, rb, vb), [[0.0, 1.0]])


def test_densify_spreads_grid_labels_to_pixels():
    xy = np.array([[2.0, 2.0], [8.0, 8.0]], np.float32)
    soft = densify(xy, np.array([1.0, 0.0]), 10, 10, sigma=1.5)
    assert soft.shape == (10, 10) and soft[2, 2] > 0.9 and soft[8, 8] < 0.1


def test_frame_foreground_finds_the_moving_box_under_camera_zoom():
    tracks, vis, box = scene()
    fg = frame_foreground(tracks, vis, 4, 60, 90, 3.0, PARAMS, np.random.default_rng(0))
    (x0, y0), (x1, y1) = tracks[4][box].min(axis=0) - 1.5, tracks[4][box].max(axis=0) + 1.5  # the box at t = 4
    truth = np.zeros((60, 90), bool)
    truth[round(y0) : round(y1), round(x0) : round(x1)] = True
    j, _ = best_of_two(np.stack([fg > 0.5, fg <= 0.5]), truth)
    assert j > 0.5  # boundaries blur over a grid step (all-foreground: 0.05)


def test_cli_writes_a_masks_store(tiny_dataset, tmp_path):
    from tests.unit.test_data import build_training_inputs

    inputs = build_training_inputs(tiny_dataset, tmp_path)
    out = tmp_path / "baseline_tracks.zarr"
    main(["--tracks", inputs["tracks"][0], "--frames", inputs["frames"][0],
          "--params", json.dumps(config_section("track_baseline")), "--out", str(out)])  # fmt: skip
    soft, merged, attrs = stores.read_masks(out)
    assert attrs["run"] == "baseline_tracks" and merged.shape[:2] == (12, 2)
    np.testing.assert_allclose(merged.sum(axis=1), 1.0, atol=1e-3)
