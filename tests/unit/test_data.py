"""Training items (lrtl.data): shapes, flip, context windows and t_index, track filtering and sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lrtl import data, stores
from lrtl.data import TrainItems, flip_item, load_sequence, sample_frame_tracks
from lrtl.train_params import DataParams
from tests.conftest import config_section

FLOW = config_section("flow", backend="oracle", gaps=[1, 2])
TRACKS = config_section("tracks", backend="oracle", chunk_size=6, stride=6, window=9, points_per_batch=100000,
                        storage="float32")
DATA = config_section("train.defaults.data", gaps=[1, 2], pair_offset=3, n_tracks=96, context=9, smooth=3,
                      flow_size=[32, 48], workers=0, cache_queries=64)
INPUT_SIZE = (32, 48)


def build_training_inputs(tiny_dataset, root: Path) -> dict[str, list[str]]:
    """Oracle flow (gaps 1, 2) and oracle tracks (a 9-frame window, so windows shift inside the 12 frames) for
    every tiny sequence; returns the aligned --frames/--flow/--tracks lists of lrtl.train."""
    from lrtl import flow as flow_stage
    from lrtl import tracks as tracks_stage

    inputs = {"frames": [], "flow": [], "tracks": []}
    for name, paths in tiny_dataset["sequences"].items():
        flow = root / "flow" / f"{name}.zarr"
        flow_stage.main(
            [
                "--frames",
                str(paths["frames"]),
                "--params",
                json.dumps(FLOW),
                "--ground-truth",
                str(paths["ground_truth"]),
                "--out",
                str(flow),
            ]
        )
        chunks = []
        for chunk in range(2):  # 12 frames / chunk_size 6
            out = root / "tracks" / name / f"chunk-{chunk:03d}.zarr"
            tracks_stage.main(
                [
                    "chunk",
                    "--frames",
                    str(paths["frames"]),
                    "--ground-truth",
                    str(paths["ground_truth"]),
                    "--chunk",
                    str(chunk),
                    "--params",
                    json.dumps(TRACKS),
                    "--dataset",
                    "tiny",
                    "--sequence",
                    name,
                    "--out",
                    str(out),
                ]
            )
            chunks.append(str(out))
        index = root / "tracks" / name / "index.json"
        tracks_stage.main(
            [
                "index",
                "--frames",
                str(paths["frames"]),
                "--chunks",
                *chunks,
                "--params",
                json.dumps(TRACKS),
                "--out",
                str(index),
            ]
        )
        inputs["frames"].append(str(paths["frames"]))
        inputs["flow"].append(str(flow))
        inputs["tracks"].append(str(index))
    return inputs


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tmp_path_factory):
    return build_training_inputs(tiny_dataset, tmp_path_factory.mktemp("train_inputs"))


def make_items(inputs, compat_reference=False, flow_input=False, **overrides) -> TrainItems:
    params = DataParams.from_mapping({**DATA, **overrides})
    sequences = [
        load_sequence(f, w, t, input_size=INPUT_SIZE, params=params, flow_input=flow_input)
        for f, w, t in zip(inputs["frames"], inputs["flow"], inputs["tracks"], strict=True)
    ]
    return TrainItems(sequences, params, seed=3, compat_reference=compat_reference)


def test_item_shapes_and_types(inputs):
    items = make_items(inputs)
    item = items[0]
    assert item["rgb"].shape == (4, 32, 48, 3) and item["rgb"].dtype == np.uint8
    assert item["flow"].shape == (4, 2, 32, 48) and item["flow"].dtype == np.float32
    assert item["tracks"].shape == (4, 9, 96, 2) and item["tracks"].dtype == np.float32
    assert item["vis"].shape == (4, 9, 96) and item["vis"].dtype == bool
    assert item["loc"].shape == (4, 96, 2)
    assert item["t_index"].shape == (4,)
    frames, gap = item["frames"], item["frames"][1] - item["frames"][0]
    assert gap in (1, 2) and frames[2] - frames[0] == 3 and frames[3] - frames[2] == gap
    assert np.abs(item["flow"]).max() <= 20.0
    batch = data.flatten_batch(torch.utils.data.default_collate([items[1], items[2]]))
    assert batch["rgb"].shape == (8, 32, 48, 3) and batch["tracks"].shape == (8, 9, 96, 2)


def test_items_are_a_pure_function_of_the_key(inputs):
    a, b = make_items(inputs), make_items(inputs)
    for key in (0, 5, 17):
        first, second = a[key], b[key]
        assert all(np.array_equal(first[name], second[name]) for name in first)
    assert not np.array_equal(a[0]["tracks"], a[1]["tracks"])


def test_flip_mirrors_everything_and_twice_is_identity(inputs):
    items = make_items(inputs, flip=0.0)
    item = items[4]
    flipped = flip_item(item, width=96, negate_u=True)
    assert np.array_equal(flipped["rgb"], item["rgb"][:, :, ::-1])
    assert np.array_equal(flipped["flow"][:, 0], -item["flow"][:, 0, :, ::-1])
    assert np.array_equal(flipped["flow"][:, 1], item["flow"][:, 1, :, ::-1])
    assert np.allclose(flipped["tracks"][..., 0], 95 - item["tracks"][..., 0])
    assert np.array_equal(flipped["tracks"][..., 1], item["tracks"][..., 1])
    assert np.array_equal(flipped["loc"][..., 0], -item["loc"][..., 0])
    back = flip_item(flipped, width=96, negate_u=True)
    for name in ("rgb", "flow", "loc", "vis", "t_index"):
        assert np.array_equal(back[name], item[name]), name
    assert np.allclose(back["tracks"], item["tracks"], atol=1e-4)  # float32 (W - 1) - x, twice
    kept = flip_item(item, width=96, negate_u=False)  # compat: reference keeps u
    assert np.array_equal(kept["flow"][:, 0], item["flow"][:, 0, :, ::-1])


def test_flip_in_the_dataset_matches_flip_item(inputs):
    plain, always = make_items(inputs, flip=0.0), make_items(inputs, flip=1.0)
    for key in (2, 9):
        expected = flip_item(plain[key], width=96, negate_u=True)
        got = always[key]
        assert got["flip"]
        for name in ("rgb", "flow", "tracks", "vis", "loc", "t_index"):
            assert np.allclose(got[name], expected[name], atol=1e-4), name


def test_flipped_flow_still_points_along_the_mirrored_motion(inputs, tiny_dataset):
    """A point moved by the flow lands where the mirrored track goes: flow and tracks flip consistently."""
    items = make_items(inputs, flip=1.0, flow_size=[])
    item = items[6]
    tracks, vis, t_index = item["tracks"][0], item["vis"][0], item["t_index"][0]  # frame F, flow F -> F+g
    gap = int(item["frames"][1] - item["frames"][0])
    if t_index + gap >= tracks.shape[0]:
        pytest.skip("frame F+g outside the context window")
    both = vis[t_index] & vis[t_index + gap]
    start, end = tracks[t_index, both], tracks[t_index + gap, both]  # [n, 2] px, smoothed
    xi = np.clip(np.round(start[:, 0]).astype(int), 0, 95)
    yi = np.clip(np.round(start[:, 1]).astype(int), 0, 63)
    flow = item["flow"][0][:, yi, xi].T  # [n, 2]
    assert np.median(np.abs(start + flow - end)) < 1.0


def test_t_index_points_at_the_frame_in_every_window(inputs):
    """The smoothed track at t_index sits where loc (the unsmoothed position at t) says, near the ends too."""
    items = make_items(inputs, smooth=1, flip=0.0)
    seen = set()
    for key in range(40):
        item = items[key]
        for j in range(4):
            t_index, frame = int(item["t_index"][j]), int(item["frames"][j])
            seen.add((frame, t_index))
            at_t = item["tracks"][j, t_index]  # [N, 2] px
            loc_px = (item["loc"][j] + 1) / 2 * np.array([95, 63])
            assert np.allclose(at_t, loc_px, atol=1e-3)
            assert item["vis"][j, t_index].all()  # every sampled track is visible at its frame
    assert {t for (f, t) in seen if f == 0} == {0} and {t for (f, t) in seen if f == 11} == {8}


def test_context_window_shifts_at_the_ends_and_pads_short_sequences():
    assert data.context_window(20, 69, 41) == (0, 41, 0, 20)
    assert data.context_window(3, 69, 41) == (0, 41, 0, 3)
    assert data.context_window(66, 69, 41) == (28, 69, 0, 38)
    assert data.context_window(30, 50, 41) == (9, 50, 0, 21)
    assert data.context_window(0, 30, 41) == (0, 30, 5, 5)  # (41 - 30) // 2 frames before
    assert data.context_window(29, 30, 41) == (0, 30, 5, 34)


def test_item_frames_and_query_frames():
    assert data.item_frames(30, 3, 2, 5) == [3, 5, 8, 10]
    assert data.item_frames(30, 26, 2, 5) == [21, 23, 26, 28]  # F + 5 + g past the end: shifted variant
    assert data.item_frames(8, 1, 2, 5) == [0, 2, 5, 7]  # shifted variant clamped at frame 0
    assert data.query_frames(0, 30) == [0, 1, 2]
    assert data.query_frames(10, 30) == [9, 10, 11]
    assert data.query_frames(29, 30) == [27, 28, 29]


def _draw_counts(sampling, lengths, gaps, n_keys=40_000):
    """How often each (sequence, gap, F) is drawn over item keys 0..n_keys-1, as TrainItems.item_plan draws them."""
    counts: dict[tuple[int, int, int], int] = {}
    for key in range(n_keys):
        drawn = data.draw_item(np.random.default_rng([7, key]), lengths, gaps, sampling)
        counts[drawn] = counts.get(drawn, 0) + 1
    return counts


def test_frame_uniform_sampling_draws_sequences_in_proportion_to_their_length():
    """The reference shuffles every (sequence, gap, F) item with F + gap in the sequence: a sequence's share is
    its number of items, (T - 1) + (T - 2) for gaps 1, 2; sequence-uniform gives each sequence the same share."""
    lengths, gaps, n_keys = [10, 40, 90], [1, 2], 40_000
    items = {(s, g, f) for s, n in enumerate(lengths) for g in gaps for f in range(n - g)}
    for sampling, share in (
        ("frame_uniform", [sum(n - g for g in gaps) / len(items) for n in lengths]),
        ("sequence_uniform", [1 / 3] * 3),
    ):
        counts = _draw_counts(sampling, lengths, gaps, n_keys)
        assert set(counts) <= items  # F + gap always inside the sequence
        per_sequence = np.array([sum(c for (s, _, _), c in counts.items() if s == i) for i in range(3)]) / n_keys
        # binomial standard error <= 0.0025 at 40k keys: 0.012 is about 5 of them
        np.testing.assert_allclose(per_sequence, share, atol=0.012, err_msg=sampling)
    counts = _draw_counts("frame_uniform", lengths, gaps, n_keys)
    assert set(counts) == items  # every item is drawn, each about n_keys / 270 = 148 times
    expected = n_keys / len(items)
    assert max(abs(c - expected) for c in counts.values()) < 6 * expected**0.5
    assert {g: sum(c for (_, gg, _), c in counts.items() if gg == g) / n_keys for g in gaps} == pytest.approx(
        {1: 137 / 270, 2: 133 / 270}, abs=0.012
    )


def test_item_plan_follows_the_sampling_option(inputs):
    """TrainItems draws its items with draw_item; an unknown sampling mode stops with the choices."""
    for sampling in data.SAMPLINGS:
        items = make_items(inputs, sampling=sampling)
        lengths = [s.n_frames for s in items.sequences]
        for key in range(20):
            _, seq, gap, frames, _ = items.item_plan(key)
            expected = data.draw_item(np.random.default_rng([items.seed, key]), lengths, DATA["gaps"], sampling)
            assert (seq, gap) == expected[:2]
            assert frames == data.item_frames(lengths[seq], expected[2], gap, DATA["pair_offset"])
    with pytest.raises(data.StageError, match="frame_uniform"):
        make_items(inputs, sampling="uniform")


def _queries(n_frames=12, n=5):
    """One query frame's tracks: x = column n + frame, y = 10; custom visibility per track."""
    tracks = np.zeros((n_frames, n, 2), np.float32)
    tracks[..., 0] = np.arange(n)[None, :] * 10 + np.arange(n_frames)[:, None]
    tracks[..., 1] = 10.0
    vis = np.ones((n_frames, n), bool)
    return tracks, vis


def test_filter_keeps_tracks_visible_at_t_with_enough_mean_visibility():
    tracks, vis = _queries()
    vis[5, 0] = False  # invisible at t = 5
    vis[:, 1] = False
    vis[5, 1] = True  # visible only at t: mean 1/12 < 0.1
    rng = np.random.default_rng(0)
    out = sample_frame_tracks(
        [(tracks, vis, 0)],
        5,
        12,
        height=40,
        width=60,
        n_tracks=6,
        context=5,
        smooth=1,
        min_visibility=0.1,
        rng=rng,
        compat_reference=False,
    )
    assert out["n_valid"] == 3
    columns = set(np.round(out["tracks"][out["t_index"], :, 0] - 5).astype(int) // 10)
    assert columns == {2, 3, 4}  # only the valid tracks, 6 draws with duplicates
    assert out["tracks"].shape == (5, 6, 2)


def test_visibility_denominator_is_the_source_window_unless_reference():
    tracks, vis = _queries(n_frames=6)
    vis[:, 0] = [
        True,
        False,
        False,
        False,
        False,
        False,
    ]  # 1 of the 6 window frames: mean 1/6 (window), 1/20 (T)
    args = dict(height=40, width=60, n_tracks=4, context=5, smooth=1, min_visibility=0.1)
    fixed = sample_frame_tracks(
        [(tracks, vis, 0)], 0, 20, rng=np.random.default_rng(0), compat_reference=False, **args
    )
    reference = sample_frame_tracks(
        [(tracks, vis, 0)], 0, 20, rng=np.random.default_rng(0), compat_reference=True, **args
    )
    assert fixed["n_valid"] == 5 and reference["n_valid"] == 4


def test_tracks_from_several_query_windows_are_placed_on_the_timeline():
    """Candidates from query frames whose windows start at different frames line up in sequence time."""
    a, vis_a = _queries(n_frames=8, n=3)  # frames 0..7
    b, vis_b = _queries(n_frames=8, n=3)
    b[..., 0] += 1002  # window starts at frame 2: x = 1000 + 10 n + frame
    out = sample_frame_tracks(
        [(a, vis_a, 0), (b, vis_b, 2)],
        4,
        10,
        height=40,
        width=2000,
        n_tracks=6,
        context=5,
        smooth=1,
        min_visibility=0.1,
        rng=np.random.default_rng(1),
        compat_reference=False,
    )
    frames = np.arange(2, 7)  # context window of t = 4
    x = out["tracks"][..., 0]  # [5, 6]
    offsets = (x - frames[:, None]) % 10
    assert np.allclose(offsets, 0)
    assert np.allclose(np.diff(x, axis=0), 1.0)  # one pixel per frame for every track, from either window


def test_short_sequences_are_reflect_padded():
    tracks, vis = _queries(n_frames=6, n=2)
    out = sample_frame_tracks(
        [(tracks, vis, 0)],
        1,
        6,
        height=40,
        width=60,
        n_tracks=2,
        context=9,
        smooth=1,
        min_visibility=0.1,
        rng=np.random.default_rng(0),
        compat_reference=False,
    )
    assert out["t_index"] == 1 + (9 - 6) // 2
    x = out["tracks"][:, 0, 0] % 10  # frame number of each window row
    assert list(np.round(x).astype(int)) == [1, 0, 1, 2, 3, 4, 5, 4, 3]


def test_no_valid_tracks_gives_zero_tracks():
    tracks, vis = _queries()
    vis[:] = False
    out = sample_frame_tracks(
        [(tracks, vis, 0)],
        3,
        12,
        height=40,
        width=60,
        n_tracks=4,
        context=5,
        smooth=1,
        min_visibility=0.1,
        rng=np.random.default_rng(0),
        compat_reference=False,
    )
    assert out["n_valid"] == 0 and not out["vis"].any() and not out["tracks"].any()


def test_moving_average_counts_only_valid_entries_and_hold_fills_the_rest():
    values = np.arange(6, dtype=np.float32)[:, None, None].repeat(2, axis=2)  # [6, 1, 2]
    valid = np.array([True, True, True, True, False, False])[:, None]
    averages, count = data.moving_average(values, valid, 3)
    assert np.allclose(averages[:4, 0, 0], [0.5, 1.0, 2.0, 2.5])  # ends average 2 frames, not 3 with zeros
    assert list(count[:, 0]) == [2, 3, 3, 2, 1, 0]
    held = data.hold_edges(averages, count > 1)
    assert np.allclose(held[:, 0, 0], [0.5, 1.0, 2.0, 2.5, 2.5, 2.5])


def test_clean_tracks_and_loc():
    xy = np.array([[np.nan, 5.0], [np.inf, -np.inf], [1e9, 3.0]], np.float32)
    cleaned = data.clean_tracks(xy, height=10, width=20)
    assert np.array_equal(cleaned, [[0.0, 5.0], [400.0, -200.0], [400.0, 3.0]])
    loc = data.normalise_loc(np.array([[0.0, 0.0], [19.0, 9.0], [np.nan, 1e4]]), height=10, width=20)
    assert np.allclose(loc, [[-1, -1], [1, 1], [0, 3]])


def test_missing_flow_gap_names_the_fix(inputs):
    with pytest.raises(data.StageError, match="flow.gaps"):
        make_items(inputs, gaps=[3])


def test_flow_read_per_item_equals_preloaded_flow(inputs):
    preloaded, lazy = make_items(inputs), make_items(inputs, preload_flow=False)
    assert lazy.sequences[0].flow is None
    for key in (0, 7):
        assert np.array_equal(preloaded[key]["flow"], lazy[key]["flow"])


def test_items_carry_the_network_flow_input_and_flip_it(inputs):
    from lrtl.model_inputs import read_input_flow

    assert "flow_input" not in make_items(inputs)[0]
    items = make_items(inputs, flow_input=True, flip=0.0)
    item = items[2]
    seq = int(item["sequence"])
    expected = read_input_flow(inputs["flow"][seq], INPUT_SIZE)[item["frames"]]
    assert item["flow_input"].shape == (4, 2, 32, 48)
    np.testing.assert_array_equal(item["flow_input"], expected)
    flipped = flip_item(item, width=96, negate_u=False)  # even under compat: reference, the input's u flips sign
    np.testing.assert_array_equal(flipped["flow_input"][:, 0], -item["flow_input"][:, 0, :, ::-1])
    np.testing.assert_array_equal(flipped["flow_input"][:, 1], item["flow_input"][:, 1, :, ::-1])
    np.testing.assert_array_equal(flip_item(flipped, width=96, negate_u=False)["flow_input"], item["flow_input"])


def test_items_carry_the_flow_consistency_weight_preloaded_or_read_and_flip_it(inputs):
    from lrtl.flow_confidence import consistent

    assert "flow_weight" not in make_items(inputs, flow_confidence=False)[0]
    preloaded = make_items(inputs, flow_confidence=True, flip=0.0)
    lazy = make_items(inputs, flow_confidence=True, flip=0.0, preload_flow=False)
    item = preloaded[5]
    seq, frames = int(item["sequence"]), item["frames"]
    gap = int(frames[1] - frames[0])
    group = stores.open_flow(inputs["flow"][seq])
    ok = consistent(stores.read_flow(group, gap, int(frames[0])), stores.read_flow(group, -gap, int(frames[1])))
    assert item["flow_weight"].shape == (4, 32, 48)
    assert item["flow_weight"].min() >= 0.0 and item["flow_weight"].max() <= 1.0
    np.testing.assert_allclose(item["flow_weight"][0].mean(), ok.mean(), atol=1e-5)  # area averages keep the mean
    np.testing.assert_allclose(lazy[5]["flow_weight"], item["flow_weight"], atol=1e-6)
    flipped = flip_item(item, width=96, negate_u=True)
    np.testing.assert_array_equal(flipped["flow_weight"], item["flow_weight"][..., ::-1])


def test_the_flow_weight_drops_untextured_cells_preloaded_or_read(inputs):
    import cv2

    from lrtl.flow_fill import texture_strength, textured_fraction

    rgb = [stores.open_store(path, "frames")["rgb"][...] for path in inputs["frames"]]  # [T, H, W, 3] each
    strength = np.concatenate([texture_strength(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)).ravel() for r in rgb for f in r])
    slope = float(np.median(strength))  # about half the pixels of the tiny frames count as flat
    consistency = make_items(inputs, flow_confidence=True, flip=0.0)[5]["flow_weight"]  # [4, hf, wf]
    item = make_items(inputs, flow_confidence=True, flow_texture=slope, flip=0.0)[5]
    lazy = make_items(inputs, flow_confidence=True, flow_texture=slope, flip=0.0, preload_flow=False)[5]
    textured = textured_fraction(rgb[int(item["sequence"])], (32, 48), slope)[item["frames"]]  # [4, hf, wf]
    assert 0.1 < textured.mean() < 0.9
    np.testing.assert_allclose(item["flow_weight"], consistency * textured, atol=1e-6)  # each flow's source frame
    np.testing.assert_allclose(lazy["flow_weight"], item["flow_weight"], atol=1e-6)
    only_texture = make_items(inputs, flow_confidence=False, flow_texture=slope, flip=0.0)[5]
    np.testing.assert_allclose(only_texture["flow_weight"], textured, atol=1e-6)
    nothing_textured = make_items(inputs, flow_confidence=True, flow_texture=10.0, flip=0.0)[5]  # slopes are <= 1
    assert not nothing_textured["flow_weight"].any()
