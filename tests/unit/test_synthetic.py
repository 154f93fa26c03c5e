"""Ground-truth self-consistency of the synthetic generator, for both scene kinds (layers and parallax)."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from lrtl.cli import StageError
from lrtl.synthetic import Scene, SyntheticParams, generate_scene, scene_from_description, sequence_plan
from tests.conftest import config_section

PARAMS = config_section(
    "synthetic", n_sequences=4, height=96, width=160, n_frames=[10, 14], n_objects=[2, 3],
    object_area=[0.06, 0.18], object_speed=[1.5, 3.0], object_rotation=2.0, camera_speed=1.5, seed=7,
)
PARALLAX = {**PARAMS, "scene": "parallax", "n_sequences": 3, "n_frames": [10, 12], "n_objects": [1, 2],
            "object_area": [0.08, 0.16]}
KINDS = {"layers": PARAMS, "parallax": PARALLAX}


@pytest.fixture(scope="module")
def params():
    return SyntheticParams.from_mapping(PARAMS)


@pytest.fixture(scope="module", params=sorted(KINDS))
def any_params(request):
    return SyntheticParams.from_mapping(KINDS[request.param])


@pytest.fixture(scope="module", params=[("layers", 0), ("layers", 1), ("layers", 2), ("parallax", 0), ("parallax", 1)],
                ids=lambda p: f"{p[0]}-{p[1]}")
def scene(request):
    kind, index = request.param
    return generate_scene(SyntheticParams.from_mapping(KINDS[kind]), index)


def _grid(scene: Scene) -> np.ndarray:
    yy, xx = np.mgrid[0:scene.height, 0:scene.width]
    return np.stack([xx, yy], axis=-1).reshape(-1, 2).astype(np.float32)  # [H*W, 2]


def test_deterministic(any_params):
    params = any_params
    a, b = generate_scene(params, 1), generate_scene(params, 1)
    assert a.description == b.description
    for t in (0, a.n_frames - 1):
        np.testing.assert_array_equal(a.render(t)[0], b.render(t)[0])
    c = generate_scene(params, 2)
    assert np.abs(a.render(0)[0].astype(int) - c.render(0)[0].astype(int)).mean() > 5
    other_seed = generate_scene(dataclasses.replace(params, seed=8), 1)
    assert other_seed.description != a.description


def test_scene_roundtrip_through_json(any_params):
    import json

    a = generate_scene(any_params, 0)
    b = scene_from_description(json.loads(json.dumps(a.description)))
    assert type(b) is type(a)
    np.testing.assert_array_equal(a.render(3)[0], b.render(3)[0])
    np.testing.assert_array_equal(a.flow(3, 1), b.flow(3, 1))


def test_index_out_of_range(params):
    with pytest.raises(StageError, match="n_sequences"):
        generate_scene(params, params.n_sequences)


def test_objects_present_and_sized(scene):
    fractions = np.array([(scene.render(t)[1] > 0).mean() for t in range(scene.n_frames)])
    assert fractions.mean() > 0.04
    assert fractions.max() < 0.7
    assert 1 <= scene.n_objects <= 3


def test_flow_warps_frame_onto_next(scene):
    """Warping frame t+1 back with the exact flow reproduces frame t on non-occluded pixels."""
    h, w = scene.height, scene.width
    q = _grid(scene)
    for t in (0, scene.n_frames // 2):
        a, _ = scene.render(t)
        b, ids_b = scene.render(t + 1)
        flow = scene.flow(t, 1)  # [H, W, 2]
        map_xy = q.reshape(h, w, 2) + flow
        warped = cv2.remap(b, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        _, vis = scene.track(q, t, [t + 1])
        # keep pixels that stay visible and land away from layer boundaries of frame t+1 (bilinear mixing)
        edge = np.zeros((h, w), np.uint8)
        for k in np.unique(ids_b):
            m = (ids_b == k).astype(np.uint8)
            edge |= (m - cv2.erode(m, np.ones((5, 5), np.uint8))).astype(np.uint8)
        near_edge = cv2.remap(edge, map_xy[..., 0], map_xy[..., 1], cv2.INTER_NEAREST) > 0
        ok = vis[0].reshape(h, w) & ~near_edge
        assert ok.mean() > 0.6
        err = np.abs(warped.astype(np.float32) - a).mean(-1)[ok].mean()
        err_zero = np.abs(b.astype(np.float32) - a).mean(-1)[ok].mean()
        assert err < 2.0, err
        assert err_zero > 4 * err, (err, err_zero)


def test_flow_forward_backward_inverse(scene):
    """On pixels visible in both frames, backward flow at the target undoes forward flow."""
    t = scene.n_frames // 2
    q = _grid(scene)
    fwd = scene.flow(t, 1).reshape(-1, 2)
    tracks, vis = scene.track(q, t, [t + 1])
    target = tracks[0][vis[0]]
    ids = scene.surface_at(t + 1, target)
    back = scene.flow(t + 1, -1)
    # evaluate backward flow exactly at the (sub-pixel) target using its layer's transform via track()
    back_pos, _ = scene.track(target, t + 1, [t])
    np.testing.assert_allclose(back_pos[0], q[vis[0]], atol=1e-3)
    assert back.shape == (scene.height, scene.width, 2)
    assert ids.shape == (len(target),)
    assert np.abs(fwd).max() > 0.5


def test_tracks_match_chained_flow(scene):
    rng = np.random.default_rng(0)
    q0 = scene.n_frames // 2
    q = np.stack([rng.integers(0, scene.width, 300), rng.integers(0, scene.height, 300)], 1)
    q = q.astype(np.float32)  # [N, 2]
    frames = np.arange(scene.n_frames)
    tracks, vis = scene.track(q, q0, frames)
    assert tracks.shape == (scene.n_frames, 300, 2) and vis.shape == (scene.n_frames, 300)
    np.testing.assert_array_equal(tracks[q0], q)
    assert vis[q0].all()
    # one step of exact flow at integer query pixels equals the track's next position
    xi, yi = q[:, 0].astype(int), q[:, 1].astype(int)
    np.testing.assert_allclose(tracks[q0 + 1], q + scene.flow(q0, 1)[yi, xi], atol=1e-3)
    np.testing.assert_allclose(tracks[q0 - 1], q + scene.flow(q0, -1)[yi, xi], atol=1e-3)
    # chained flow: from a visible point on its integer-free position, the next step is the flow of its layer
    for t in range(q0 + 1, scene.n_frames - 1):
        sel = vis[t] & vis[t + 1]
        step, _ = scene.track(tracks[t][sel], t, [t + 1])
        np.testing.assert_allclose(step[0], tracks[t + 1][sel], atol=1e-3)
    # visible points lie on the layer the query started on
    layer = scene.surface_at(q0, q)
    for t in frames:
        np.testing.assert_array_equal(scene.surface_at(int(t), tracks[t][vis[t]]), layer[vis[t]])


def test_occlusion_and_boundaries_make_points_invisible(any_params):
    """Across the dataset some tracked points become invisible (occlusion or leaving the frame)."""
    hidden = 0
    for index in range(any_params.n_sequences):
        scene = generate_scene(any_params, index)
        _, vis = scene.track(_grid(scene)[::7], 0, np.arange(scene.n_frames))
        hidden += (~vis[-1]).sum()
    assert hidden > 0


def test_object_ids_match_render(scene):
    t = scene.n_frames - 1
    rgb, ids = scene.render(t)
    assert rgb.dtype == np.uint8 and rgb.shape == (scene.height, scene.width, 3)
    np.testing.assert_array_equal(ids, scene.object_ids(t))
    assert set(np.unique(ids)) <= set(range(scene.n_objects + 1))


def test_sequence_plan_matches_scenes(params):
    plan = sequence_plan(PARAMS)
    assert [name for name, _ in plan] == ["synth-000", "synth-001", "synth-002", "synth-003"]
    assert [n for _, n in plan] == [generate_scene(params, i).n_frames for i in range(params.n_sequences)]
    with pytest.raises(StageError, match="unknown key"):
        sequence_plan({**PARAMS, "colour": 1})
