"""lrtl.frames CLI: image folders, video files, corrupt input and ground truth."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from lrtl import frames, stores
from lrtl.cli import StageError
from tests.conftest import TINY_FRAMES, config_section

HALF = config_section("frames", height=32, width=48)  # half the tiny frames


def _run(*args: str) -> None:
    frames.main(list(args))


def test_image_folder_resized_with_gt(tiny_dataset, tmp_path):
    seq = tiny_dataset["sequences"]["synth-000"]
    out = tmp_path / "f.zarr"
    _run("--layout", "synthetic", "--images", str(seq["images"]), "--annotations", str(seq["annotations"]),
         "--dataset", "tiny", "--sequence", "synth-000", "--params", json.dumps(HALF),
         "--out", str(out))
    attrs = stores.validate(out)
    assert attrs["frame_names"][:2] == ["00000", "00001"] and attrs["n_frames"] == 12
    assert attrs["dataset"] == "tiny" and attrs["sequence"] == "synth-000"
    assert attrs["source"] == str(seq["images"])
    rgb = stores.read_rgb(out)
    assert rgb.shape == (12, 32, 48, 3)
    gt, gt_index = stores.read_ground_truth(out)
    assert gt.shape == (12, 64, 96)  # native resolution
    full = stores.read_rgb(seq["frames"])
    small = cv2.resize(full[0], (48, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(small.astype(int) - rgb[0]).mean() < 6


def test_video_file(tmp_path):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    assert writer.isOpened()
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (64, 200, 3), dtype=np.uint8), (0, 0), 2)
    for i in range(7):
        writer.write(np.ascontiguousarray(base[:, 3 * i:3 * i + 96]))
    writer.release()
    out = tmp_path / "v.zarr"
    _run("--layout", "folder", "--images", str(video), "--dataset", "d", "--sequence", "clip",
         "--params", json.dumps(HALF), "--out", str(out))
    attrs = stores.validate(out)
    rgb = stores.read_rgb(out)
    gt, gt_index = stores.read_ground_truth(out)
    assert rgb.shape == (7, 32, 48, 3) and attrs["n_frames"] == 7
    assert gt.shape[0] == 0 and gt_index.shape == (0,)
    expected = cv2.resize(base[:, 3:99, ::-1], (48, 32), interpolation=cv2.INTER_AREA)
    assert np.abs(rgb[1].astype(int) - expected).mean() < 12


def test_truncated_jpeg_fails_naming_file_and_writes_nothing(tiny_dataset, tmp_path, capsys):
    seq = tiny_dataset["sequences"]["synth-001"]
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted(seq["images"].iterdir()):
        (images / p.name).write_bytes(p.read_bytes())
    bad = images / "00005.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "f.zarr"
    with pytest.raises(SystemExit) as exc:
        _run("--layout", "synthetic", "--images", str(images), "--annotations", str(seq["annotations"]),
             "--dataset", "tiny", "--sequence", "synth-001",
             "--params", json.dumps(TINY_FRAMES), "--out", str(out))
    assert exc.value.code == 1
    assert "00005.jpg is corrupt or truncated" in capsys.readouterr().err
    assert not out.exists()
    assert not list(tmp_path.glob("f.zarr*"))


def test_gt_size_mismatch_names_mask(tiny_dataset, tmp_path):
    seq = tiny_dataset["sequences"]["synth-000"]
    ann = tmp_path / "ann"
    ann.mkdir()
    for p in sorted(seq["annotations"].iterdir()):
        (ann / p.name).write_bytes(p.read_bytes())
    cv2.imwrite(str(ann / "00003.png"), np.zeros((32, 48), np.uint8))
    match = r"00003\.png: mask size 48x32 differs from its frame 00003 \(96x64\)"
    with pytest.raises(StageError, match=match):
        frames.run_frames(layout="synthetic", images=seq["images"], annotations=ann, dataset="tiny",
                          sequence="synth-000", out=tmp_path / "f.zarr",
                          params=frames.FramesParams(height=64, width=96))
    assert not (tmp_path / "f.zarr").exists()


def test_missing_annotation_folder(tiny_dataset, tmp_path):
    seq = tiny_dataset["sequences"]["synth-000"]
    with pytest.raises(StageError, match="annotation folder not found"):
        frames.run_frames(layout="synthetic", images=seq["images"], annotations=tmp_path / "nope",
                          dataset="tiny", sequence="synth-000", out=tmp_path / "f.zarr",
                          params=frames.FramesParams(height=64, width=96))
