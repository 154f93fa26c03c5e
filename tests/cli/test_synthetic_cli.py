"""lrtl.synthetic CLI: DAVIS-layout JPEG/PNG output and the ground-truth store."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lrtl import stores, synthetic
from tests.conftest import TINY_SYNTHETIC


def test_cli_writes_layout_and_ground_truth(tmp_path):
    images, annotations, gt = tmp_path / "img" / "s", tmp_path / "ann" / "s", tmp_path / "gt.zarr"
    synthetic.main(["--params", json.dumps({**TINY_SYNTHETIC, "gaps": [1, 2]}), "--sequence-index", "1",
                    "--name", "s", "--images", str(images), "--annotations", str(annotations),
                    "--ground-truth", str(gt)])
    jpgs, pngs = sorted(images.glob("*.jpg")), sorted(annotations.glob("*.png"))
    assert [p.name for p in jpgs][:2] == ["00000.jpg", "00001.jpg"]
    assert len(jpgs) == len(pngs) == TINY_SYNTHETIC["n_frames"][0]
    scene = synthetic.load_scene(gt)
    group = stores.open_store(gt, "synthetic_gt")
    assert set(group.array_keys()) == {"object_ids", "forward_1", "backward_1", "forward_2", "backward_2"}
    ids = group["object_ids"][...]
    for t in (0, scene.n_frames - 1):
        rgb, scene_ids = scene.render(t)
        np.testing.assert_array_equal(ids[t], scene_ids)
        # annotation = union of all objects, 0/255
        mask = cv2.imread(str(pngs[t]), cv2.IMREAD_UNCHANGED)
        assert set(np.unique(mask)) <= {0, 255}
        np.testing.assert_array_equal(mask == 255, scene_ids > 0)
        # JPEG ~ render
        jpg = cv2.imread(str(jpgs[t]))[..., ::-1]
        assert np.abs(jpg.astype(int) - rgb).mean() < 4
    np.testing.assert_array_equal(group["forward_2"][3], scene.flow(3, 2))
    np.testing.assert_array_equal(group["backward_1"][3], scene.flow(3, -1))
    assert not group["forward_1"][scene.n_frames - 1].any()
    assert not group["backward_2"][1].any()
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_cli_rejects_unknown_key(tmp_path):
    with pytest.raises(SystemExit):
        synthetic.main(["--params", json.dumps({**TINY_SYNTHETIC, "heigth": 3}), "--sequence-index", "0",
                        "--name", "s", "--images", str(tmp_path / "i"), "--annotations", str(tmp_path / "a"),
                        "--ground-truth", str(tmp_path / "g.zarr")])
    assert not (tmp_path / "i").exists()


def test_tiny_dataset_fixture(tiny_dataset):
    assert set(tiny_dataset["sequences"]) == {"synth-000", "synth-001"}
    for paths in tiny_dataset["sequences"].values():
        rgb = stores.read_rgb(paths["frames"])
        gt, gt_index = stores.read_ground_truth(paths["frames"])
        assert rgb.shape == (12, 64, 96, 3)
        np.testing.assert_array_equal(gt_index, np.arange(12))
        ids = stores.open_store(paths["ground_truth"], "synthetic_gt")["object_ids"][...]
        np.testing.assert_array_equal(gt, ids > 0)


def test_cli_writes_a_parallax_sequence_the_oracle_backends_read(tmp_path):
    """scene: parallax through the same CLI and store: the ground truth rebuilds the 3D scene (load_scene, which
    the oracle flow and track backends use), and a layers store's attrs keep the params of before."""
    from lrtl.parallax import ParallaxScene

    params = {**TINY_SYNTHETIC, "scene": "parallax", "n_frames": [8, 8], "gaps": [2]}
    images, annotations, gt = tmp_path / "img" / "p", tmp_path / "ann" / "p", tmp_path / "gt.zarr"
    synthetic.main(["--params", json.dumps(params), "--sequence-index", "0", "--name", "parallax-000",
                    "--images", str(images), "--annotations", str(annotations), "--ground-truth", str(gt)])
    scene = synthetic.load_scene(gt)
    assert isinstance(scene, ParallaxScene)
    group = stores.open_store(gt, "synthetic_gt")
    assert group.attrs["params"]["scene"] == "parallax"
    assert set(group.array_keys()) == {"object_ids", "forward_1", "backward_1", "forward_2", "backward_2"}
    np.testing.assert_array_equal(group["forward_2"][5], scene.flow(5, 2))
    np.testing.assert_array_equal(group["backward_1"][3], scene.flow(3, -1))
    for t in (0, 7):
        mask = cv2.imread(str(annotations / f"{t:05d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(mask == 255, scene.object_ids(t) > 0)
        np.testing.assert_array_equal(group["object_ids"][t], scene.object_ids(t))
    layers_gt = tmp_path / "layers.zarr"
    synthetic.main(["--params", json.dumps(TINY_SYNTHETIC), "--sequence-index", "0", "--name", "s",
                    "--images", str(tmp_path / "li"), "--annotations", str(tmp_path / "la"),
                    "--ground-truth", str(layers_gt)])
    attrs = stores.open_store(layers_gt, "synthetic_gt").attrs["params"]
    assert "scene" not in attrs and "parallax" not in attrs
