"""`python -m lrtl.flow` in process: dis, oracle, raft (random weights), .flo files and their import."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrtl import flow, imageops, stores
from lrtl.backends import flo
from lrtl.synthetic import load_scene
from tests.conftest import config_section

PARAMS = config_section(
    "flow",
    backend="dis",
    gaps=[2],
    raft={"weights": "unused.pth", "iterations": 1, "device": "cpu", "batch_size": 2},
)


@pytest.fixture(scope="module")
def sequence(tiny_dataset):
    name, paths = next(iter(tiny_dataset["sequences"].items()))
    return {"name": name, "frames": str(paths["frames"]), "gt": str(paths["ground_truth"])}


def run(sequence, out, params, *flags):
    flow.main(["--frames", sequence["frames"], "--params", json.dumps(params), *flags, "--out", str(out)])


def endpoint_error(a, b):
    return float(np.linalg.norm(a - b, axis=-1).mean())


def test_oracle_and_dis_write_both_directions_of_every_gap(sequence, tmp_path):
    run(sequence, tmp_path / "oracle.zarr", {**PARAMS, "backend": "oracle"}, "--ground-truth", sequence["gt"])
    run(sequence, tmp_path / "dis.zarr", PARAMS)
    scene = load_scene(sequence["gt"])
    oracle, dis = stores.open_flow(tmp_path / "oracle.zarr"), stores.open_flow(tmp_path / "dis.zarr")
    assert stores.validate(tmp_path / "dis.zarr")["gaps"] == [1, 2]  # gap 1 always added
    assert dis.attrs["backend"] == "dis" and dis.attrs["params"] == PARAMS
    for gap in (1, -1, 2, -2):
        pairs = flow.flow_pairs(12, gap)
        exact = np.stack([scene.flow(i, gap) for i, _ in pairs])  # [P, H, W, 2]
        assert np.array_equal(np.stack([stores.read_flow(oracle, gap, i) for i, _ in pairs]), exact)
        estimate = np.stack([stores.read_flow(dis, gap, i) for i, _ in pairs])
        # DIS is clearly better than no motion at all, even on 64x96 frames
        assert endpoint_error(estimate, exact) < 0.7 * endpoint_error(0 * exact, exact)
        invalid = range(12 - gap, 12) if gap > 0 else range(0, -gap)
        assert all(not dis[stores.flow_name(gap)][i].any() for i in invalid)


def test_dis_refined_to_every_pixel_is_closer_to_the_exact_flow(sequence, tmp_path):
    half = {**PARAMS, "gaps": [1], "dis": {**PARAMS["dis"], "finest_scale": 1}}
    full = {**half, "dis": {**half["dis"], "finest_scale": 0}}
    run(sequence, tmp_path / "half.zarr", half)
    run(sequence, tmp_path / "full.zarr", full)
    scene = load_scene(sequence["gt"])
    pairs = flow.flow_pairs(12, 1)
    exact = np.stack([scene.flow(i, 1) for i, _ in pairs])  # [P, H, W, 2]
    errors = {
        name: endpoint_error(np.stack([stores.read_flow(stores.open_flow(tmp_path / f"{name}.zarr"), 1, i)
                                       for i, _ in pairs]), exact)
        for name in ("half", "full")
    }
    assert errors["full"] < 0.9 * errors["half"], errors
    assert stores.open_flow(tmp_path / "full.zarr").attrs["dis_finest_scale"] == 0


def test_raft_with_random_weights(sequence, tmp_path, capsys):
    import torch
    from torchvision.models.optical_flow import raft_large

    weights = tmp_path / "raft_random.pth"
    torch.manual_seed(0)
    torch.save(raft_large(weights=None).state_dict(), weights)
    params = {**PARAMS, "backend": "raft", "gaps": [1], "raft": {**PARAMS["raft"], "weights": str(weights)}}
    short = {**sequence, "frames": str(tmp_path / "short.zarr")}  # 2 frames keep RAFT on CPU quick
    stores.write_frames(
        short["frames"],
        stores.read_rgb(sequence["frames"])[:2],
        np.zeros((0, 64, 96), bool),
        np.zeros(0, np.int32),
        dataset="tiny",
        sequence="short",
    )
    run(short, tmp_path / "raft.zarr", params, "--weights", str(weights))
    group = stores.open_flow(tmp_path / "raft.zarr")
    forward = group["forward_1"][...]
    assert forward.shape == (2, 64, 96, 2) and np.isfinite(forward).all() and forward[0].any()
    assert len(group.attrs["weights_sha256"]) == 64

    with pytest.raises(SystemExit):
        run(short, tmp_path / "raft2.zarr", params, "--weights", str(tmp_path / "missing.pth"))
    err = capsys.readouterr().err
    assert "missing.pth" in err and "download_weights" in err
    assert not (tmp_path / "raft2.zarr").exists()


def test_flo_round_trip_and_format(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(0, 5, (7, 11, 2)).astype(np.float32)
    path = tmp_path / "a" / "00003.flo"
    flo.write_flo(path, data)
    assert np.array_equal(flo.read_flo(path), data)
    raw = path.read_bytes()  # Middlebury: tag, width, height, then row-major (u, v) float32
    assert np.frombuffer(raw[:4], np.float32)[0] == np.float32(202021.25)
    assert np.frombuffer(raw[4:12], np.int32).tolist() == [11, 7]
    assert np.array_equal(np.frombuffer(raw[12:], np.float32).reshape(7, 11, 2), data)
    (tmp_path / "bad.flo").write_bytes(b"\x00" * 16)
    with pytest.raises(flow.StageError, match="not a Middlebury"):
        flo.read_flo(tmp_path / "bad.flo")


@pytest.mark.parametrize("interpolation", ["nearest", "area"])
def test_resize_flow_keeps_pixel_units(interpolation):
    field = np.ones((10, 20, 2), np.float32)
    resized = imageops.resize_flow(field, 5, 40, interpolation=interpolation)
    assert (
        resized.shape == (5, 40, 2) and np.allclose(resized[..., 0], 2) and np.allclose(resized[..., 1], 0.5)
    )


def test_resize_flow_area_averages_when_shrinking():
    field = np.zeros((4, 4, 2), np.float32)
    field[::2, ::2] = 8.0  # one pixel in every 2x2 block moves
    nearest = imageops.resize_flow(field, 2, 2)
    area = imageops.resize_flow(field, 2, 2, interpolation="area")
    assert np.allclose(nearest, 4.0)  # nearest picks that pixel: 8 px at half size
    assert np.allclose(area, 1.0)  # area averages the block: 2 px, at half size 1 px
    with pytest.raises(ValueError, match="interpolation"):
        imageops.resize_flow(field, 2, 2, interpolation="cubic")


def test_motiongrouping_flo_import_matches_the_source(sequence, tmp_path):
    run(sequence, tmp_path / "oracle.zarr", {**PARAMS, "backend": "oracle"}, "--ground-truth", sequence["gt"])
    oracle = stores.open_flow(tmp_path / "oracle.zarr")
    names = stores.open_store(sequence["frames"], "frames").attrs["frame_names"]
    root = tmp_path / "DAVIS"
    for gap in (1, -1, 2, -2):
        for i, _ in flow.flow_pairs(12, gap):
            flo.write_flo(
                flo.motiongrouping_flo_path(root, "1080p", sequence["name"], names, i, gap),
                stores.read_flow(oracle, gap, i),
            )
    assert (
        root / "Flows_gap-2" / "1080p" / sequence["name"] / f"{names[11].rsplit('.', 1)[0]}.flo"
    ).is_file()
    run(
        sequence,
        tmp_path / "flo.zarr",
        {**PARAMS, "backend": "flo", "flo": {"subdir": "1080p"}},
        "--flo-root",
        str(root),
    )
    imported = stores.open_flow(tmp_path / "flo.zarr")
    for gap in (1, -1, 2, -2):
        assert np.array_equal(imported[stores.flow_name(gap)][...], oracle[stores.flow_name(gap)][...])


def test_threads_flag_limits_opencv_for_dis(sequence, tmp_path):
    import cv2

    before = cv2.getNumThreads()
    try:
        run(sequence, tmp_path / "dis.zarr", PARAMS, "--threads", "1")
        assert cv2.getNumThreads() == 1  # DIS ran in OpenCV's pool held to the rule's threads
    finally:
        cv2.setNumThreads(before)
    assert stores.validate(tmp_path / "dis.zarr")["gaps"] == [1, 2]
