"""The parallax scene's ground truth against its geometry, and the layers scene left as it was.

The generic checks (flow warps frames, tracks follow flow, determinism, JSON round trip) run on both scene kinds
in test_synthetic.py; here: what only a 3D scene has (depth-dependent flow of a rigid scene whose tracks stay
low rank), masks against an independent projection, and the default dataset unchanged.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lrtl.parallax import ParallaxScene
from lrtl.synthetic import SyntheticParams, generate_scene, job_params, sequence_plan
from tests.unit.test_synthetic import PARALLAX

LONG = {**PARALLAX, "n_frames": [30, 30]}


@pytest.fixture(scope="module", params=[0, 1, 2])
def long_scene(request) -> ParallaxScene:
    return generate_scene(SyntheticParams.from_mapping(LONG), request.param)


def _grid(scene: ParallaxScene, step: int) -> np.ndarray:
    yy, xx = np.mgrid[0:scene.height:step, 0:scene.width:step]
    return np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)  # [N, 2]


def _trajectory_matrix(tracks: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """The trajectory loss's matrix [2T, N] of the tracks `sel` (x rows then y rows, raw pixels, not centred)."""
    return np.concatenate([tracks[:, sel, 0], tracks[:, sel, 1]], axis=0).astype(np.float64)


def test_static_tracks_stay_low_rank_whatever_the_depth_but_objects_leave_that_subspace(long_scene):
    """The paper's premise: the tracks of a rigid scene under a perspective camera lie near a rank-5 subspace, the
    near slabs, the ground, the far hillside and the sky together; a moving object's tracks lie far from it."""
    scene = long_scene
    t = scene.n_frames // 2
    query = _grid(scene, 3)
    surface = scene.surface_at(t, query)
    objects = scene.object_of(surface)
    tracks, _ = scene.track(query, t, np.arange(scene.n_frames))  # [T, N, 2] exact, occluded or not
    static = objects == 0
    assert {"ground", "hillside", "slab"} <= {scene.surface_name(k) for k in np.unique(surface[static])}
    basis = np.linalg.svd(_trajectory_matrix(tracks, static), full_matrices=False)[0][:, :5]  # [2T, 5]

    def off(cols: np.ndarray) -> float:  # RMS px of the columns [2T, n] off the static rank-5 subspace
        return float(np.sqrt(((cols - basis @ (basis.T @ cols)) ** 2).mean()))

    rigid = off(_trajectory_matrix(tracks, static))
    assert rigid < 0.12, rigid
    for k in range(1, scene.n_objects + 1):
        if (objects == k).sum() >= 10:
            assert off(_trajectory_matrix(tracks, objects == k)) > 8 * rigid


def test_static_flow_differs_by_depth_so_one_quadratic_model_does_not_fit_it(long_scene):
    """The flow loss's per-segment model (a quadratic in x, y) fits each static plane's flow but not the static
    scene's: near planes move more than far ones under camera translation (the pan removes a common part)."""
    scene = long_scene
    t = scene.n_frames // 2
    surface = scene.surface_map(t)
    flow = scene.flow(t, 2)  # [H, W, 2]
    static = scene.object_ids(t) == 0
    # translation part of the flow: the flow minus that of the same direction at infinity (rotation only)
    rays = scene._rays(t, scene._grid)  # [H, W, 3]
    at_infinity, _ = scene._project(t + 2, rays, np.ones(rays.shape[:2], bool))
    parallax = np.linalg.norm(flow - (at_infinity - scene._grid), axis=-1)  # [H, W]
    depth = {k: np.median(scene._plane_coords(k, t, scene._centres[t], rays[surface == k])[0])
             for k in np.unique(surface[static]) if k}
    near, far = min(depth, key=depth.get), max(depth, key=depth.get)
    assert depth[far] > 3 * depth[near]
    assert np.median(parallax[surface == near]) > 3 * np.median(parallax[surface == far])
    assert np.median(parallax[surface == 0]) < 1e-3  # the sky is at infinity
    # least squares of the GWM basis [a, c, a^2, c^2, ac, 1], over all static pixels or per plane
    a, c = np.mgrid[0:scene.height, 0:scene.width]
    a, c = a / scene.height, c / scene.width
    basis = np.stack([a, c, a * a, c * c, a * c, np.ones_like(a)], axis=-1)  # [H, W, 6]

    def squared_residual(sel: np.ndarray) -> float:
        fit, *_ = np.linalg.lstsq(basis[sel], flow[sel], rcond=None)
        return float(((flow[sel] - basis[sel] @ fit) ** 2).sum())

    whole = np.sqrt(squared_residual(static) / static.sum())
    per_plane = np.sqrt(sum(squared_residual(static & (surface == k)) for k in np.unique(surface[static]))
                        / static.sum())
    assert whole > 0.2 and whole > 20 * per_plane, (whole, per_plane)


def _homography(scene: ParallaxScene, index: int, frame: int) -> np.ndarray:
    """Canvas px of object `index` (0-based) -> image px of `frame` [3, 3], written from the camera model."""
    obj = scene.description["objects"][index]
    origin, u, v = (np.asarray(obj[key][frame]) for key in ("origin", "u", "v"))
    rotation = np.asarray(scene.description["camera"]["rotations"][frame])
    centre = np.asarray(scene.description["camera"]["centres"][frame])
    k = np.array([[scene.focal, 0, (scene.width - 1) / 2], [0, scene.focal, (scene.height - 1) / 2], [0, 0, 1]])
    plane = rotation @ np.stack([u, v, origin - centre], axis=1)  # (a, b, 1) -> camera
    ppu, (a0, b0) = obj["ppu"], obj["tex_origin"]
    canvas = np.array([[1 / ppu, 0, a0], [0, -1 / ppu, b0], [0, 0, 1]])  # canvas px -> (a, b, 1)
    return k @ plane @ canvas


def test_masks_are_the_projected_objects(long_scene):
    """Object ids equal each object's canonical mask warped by its plane's homography (cv2), where no nearer
    surface (a slab or another object) covers it."""
    scene = long_scene
    for t in (0, scene.n_frames // 2, scene.n_frames - 1):
        surface = scene.surface_map(t)
        ids = scene.object_ids(t)
        slab = np.isin(surface, [k for k in np.unique(surface) if scene.surface_name(k) == "slab"])
        for index in range(scene.n_objects):
            mask = scene.canvas_mask(index + 1).astype(np.uint8)
            warped = cv2.warpPerspective(mask, _homography(scene, index, t), (scene.width, scene.height),
                                         flags=cv2.INTER_NEAREST) > 0
            free = ~slab & ((ids == 0) | (ids == index + 1))
            mine, theirs = (ids == index + 1) & free, warped & free
            if theirs.sum() < 30:
                continue
            iou = (mine & theirs).sum() / (mine | theirs).sum()
            assert iou > 0.95, (t, index, iou)
            assert not (ids == index + 1)[~warped & ~slab].sum() > 0.05 * mine.sum()


def test_thin_parts_and_sky_are_there(long_scene):
    """Objects have thin parts (a few px wide in the image) and the sky is a flat region of the frame."""
    scene = long_scene
    t = scene.n_frames // 2
    rgb, ids = scene.render(t)
    surface = scene.surface_map(t)
    sky = surface == 0
    assert 0.03 < sky.mean() < 0.5
    assert rgb[sky].astype(np.float32).std(0).max() < 8  # nearly one colour
    opened = cv2.morphologyEx((ids > 0).astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    assert ((ids > 0) & (opened == 0)).sum() > 40  # parts thinner than 7 px
    assert min(w for o in scene.description["objects"] for *_, w in o["bars"]) >= 2


def test_layers_scene_is_the_default_and_its_params_unchanged():
    """scene: layers gives the scene of before the parallax scene: its job params leave the new keys out, and the
    layers generator ignores the parallax keys."""
    from tests.unit.test_synthetic import PARAMS

    assert PARAMS["scene"] == "layers"
    old = job_params(PARAMS)
    assert "scene" not in old and "parallax" not in old
    assert job_params(PARALLAX)["scene"] == "parallax"
    new = generate_scene(SyntheticParams.from_mapping(PARAMS), 1)
    before = generate_scene(SyntheticParams.from_mapping(old), 1)
    assert new.description == before.description
    np.testing.assert_array_equal(new.render(2)[0], before.render(2)[0])
    assert [n for n, _ in sequence_plan(PARALLAX)] == ["parallax-000", "parallax-001", "parallax-002"]
    assert sequence_plan(PARAMS)[0][0] == "synth-000"


def test_the_overlay_gives_its_dataset_its_own_generator_settings():
    """datasets.<d>.synthetic is merged over the synthetic section (the workflow's synthetic_params); the schema
    requires it on synthetic datasets, checks its keys, and refuses an override on other layouts."""
    import copy
    from pathlib import Path

    import jsonschema
    import yaml
    from snakemake.utils import update_config

    repo = Path(__file__).resolve().parents[2]
    schema = yaml.safe_load((repo / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((repo / "config.yaml").read_text())
    update_config(config, yaml.safe_load((repo / "workflow" / "overlays" / "synthetic-parallax.yaml").read_text()))
    jsonschema.validate(config, schema)
    section = copy.deepcopy(config["synthetic"])
    update_config(section, config["datasets"]["synthetic_parallax"]["synthetic"])
    params = SyntheticParams.from_mapping(section)
    assert params.scene == "parallax" and params.parallax is not None and params.n_sequences == 4
    assert config["synthetic"]["scene"] == "layers"  # the default dataset keeps the layers scene
    for bad in ({"parallax": {"focl": 1.0}}, {"scene": "cubes"}):
        broken = copy.deepcopy(config)
        broken["datasets"]["synthetic_parallax"]["synthetic"] = bad
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)
    for name, edit in (("synthetic_parallax", lambda d: d.pop("synthetic")),
                       ("davis2016", lambda d: d.update(synthetic={"seed": 3}))):
        broken = copy.deepcopy(config)
        edit(broken["datasets"][name])
        with pytest.raises(jsonschema.ValidationError, match="synthetic"):
            jsonschema.validate(broken, schema)
