"""Raw layouts: listing, sources, frames and ground truth, on made-up layouts and the shared samples."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lrtl import datasets
from lrtl.cli import StageError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DAVIS = SHARED / "DAVIS2016-sample"
FBMS = SHARED / "FBMS59-sample"


def _write(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def _frame(h=24, w=32, value=100):
    rng = np.random.default_rng(value)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_unknown_layout(tmp_path):
    with pytest.raises(StageError, match=rf"{tmp_path}: unknown dataset layout 'davsi'.*davis: JPEGImages"):
        datasets.list_sequences(tmp_path, "davsi", "480p")
    with pytest.raises(StageError, match=rf"{tmp_path / 'seq'}: unknown dataset layout 'fmbs'.*fbms: <seq>"):
        datasets.read_sequence(tmp_path / "seq", None, "fmbs")


def test_missing_annotation_folder_names_it_and_the_layout(tmp_path):
    _write(tmp_path / "Testset" / "cars1" / "cars1_01.jpg", _frame())
    with pytest.raises(StageError, match=r"cars1/GroundTruth: annotation folder of 'cars1' not found.*fbms layout"):
        datasets.sequence_sources(tmp_path, "fbms", "", "cars1")
    _write(tmp_path / "stv2" / "JPEGImages" / "frog" / "frog_00001.png", _frame())
    with pytest.raises(StageError, match=r"GroundTruth/frog: annotation folder.*segtrackv2 layout"):
        datasets.sequence_sources(tmp_path / "stv2", "segtrackv2", "", "frog")


def test_davis_layout_missing_annotations(tmp_path):
    _write(tmp_path / "JPEGImages" / "480p" / "a" / "00000.jpg", _frame())
    assert datasets.list_sequences(tmp_path, "davis", "480p") == [("a", 1)]
    with pytest.raises(StageError, match=r"Annotations/480p/a.*expected the davis layout"):
        datasets.sequence_sources(tmp_path, "davis", "480p", "a")
    with pytest.raises(StageError, match="no sequence 'b'"):
        datasets.sequence_sources(tmp_path, "davis", "480p", "b")


def test_synthetic_sources_are_computed(tmp_path):
    src = datasets.sequence_sources(tmp_path / "raw", "synthetic", "240p", "synth-000")
    assert src == {"images": tmp_path / "raw" / "JPEGImages" / "240p" / "synth-000",
                   "annotations": tmp_path / "raw" / "Annotations" / "240p" / "synth-000"}


def test_gt_size_mismatch(tmp_path):
    images = tmp_path / "JPEGImages" / "480p" / "a"
    ann = tmp_path / "Annotations" / "480p" / "a"
    for i in range(2):
        _write(images / f"{i:05d}.jpg", _frame())
        _write(ann / f"{i:05d}.png", np.zeros((20, 32), np.uint8))
    with pytest.raises(StageError, match=r"00000\.png: mask size 32x20 differs.*32x24.*davis layout"):
        datasets.read_sequence(images, ann, "davis")


def test_segtrackv2_objects_or_merged_mixed_extensions(tmp_path):
    images = tmp_path / "JPEGImages" / "bmx"
    for i in range(3):
        _write(images / f"bmx_{i:05d}.png" if i else images / f"bmx_{i:05d}.bmp", _frame())
    a = np.zeros((24, 32), np.uint8)
    a[2:6, 2:6] = 255
    b = np.zeros((24, 32), np.uint8)
    b[10:12, 20:30] = 255
    _write(tmp_path / "GroundTruth" / "bmx" / "1" / "bmx_00001.png", a)
    _write(tmp_path / "GroundTruth" / "bmx" / "2" / "bmx_00001.bmp", b)
    _write(tmp_path / "GroundTruth" / "bmx" / "2" / "bmx_00002.png", b)
    assert datasets.list_sequences(tmp_path, "segtrackv2", "") == [("bmx", 3)]
    src = datasets.sequence_sources(tmp_path, "segtrackv2", "", "bmx")
    names, frames, gt, gt_index = datasets.read_sequence(src["images"], src["annotations"], "segtrackv2")
    assert names == ["bmx_00000", "bmx_00001", "bmx_00002"]
    assert len(list(frames)) == 3
    np.testing.assert_array_equal(gt_index, [1, 2])
    np.testing.assert_array_equal(gt[0], (a > 0) | (b > 0))
    np.testing.assert_array_equal(gt[1], b > 0)


def test_fbms_trainingset_layout_and_white_background(tmp_path):
    seq = tmp_path / "Testset" / "cars1"
    for i in range(1, 6):
        _write(seq / f"cars1_{i:02d}.jpg", _frame())
    gt = np.full((24, 32, 3), 255, np.uint8)
    gt[5:10, 5:10] = (0, 0, 255)
    gt[12:14, 20:22] = (128, 128, 128)
    _write(seq / "GroundTruth" / "cars1_03_gt.pgm", cv2.cvtColor(gt, cv2.COLOR_BGR2GRAY))
    _write(seq / "GroundTruth" / "cars1_05_gt.ppm", gt)
    assert datasets.list_sequences(tmp_path, "fbms", "") == [("cars1", 5)]
    src = datasets.sequence_sources(tmp_path, "fbms", "", "cars1")
    names, _, masks, gt_index = datasets.read_sequence(src["images"], src["annotations"], "fbms")
    np.testing.assert_array_equal(gt_index, [2, 4])
    expected = (gt < 255).any(-1)
    np.testing.assert_array_equal(masks[1], expected)
    np.testing.assert_array_equal(masks[0], expected)


def test_fbms_mask_of_another_size_names_the_file(tmp_path):
    seq = tmp_path / "Testset" / "cars1"
    for i in range(1, 3):
        _write(seq / f"cars1_{i:02d}.jpg", _frame())
    _write(seq / "GroundTruth" / "cars1_01_gt.ppm", np.full((12, 32, 3), 255, np.uint8))
    src = datasets.sequence_sources(tmp_path, "fbms", "", "cars1")
    with pytest.raises(StageError, match=r"cars1_01_gt\.ppm: mask size 32x12 differs .* \(32x24\); expected the fbms"):
        datasets.read_sequence(src["images"], src["annotations"], "fbms")


def test_index_sheet_counts_frames_and_takes_fbms_splits_from_the_folders(tmp_path):
    for part, name, n in (("Trainingset", "bear01", 4), ("Testset", "cars1", 3)):
        for i in range(1, n + 1):
            (tmp_path / part / name).mkdir(parents=True, exist_ok=True)
            (tmp_path / part / name / f"{name}_{i:04d}.jpg").touch()  # never decoded
    sheet = datasets.index_sheet(tmp_path, "fbms", "")
    assert sheet.to_dict("records") == [{"sequence": "bear01", "split": "train", "n_frames": 4},
                                        {"sequence": "cars1", "split": "test", "n_frames": 3}]
    given = tmp_path / "given.tsv"
    given.write_text("sequence\tsplit\tn_frames\ncars1\tval\t\n")
    out = tmp_path / "out.tsv"
    datasets.main(["index", "--layout", "fbms", "--root", str(tmp_path), "--splits-from", str(given),
                   "--out", str(out)])
    assert out.read_text() == "sequence\tsplit\tn_frames\ncars1\tval\t3\n"
    given.write_text("sequence\tsplit\tn_frames\ncars9\ttest\t\n")
    with pytest.raises(StageError, match=r"no sequence cars9 of .*given\.tsv"):
        datasets.index_sheet(tmp_path, "fbms", "", given)


def test_folder_layout_videos_and_image_folders(tmp_path):
    _write(tmp_path / "clip_a" / "f1.png", _frame())
    writer = cv2.VideoWriter(str(tmp_path / "clip_b.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 24))
    for i in range(4):
        writer.write(_frame(value=i))
    writer.release()
    listed = dict(datasets.list_sequences(tmp_path, "folder", ""))
    assert listed == {"clip_a": 1, "clip_b": 4}
    src = datasets.sequence_sources(tmp_path, "folder", "", "clip_b")
    assert src == {"images": tmp_path / "clip_b.mp4", "annotations": None}
    frames = list(datasets.iter_frames(src["images"]))
    assert [n for n, _ in frames] == ["00000", "00001", "00002", "00003"]
    assert frames[0][1].shape == (24, 32, 3)


def test_truncated_jpeg_named(tmp_path):
    path = _write(tmp_path / "00000.jpg", _frame(120, 160))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match=r"00000\.jpg is corrupt or truncated"):
        datasets.read_image(path)


def test_garbage_image_named(tmp_path):
    path = tmp_path / "00001.jpg"
    path.write_bytes(b"this is not an image\xff\xd9")
    with pytest.raises(StageError, match=r"00001\.jpg is corrupt or truncated"):
        datasets.read_image(path)


@pytest.mark.real_data
@pytest.mark.skipif(not DAVIS.is_dir(), reason="shared DAVIS2016 sample absent")
def test_davis_sample():
    seqs = dict(datasets.list_sequences(DAVIS, "davis", "480p"))
    assert seqs == {"blackswan": 50, "car-shadow": 40, "libby": 49}
    src = datasets.sequence_sources(DAVIS, "davis", "480p", "car-shadow")
    names, frames, gt, gt_index = datasets.read_sequence(src["images"], src["annotations"], "davis")
    assert names[0] == "00000" and len(names) == 40
    np.testing.assert_array_equal(gt_index, np.arange(40))
    assert gt.shape == (40, 480, 854) and gt.dtype == bool
    assert 0.01 < gt.mean() < 0.5
    name, rgb = next(frames)
    assert name == "00000" and rgb.shape == (480, 854, 3)


@pytest.mark.real_data
@pytest.mark.skipif(not FBMS.is_dir(), reason="shared FBMS59 sample absent")
def test_fbms_sample_sparse_ground_truth():
    assert datasets.list_sequences(FBMS, "fbms", "") == [("bear01", 100)]
    src = datasets.sequence_sources(FBMS, "fbms", "", "bear01")
    names, _, gt, gt_index = datasets.read_sequence(src["images"], src["annotations"], "fbms")
    assert names[0] == "bear01_0001" and len(names) == 100
    np.testing.assert_array_equal(gt_index, [0, 19, 39, 59, 79, 99])  # 1-based files 1, 20, ..., 100
    assert gt.shape == (6, 540, 960)
    assert all(0.01 < m.mean() < 0.5 for m in gt)


def test_missing_annotations_are_gaps_only_where_the_layout_annotates_every_frame(tmp_path):
    """DAVIS promises a mask per frame (a gap is listed); FBMS's sparse ground truth is normal (nothing listed)."""
    images, masks = tmp_path / "JPEGImages" / "480p" / "s", tmp_path / "Annotations" / "480p" / "s"
    for t in range(5):
        _write(images / f"{t:05d}.jpg", _frame())
        if t != 3:
            _write(masks / f"{t:05d}.png", np.zeros((24, 32), np.uint8))
    assert datasets.missing_annotations(images, masks, "davis") == ["00003"]
    assert datasets.missing_annotations(images, masks, "fbms") == []
    assert datasets.missing_annotations(images, None, "davis") == []
