"""Query scheme (chunks, windows, grid offsets) and the tracks chunk store (round trip, partial stores)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from lrtl import stores
from lrtl.cli import StageError
from lrtl.track_store import PartialChunk, decode_tracks, encode_tracks, open_chunk, partial_path
from lrtl.tracks import chunk_query_frames, grid_offset, n_chunks, query_grid, window_bounds


@pytest.mark.parametrize("n_frames,chunk_size", [(1, 1), (12, 5), (30, 8), (33, 1), (7, 100)])
def test_chunks_query_every_frame_exactly_once(n_frames, chunk_size):
    frames = np.concatenate(
        [chunk_query_frames(c, chunk_size, n_frames) for c in range(n_chunks(n_frames, chunk_size))]
    )
    assert sorted(frames.tolist()) == list(range(n_frames))
    assert len(frames) == n_frames
    with pytest.raises(StageError, match="does not exist"):
        chunk_query_frames(n_chunks(n_frames, chunk_size), chunk_size, n_frames)


@pytest.mark.parametrize("n_frames,window", [(12, 9), (12, 101), (150, 101), (30, 8), (5, 1)])
def test_windows_are_clamped_inside_the_sequence_and_centred(n_frames, window):
    for q in range(n_frames):
        start, length = window_bounds(q, n_frames, window)
        assert length == min(n_frames, window)
        assert 0 <= start and start + length <= n_frames
        assert start <= q < start + length
        if window // 2 <= q < n_frames - (window - window // 2) + 1 and n_frames >= window:
            assert start == q - window // 2  # centred away from the ends
    assert window_bounds(75, 150, 101) == (25, 101)  # METHOD.md §3: s_q = clamp(q - 50, 0, T - T_w)


def test_grid_offsets_cycle_and_cover_every_pixel_once_per_cycle():
    height, width, stride = 13, 18, 4
    assert [grid_offset(q, stride) for q in range(5)] == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1)]
    assert grid_offset(16, stride) == (0, 0) and grid_offset(19, stride) == (3, 0)
    hits = np.zeros((height, width), int)
    for q in range(stride * stride):
        grid = query_grid(q, height, width, stride).astype(int)
        ox, oy = grid_offset(q, stride)
        assert (grid[:, 0] % stride == ox).all() and (grid[:, 1] % stride == oy).all()
        assert (np.diff(grid[:, 1]) >= 0).all()  # row-major
        hits[grid[:, 1], grid[:, 0]] += 1
    assert (hits == 1).all()


def _partial(out, signature, n_queries=3, window=5, n_max=7, storage="float32"):
    return PartialChunk(
        out,
        signature=signature,
        query_frames=np.arange(n_queries) + 10,
        window_start=np.arange(n_queries) + 8,
        query_xy=np.ones((n_queries, n_max, 2), np.float32),
        n_points=np.full(n_queries, n_max - 1),
        window=window,
        storage=storage,
        extra_attrs={"dataset": "d", "sequence": "s", "chunk": 2},
    )


@pytest.mark.parametrize("storage,tolerance", [("float32", 0.0), ("fixed16", 1 / 32)])
def test_store_round_trip(tmp_path, storage, tolerance):
    out = tmp_path / "chunk-002.zarr"
    part = _partial(out, {"params": {"a": 1}}, storage=storage)
    rng = np.random.default_rng(0)
    written = []
    for i in range(3):
        tracks = rng.uniform(-20, 900, (5, 6, 2)).astype(np.float32)
        vis = rng.random((5, 6)) > 0.5
        part.write(i, tracks, vis)
        written.append((tracks, vis))
    assert not out.exists()
    part.finish({"provenance": "x"})
    assert out.exists() and not partial_path(out).exists()
    group = open_chunk(out)
    assert group.attrs["complete"] and group.attrs["provenance"] == "x" and group.attrs["storage"] == storage
    assert group.attrs["format_version"] == stores.FORMAT_VERSION
    for i, (tracks, vis) in enumerate(written):
        got = decode_tracks(group["tracks"][i])
        assert np.abs(got[:, :6] - tracks).max() <= tolerance + 1e-6
        assert (group["vis"][i][:, :6] == vis).all() and not group["vis"][i][:, 6:].any()


def test_fixed16_clips_far_away_and_nan_points():
    stored = encode_tracks(np.array([[1e6, -1e6], [np.nan, 3.3]], np.float32), "fixed16")
    assert stored.dtype == np.int16
    assert np.allclose(decode_tracks(stored), [[2047.9375, -2047.9375], [0, 3.3125]])


def test_partial_store_is_reused_only_with_the_same_signature(tmp_path, caplog):
    out = tmp_path / "chunk-002.zarr"
    part = _partial(out, {"params": {"stride": 4}})
    part.write(0, np.zeros((5, 6, 2), np.float32), np.ones((5, 6), bool))
    assert _partial(out, {"params": {"stride": 4}}).done.tolist() == [True, False, False]
    with caplog.at_level(logging.WARNING):
        fresh = _partial(out, {"params": {"stride": 8}})
    assert fresh.done.tolist() == [False, False, False]
    assert "different ['params']" in caplog.text and "starting fresh" in caplog.text


def test_unfinished_store_cannot_be_finished(tmp_path):
    part = _partial(tmp_path / "c.zarr", {"params": {}})
    with pytest.raises(RuntimeError, match="not done"):
        part.finish({})
