"""lrtl.infer and lrtl.baseline command lines on a tiny moving-square sequence."""

import base64
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lrtl import stores
from lrtl.baseline import main as baseline_main
from lrtl.imageops import upsample
from lrtl.infer import main as infer_main
from lrtl.model_inputs import read_residual_speed
from lrtl.pictures import main as pictures_main
from tests.conftest import config_section, tiny_model

T, H, W = 6, 40, 56

TINY_MODEL = tiny_model(k=4, backbone={"inputs": ["rgb"]})
FLOW_MODEL = tiny_model(k=4, backbone={"inputs": ["rgb", "flow"]})
_INFER = config_section(
    "infer",
    device="cpu",
    batch_size=4,
    merge_features="decoder",
    dino_weights=None,
    refine={"radius": 0, "eps": 1e-3},  # merged masks at the model's size: the merge itself is checked
    pictures={"thumb_width": 40, "sheet_columns": 3, "sheet_max_frames": 4, "gif_fps": 5.0},
)
PICTURES = _INFER["pictures"]
INFER = {key: value for key, value in _INFER.items() if key != "pictures"}  # the infer rule's params


def square_masks(n_frames=T, height=H, width=W, speed=3):
    masks = np.zeros((n_frames, height, width), dtype=bool)
    for t in range(n_frames):
        masks[t, 10:24, 8 + speed * t : 22 + speed * t] = True
    return masks


@pytest.fixture(scope="module")
def sequence(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(0)
    masks = square_masks()
    rgb = rng.integers(0, 80, size=(T, H, W, 3), dtype=np.uint8)
    rgb[masks] = 200
    frames = root / "frames.zarr"
    stores.write_frames(frames, rgb, masks, np.arange(T), dataset="tiny", sequence="square")
    return {"root": root, "frames": frames, "masks": masks}


def write_checkpoint(path, model_cfg):
    from lrtl.checkpoint import CHECKPOINT_FORMAT
    from lrtl.model import build_model

    torch.manual_seed(0)
    model = build_model(dict(model_cfg))
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_cfg": dict(model_cfg),
            "model": model.state_dict(),
            "step": 7,
            "params": {"seed": 3, "compat": "fixed"},
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoint(sequence):
    return write_checkpoint(sequence["root"] / "model.pt", TINY_MODEL)


def square_flow(sequence, camera=(1.5, -0.5)):
    """A flow store of the moving square: the camera's flow plus 3 px/frame to the right on the square."""
    masks = sequence["masks"]
    camera = np.array(camera, dtype=np.float32)
    flows = {g: np.zeros((T, H, W, 2), np.float32) + np.sign(g) * camera for g in (1, -1)}
    for t in range(T):
        flows[1][t][masks[t]] = camera + [3.0, 0.0]  # the square moves 3 px right relative to the camera
        flows[-1][t][masks[t]] = -(camera + [3.0, 0.0])
    flow = sequence["root"] / "flow.zarr"
    if not flow.exists():
        stores.write_flow(flow, flows, backend="test")
    return flow


def run_infer(sequence, checkpoint, params, name, flow=None):
    out = sequence["root"] / f"{name}.zarr"
    pictures = sequence["root"] / name
    infer_main(
        [
            "--model", str(checkpoint),
            "--frames", str(sequence["frames"]),
            *(["--flow", str(flow)] if flow else []),
            "--params", json.dumps(params),
            "--run", name,
            "--out", str(out),
        ]
    )  # fmt: skip
    return out, pictures


def draw_pictures(sequence, masks, pictures):
    pictures_main(
        ["--masks", str(masks), "--frames", str(sequence["frames"]), "--params", json.dumps(PICTURES),
         "--out", str(pictures)]
    )


def test_infer_writes_masks_and_pictures_draws_them(sequence, checkpoint):
    out, pictures = run_infer(sequence, checkpoint, INFER, "full")
    assert not pictures.exists()  # inference writes only the masks store
    draw_pictures(sequence, out, pictures)
    attrs = stores.validate(out)
    soft, merged, attrs = stores.read_masks(out)
    assert soft.shape == (T, 4, 32, 48) and merged.shape == (T, 2, 32, 48)
    assert attrs["run"] == "full" and attrs["sequence"] == "square" and attrs["seed"] == 3
    assert attrs["checkpoint_rule"] == "last" and attrs["checkpoint_step"] == 7
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=5e-3)  # softmax over K (float16 storage)
    # the merge partitions the K masks: each merged mask is the sum of its group's soft masks
    groups = np.array(attrs["groups"])  # [T, K]
    for t in range(T):
        for g in (0, 1):
            np.testing.assert_allclose(merged[t, g], soft[t][groups[t] == g].sum(axis=0), atol=5e-3)
    pngs = sorted(pictures.glob("[0-9]*.png"))
    assert [p.name for p in pngs] == [f"{t:05d}.png" for t in range(T)]
    binary = np.array(Image.open(pngs[0]))
    assert binary.shape == (H, W) and set(np.unique(binary)) <= {0, 255}
    for name in ("overlay-sheet.png", "k-masks-sheet.png", "overlay.gif"):
        assert (pictures / name).is_file()
    assert Image.open(pictures / "overlay.gif").n_frames == T
    svg = (pictures / "overlay.svg").read_text()  # the GIF in an SVG image, as Snakemake's report shows it
    embedded = base64.b64decode(re.search(r'href="data:image/gif;base64,([^"]+)"', svg).group(1))
    assert embedded == (pictures / "overlay.gif").read_bytes()
    gif_width, gif_height = Image.open(pictures / "overlay.gif").size
    assert f'width="{2 * gif_width}" height="{2 * gif_height}"' in svg
    assert not list(sequence["root"].glob("*.tmp-*"))  # atomic writes leave nothing behind


def test_infer_of_a_model_that_takes_flow_reads_the_flow_store(sequence, capsys):
    checkpoint = write_checkpoint(sequence["root"] / "flow-model.pt", FLOW_MODEL)
    with pytest.raises(SystemExit):
        run_infer(sequence, checkpoint, INFER, "flow-missing")
    assert "--flow" in capsys.readouterr().err
    out, _ = run_infer(sequence, checkpoint, INFER, "with-flow", flow=square_flow(sequence))
    soft, merged, _ = stores.read_masks(out)
    assert soft.shape == (T, 4, 32, 48)
    np.testing.assert_allclose(merged.sum(axis=1), 1.0, atol=5e-3)


def test_refined_merged_masks_come_at_the_frames_resolution_and_follow_its_edges(sequence):
    checkpoint = write_checkpoint(sequence["root"] / "flow-model-refine.pt", FLOW_MODEL)
    flow = square_flow(sequence)
    plain, _ = run_infer(sequence, checkpoint, dict(INFER, merge_features="motion"), "plain", flow=flow)
    params = dict(INFER, merge_features="motion", refine={"radius": 3, "eps": 1e-3})
    refined, _ = run_infer(sequence, checkpoint, params, "refined", flow=flow)
    soft, merged, attrs = stores.read_masks(refined)
    soft_plain, merged_plain, _ = stores.read_masks(plain)
    assert soft.shape == (T, 4, 32, 48) and merged.shape == (T, 2, H, W)  # K masks at the model's size
    np.testing.assert_array_equal(soft, soft_plain)
    assert attrs["params"]["refine"] == {"radius": 3, "eps": 1e-3}
    assert merged.min() >= 0.0 and merged.max() <= 1.0
    np.testing.assert_allclose(merged.sum(axis=1), 1.0, atol=1e-2)  # the filter is linear: the pair still sums to 1
    assert not np.array_equal(merged, upsample(merged_plain, H, W).astype(np.float16).astype(np.float32))


def test_infer_dino_merge_needs_weights_file(sequence, checkpoint, capsys):
    params = dict(INFER, merge_features="dino_vits8", dino_weights=str(sequence["root"] / "missing.pth"))
    with pytest.raises(SystemExit):
        run_infer(sequence, checkpoint, params, "dino-missing")
    err = capsys.readouterr().err
    assert "missing.pth" in err and "download_weights" in err


def test_infer_dino_merge_with_random_weights(sequence, checkpoint):
    import timm

    weights = sequence["root"] / "dino_vits8_random.pth"
    vit = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0)
    torch.save(vit.state_dict(), weights)
    params = dict(INFER, merge_features="dino_vits8", dino_weights=str(weights))
    out, _ = run_infer(sequence, checkpoint, params, "dino")
    soft, merged, attrs = stores.read_masks(out)
    assert attrs["merge"] == "dino_vits8"
    np.testing.assert_allclose(merged.sum(axis=1), 1.0, atol=5e-3)


def test_infer_rejects_unknown_param(sequence, checkpoint):
    with pytest.raises(SystemExit):
        run_infer(sequence, checkpoint, dict(INFER, batchsize=2), "typo")


def test_infer_run_settings_apart_from_params_give_the_same_masks(sequence, checkpoint):
    out, _ = run_infer(sequence, checkpoint, INFER, "whole")
    result = {key: value for key, value in INFER.items() if key not in ("device", "batch_size")}
    split = sequence["root"] / "split.zarr"
    infer_main(["--model", str(checkpoint), "--frames", str(sequence["frames"]), "--params", json.dumps(result),
                "--settings", json.dumps({"device": "cpu", "batch_size": 1}), "--run", "split", "--out", str(split)])
    # the same masks up to float summation order (batch 1 vs 4) and one float16 step of the store
    np.testing.assert_allclose(stores.read_masks(out)[0], stores.read_masks(split)[0], atol=5e-4)
    with pytest.raises(SystemExit):  # a key given twice is refused
        infer_main(["--model", str(checkpoint), "--frames", str(sequence["frames"]), "--params", json.dumps(INFER),
                    "--settings", json.dumps({"batch_size": 1}), "--run", "twice", "--out", str(split) + "2"])


def test_non_finite_masks_stop_the_pictures_naming_the_store(sequence, checkpoint, capsys):
    out, pictures = run_infer(sequence, checkpoint, INFER, "nan")
    import zarr

    soft = zarr.open_group(str(out), mode="r+")["soft"]
    soft[2, 1, 3, 4] = np.nan
    with pytest.raises(SystemExit):
        draw_pictures(sequence, out, pictures)
    err = capsys.readouterr().err
    assert str(out) in err and "frame(s) [2]" in err and "soft" in err
    assert not pictures.exists()


def test_baseline_finds_the_moving_square_under_camera_motion(sequence):
    masks = sequence["masks"]
    flow = square_flow(sequence)
    for model in ("median", "affine"):
        out = sequence["root"] / f"baseline-{model}.zarr"
        params = config_section("baseline", camera_model=model, threshold_px=1.0)
        baseline_main(
            ["--flow", str(flow), "--frames", str(sequence["frames"]), "--params", json.dumps(params),
             "--out", str(out)]
        )  # fmt: skip
        soft, merged, attrs = stores.read_masks(out)
        assert attrs["run"] == "baseline" and merged.shape == (T, 2, H, W)
        np.testing.assert_array_equal(merged[:, 0] > 0.5, masks)
        np.testing.assert_array_equal(merged[:, 1], 1 - merged[:, 0])


def test_motion_merge_needs_the_flow_and_records_the_moving_group_first(sequence, checkpoint, capsys):
    params = dict(INFER, merge_features="motion")
    with pytest.raises(SystemExit):
        run_infer(sequence, checkpoint, params, "motion-noflow")
    assert "--flow" in capsys.readouterr().err
    out, pictures = run_infer(sequence, checkpoint, params, "motion", flow=square_flow(sequence))
    soft, merged, attrs = stores.read_masks(out)
    assert attrs["merge"] == "motion"
    groups = np.array(attrs["groups"])  # [T, K]
    speed = read_residual_speed(square_flow(sequence), soft.shape[-2:])  # [T, h, w], px against the camera
    assert speed[0, 13, 12] > 1.0 and speed[0, 30, 45] < 0.1  # the square (rows 8-19, cols 6-17 here) moves
    for t in range(T):  # the merge partitions the K masks; group 0 is the faster group
        np.testing.assert_allclose(merged[t, 0], soft[t][groups[t] == 0].sum(axis=0), atol=5e-3)
        mean_speed = [(merged[t, g] * speed[t]).sum() / merged[t, g].sum() for g in (0, 1)]
        assert mean_speed[0] >= mean_speed[1]


def test_pictures_write_binary_masks_at_the_native_resolution(tmp_path):
    from lrtl.pictures import PicturesParams, write_sequence_pictures

    rgb = np.zeros((2, 24, 40, 3), np.uint8)
    merged = np.zeros((2, 2, 12, 20), np.float32)
    merged[:, 0, :, :] = 1.0  # mask 0 covers the whole frame, border included
    merged[:, 0, 4:8, 8:12], merged[:, 1, 4:8, 8:12] = 0.0, 1.0  # mask 1: a small box inside
    params = PicturesParams.from_mapping(PICTURES, "infer.pictures")
    write_sequence_pictures(tmp_path / "a", rgb, merged, merged, params, native_size=(90, 160))
    heuristic = np.array(Image.open(tmp_path / "a" / "00000.png"))
    assert heuristic.shape == (90, 160)  # the video's own size, not the 24x40 store
    assert heuristic[0, 0] == 0 and heuristic[45, 80] == 255  # border heuristic: the inner box is foreground
    write_sequence_pictures(tmp_path / "b", rgb, merged, merged, params, foreground_first=True)
    first = np.array(Image.open(tmp_path / "b" / "00000.png"))
    assert first.shape == (24, 40) and first[0, 0] == 255  # the masks say mask 0 is the foreground
