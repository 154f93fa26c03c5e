"""lrtl.evaluate on hand-made masks with known scores against known ground truth."""

import json

import numpy as np
import pandas as pd
import pytest

from lrtl import metrics, stores
from lrtl.evaluate import main as evaluate_main
from tests.conftest import config_section

EVALUATE = config_section("evaluate", threshold=0.5)  # the expected scores below assume 0.5


def box(shape, top, left, height, width):
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + height, left : left + width] = True
    return mask


@pytest.fixture
def case(tmp_path):
    """8 frames at 24x32; GT at 48x64 on frames 0, 2, 5, 7 (sparse); masks at 24x32, K = 3."""
    n, h, w = 8, 24, 32
    gt_index = np.array([0, 2, 5, 7])
    gt_small = box((h, w), 6, 8, 12, 16)  # the object at mask resolution
    gt = np.repeat(np.repeat(gt_small, 2, axis=0), 2, axis=1)[None].repeat(len(gt_index), 0)  # [4, 48, 64]
    rgb = np.zeros((n, h, w, 3), np.uint8)
    frames = tmp_path / "frames.zarr"
    stores.write_frames(frames, rgb, gt, gt_index, dataset="tiny", sequence="boxes")
    # K = 3 soft masks: object split into left / right halves, plus background
    left = box((h, w), 6, 8, 12, 8).astype(np.float32)
    right = box((h, w), 6, 16, 12, 8).astype(np.float32)
    soft = np.stack([left, right, 1 - left - right])[None].repeat(n, 0)  # [n, 3, h, w]
    merged = np.stack([soft[:, 2], soft[:, 0] + soft[:, 1]], axis=1)  # foreground is merged[1]
    merged[5] = np.stack([soft[5, 2] + soft[5, 1], soft[5, 0]])  # frame 5: a bad merge (left half only)
    masks = tmp_path / "masks.zarr"
    stores.write_masks(masks, soft, merged, run="full", seed=3, compat="fixed", checkpoint_rule="last")
    return {"frames": frames, "masks": masks, "gt": gt, "gt_index": gt_index, "tmp": tmp_path}


def run(case, params=EVALUATE):
    out = case["tmp"] / "metrics" / "boxes.tsv"
    evaluate_main(
        ["--masks", str(case["masks"]), "--frames", str(case["frames"]), "--params", json.dumps(params),
         "--out", str(out)]
    )  # fmt: skip
    return pd.read_csv(out, sep="\t")


def test_per_frame_scores(case):
    table = run(case)
    assert table["frame"].tolist() == [0, 2, 5, 7]
    assert (table["dataset"] == "tiny").all() and (table["sequence"] == "boxes").all()
    assert (table["run"] == "full").all() and (table["seed"] == 3).all()
    good = table[table["frame"] != 5]
    assert (good["j"] == 1.0).all() and (good["chosen"] == 1).all() and (good["f"] == 1.0).all()
    assert (good["j_0"] == 0.0).all()
    bad = table[table["frame"] == 5].iloc[0]
    # left half vs the whole box: 12x8 of 12x16 at mask resolution -> 0.5 at GT resolution too
    assert bad["j"] == pytest.approx(0.5) and bad["chosen"] == 1
    assert bad["f"] < 1
    assert bad["oracle_merge_do_not_use"] == pytest.approx(1.0)  # GT-chosen partition recovers the box
    assert table["gt_fraction"].iloc[0] == pytest.approx(12 * 16 / (24 * 32))
    assert table["j_all_foreground"].iloc[0] == pytest.approx(12 * 16 / (24 * 32))


def test_frame_rule_columns(case):
    table = run(case)
    for rule in metrics.FRAME_RULES:
        expected = metrics.scored_frames(8, case["gt_index"], rule).tolist()
        assert table[f"scored_{rule}"].tolist() == expected
    assert table["scored_reference"].tolist() == [False, True, True, False]
    assert table["scored_official"].tolist() == [False, True, True, False]
    assert table["scored_annotated"].tolist() == [True, True, True, False]


def test_upsampled_threshold_matches_direct_computation(case):
    # soft values 0.8 / 0.2 stay on / off after bilinear upsampling and the > 0.5 threshold
    soft, merged, _ = stores.read_masks(case["masks"])
    merged = merged * 0.6 + 0.2  # 1 -> 0.8, 0 -> 0.2: thresholding unchanged
    stores.write_masks(case["masks"], soft, merged, run="full")
    table = run(case)
    assert table[table["frame"] != 5]["j"].eq(1.0).all()


def test_oracle_can_be_switched_off(case):
    table = run(case, dict(EVALUATE, oracle_max_k=0))
    assert table["oracle_merge_do_not_use"].isna().all()


def test_no_ground_truth_gives_empty_table(tmp_path):
    frames = tmp_path / "frames.zarr"
    stores.write_frames(frames, np.zeros((3, 8, 8, 3), np.uint8), np.zeros((0, 8, 8), bool), np.zeros(0),
                        dataset="folder", sequence="clip")  # fmt: skip
    masks = tmp_path / "masks.zarr"
    stores.write_masks(masks, np.full((3, 2, 8, 8), 0.5), np.full((3, 2, 8, 8), 0.5), run="full")
    out = tmp_path / "clip.tsv"
    evaluate_main(["--masks", str(masks), "--frames", str(frames), "--params", json.dumps(EVALUATE),
                   "--out", str(out)])  # fmt: skip
    table = pd.read_csv(out, sep="\t")
    assert table.empty and "j" in table.columns


def test_frame_count_mismatch_is_an_error(case, tmp_path):
    soft, merged, _ = stores.read_masks(case["masks"])
    stores.write_masks(case["masks"], soft[:5], merged[:5], run="full")
    with pytest.raises(SystemExit):
        run(case)


@pytest.mark.parametrize(("compat", "expected"), [("fixed", 1.0), (None, 1.0), ("reference", 0.0)])
def test_empty_gt_and_empty_prediction_follow_the_runs_compat_mode(tmp_path, compat, expected):
    """METHOD.md §11 item 10: official DAVIS scores an empty frame 1, the reference (compat: reference) 0."""
    n, h, w = 4, 8, 8
    gt = np.zeros((2, h, w), bool)
    gt[1, 2:6, 2:6] = True  # frame 0: empty GT; frame 2: a box
    frames = tmp_path / "frames.zarr"
    stores.write_frames(frames, np.zeros((n, h, w, 3), np.uint8), gt, np.array([0, 2]), dataset="d", sequence="s")
    merged = np.zeros((n, 2, h, w), np.float32)  # both merged masks empty: nothing predicted anywhere
    merged[2, 1, 2:6, 2:6] = 1.0  # frame 2: the box exactly
    masks = tmp_path / "masks.zarr"
    stores.write_masks(masks, merged, merged, run="r", compat=compat)
    out = tmp_path / "s.tsv"
    evaluate_main(["--masks", str(masks), "--frames", str(frames), "--params", json.dumps(EVALUATE),
                   "--out", str(out)])  # fmt: skip
    table = pd.read_csv(out, sep="\t").set_index("frame")
    assert table.loc[0, "j"] == expected and table.loc[0, "j_0"] == expected
    assert table.loc[0, "oracle_merge_do_not_use"] == expected
    assert table.loc[2, "j"] == 1.0  # non-empty frames are the same under both conventions
    assert (table["compat"].isna() if compat is None else table["compat"] == compat).all()


def test_unknown_compat_mode_names_the_masks_store(tmp_path, capsys):
    frames = tmp_path / "frames.zarr"
    stores.write_frames(frames, np.zeros((2, 4, 4, 3), np.uint8), np.zeros((1, 4, 4), bool), np.array([0]),
                        dataset="d", sequence="s")  # fmt: skip
    masks = tmp_path / "masks.zarr"
    stores.write_masks(masks, np.zeros((2, 2, 4, 4)), np.zeros((2, 2, 4, 4)), run="r", compat="refrence")
    with pytest.raises(SystemExit):
        evaluate_main(["--masks", str(masks), "--frames", str(frames), "--params", json.dumps(EVALUATE),
                       "--out", str(tmp_path / "s.tsv")])  # fmt: skip
    assert f"{masks}: compat mode 'refrence'" in capsys.readouterr().err
