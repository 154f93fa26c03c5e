"""The dominant-motion fit of lrtl.camera against exact synthetic flow (camera = layer 0 of the generator)."""

from __future__ import annotations

import numpy as np
import pytest

from lrtl.camera import camera_flow, fit_affine, residual_speed
from lrtl.synthetic import SyntheticParams, generate_scene
from tests.conftest import config_section

PARAMS = config_section(
    "synthetic", n_sequences=3, height=90, width=160, n_frames=[6, 6], n_objects=[1, 2],
    object_area=[0.05, 0.12], object_speed=[2.0, 3.0], camera_speed=2.0, camera_zoom=0.01, seed=3,
)


@pytest.fixture(scope="module", params=[0, 1, 2])
def scene(request):
    return generate_scene(SyntheticParams.from_mapping(PARAMS), request.param)


@pytest.mark.parametrize("model", ["affine", "lmeds"])
def test_affine_fit_recovers_the_camera_flow_of_the_background(scene, model):
    flow, ids = scene.flow(2, 1), scene.object_ids(2)  # exact flow; the camera moves layer 0 by a similarity
    camera = camera_flow(flow, model, 2)
    background = ids == 0
    assert np.abs(camera - flow)[background].max() < 1e-3  # a similarity is affine: exact on the background
    speed = residual_speed(flow, model)
    for obj in range(1, scene.n_objects + 1):
        if (ids == obj).any():
            assert np.median(speed[ids == obj]) > 0.5  # objects move >= 2 px/frame against the camera


def test_fit_ignores_the_minority_that_moves_otherwise():
    rng = np.random.default_rng(0)
    xy = rng.random((400, 2))
    coef = np.array([[0.5, -1.0], [0.2, 0.1], [-0.3, 0.4]])  # [3, 2]: offset, x and y terms
    velocity = np.concatenate([np.ones((400, 1)), xy], axis=1) @ coef
    outliers = rng.random(400) < 0.3
    velocity[outliers] += rng.normal(0, 5, size=(outliers.sum(), 2))
    fitted = fit_affine(xy, velocity, np.ones(400, bool), iterations=2)
    np.testing.assert_allclose(fitted[~outliers], velocity[~outliers], atol=1e-6)


def test_median_camera_is_the_median_vector():
    flow = np.zeros((4, 5, 2), np.float32)
    flow[..., 0] = 2.0
    flow[0, 0] = [9.0, 9.0]
    np.testing.assert_allclose(camera_flow(flow, "median", 0), np.broadcast_to([2.0, 0.0], flow.shape))
    with pytest.raises(ValueError, match="camera model"):
        camera_flow(flow, "homography", 2)


def test_lmeds_holds_where_the_median_refit_settles_on_a_wrong_inlier_set():
    # seed 5, sequence 1: objects cover 31% of frame 1 and the median refit leaves 0.4 px on the background
    params = {**PARAMS, "n_sequences": 2, "n_objects": [2, 3], "object_area": [0.05, 0.2], "seed": 5}
    scene = generate_scene(SyntheticParams.from_mapping(params), 1)
    flow, background = scene.flow(1, 1), scene.object_ids(1) == 0
    assert np.abs(camera_flow(flow, "affine", 2) - flow)[background].mean() > 0.1
    assert np.abs(camera_flow(flow, "lmeds") - flow)[background].max() < 1e-3


@pytest.fixture(scope="module")
def parallax_scene():
    from tests.unit.test_synthetic import PARALLAX

    return generate_scene(SyntheticParams.from_mapping({**PARALLAX, "n_frames": [8, 8]}), 1)


def test_epipolar_residual_leaves_a_rigid_scene_at_any_depth_still_where_the_affine_one_does_not(parallax_scene):
    """Exact flow of a translating, panning camera over ground, slabs, hillside and sky: no affine map fits the
    static scene (its flow depends on depth), but every static point stays on its epipolar line; the walking
    objects leave theirs."""
    scene = parallax_scene
    flow, ids = scene.flow(1, 2), scene.object_ids(1)  # [H, W, 2], [H, W]: frames 1 -> 3, enough parallax to see
    static = ids == 0
    affine, epipolar = residual_speed(flow, "lmeds"), residual_speed(flow, "epipolar")
    assert np.median(epipolar[static]) < 0.05
    assert np.percentile(affine[static], 90) > 10 * np.percentile(epipolar[static], 90)
    for obj in range(1, scene.n_objects + 1):
        if (ids == obj).sum() >= 20:
            assert np.median(epipolar[ids == obj]) > 10 * np.median(epipolar[static]), obj
    assert np.array_equal(epipolar, residual_speed(flow, "epipolar"))  # least median of squares is deterministic


def test_epipolar_residual_keeps_the_affine_one_when_the_camera_is_still():
    """A still camera: every fundamental matrix fits the static scene, so the affine residual is kept."""
    flow = np.zeros((40, 60, 2), np.float32)
    flow[10:20, 15:30] = (2.0, -1.0)  # one object moves
    np.testing.assert_array_equal(residual_speed(flow, "epipolar"), residual_speed(flow, "lmeds"))
    assert residual_speed(flow, "epipolar")[12, 20] > 2.0


def test_epipolar_residual_keeps_the_affine_one_for_a_camera_that_pans_after_an_object():
    """A camera that pans to follow an object sees the background slide by (3, 0) px and the object stay put, in
    flow as noisy as DIS's on such footage (median 0.15 px). No parallax to measure: a fundamental matrix would
    let the object pass for a far static point, so the affine residual is kept and the object moves."""
    rng = np.random.default_rng(0)
    flow = np.zeros((60, 110, 2), np.float32)
    flow[..., 0] = 3.0
    flow[20:40, 40:70] = 0.0  # the followed object, still in the image
    flow += rng.normal(0.0, 0.13, flow.shape).astype(np.float32)  # median |noise| ~ 0.15 px
    epipolar = residual_speed(flow, "epipolar")
    np.testing.assert_array_equal(epipolar, residual_speed(flow, "lmeds"))
    assert np.median(epipolar[20:40, 40:70]) > 2.0
