"""`python -m lrtl.tracks chunk|index` in process on the tiny synthetic dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lrtl import flow as flow_stage
from lrtl import tracks
from lrtl.backends.flowchain import FlowChainTracker
from lrtl.settings import result_params
from lrtl.synthetic import load_scene
from lrtl.track_store import open_chunk, partial_path
from tests.conftest import config_section

FLOW = config_section("flow", backend="oracle", gaps=[1])
TRACKS = config_section("tracks", backend="flowchain", chunk_size=5, stride=4, window=9, points_per_batch=1000,
                        storage="float32")


@pytest.fixture(scope="module")
def sequence(tiny_dataset, tmp_path_factory):
    name, paths = next(iter(tiny_dataset["sequences"].items()))
    flow = tmp_path_factory.mktemp("tracks_cli") / "flow.zarr"
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
    return {"name": name, "frames": str(paths["frames"]), "gt": str(paths["ground_truth"]), "flow": str(flow)}


def chunk(seq, out, number, params=TRACKS, **flags):
    argv = [
        "chunk",
        "--frames",
        seq["frames"],
        "--flow",
        seq["flow"],
        "--ground-truth",
        seq["gt"],
        "--chunk",
        str(number),
        "--params",
        json.dumps(params),
        "--dataset",
        "tiny",
        "--sequence",
        seq["name"],
        "--out",
        str(out),
    ]
    for key, value in flags.items():
        argv += [f"--{key.replace('_', '-')}", value]
    tracks.main(argv)


def index(seq, chunks, out, params=TRACKS):
    tracks.main(
        [
            "index",
            "--frames",
            seq["frames"],
            "--chunks",
            *map(str, chunks),
            "--params",
            json.dumps(params),
            "--out",
            str(out),
        ]
    )


@pytest.mark.parametrize("backend", ["flowchain", "oracle"])
def test_chunks_and_index_give_tracks_of_every_frame(sequence, tmp_path, backend):
    params = {**TRACKS, "backend": backend}
    paths = [tmp_path / "tracks" / f"chunk-{c:03d}.zarr" for c in range(3)]  # 12 frames / 5
    for c, path in enumerate(paths):
        chunk(sequence, path, c, params)
        attrs = open_chunk(path).attrs
        assert attrs["backend"] == backend and attrs["chunk"] == c and attrs["sequence"] == sequence["name"]
        assert attrs["params"] == result_params("tracks", params) and attrs["dataset"] == "tiny"
    index(sequence, paths, tmp_path / "tracks" / "index.json", params)
    seq = tracks.open_sequence_tracks(tmp_path / "tracks" / "index.json")
    scene = load_scene(sequence["gt"])
    assert (seq.n_frames, seq.height, seq.width) == (12, 64, 96)
    for q in range(12):
        xy, vis, start = seq.query(q)
        assert xy.dtype == np.float32 and vis.dtype == bool
        assert start == tracks.window_bounds(q, 12, 9)[0]
        grid = tracks.query_grid(q, 64, 96, 4)
        assert xy.shape == (9, len(grid), 2) and np.array_equal(xy[q - start], grid)
        gt, gt_vis = scene.track(grid, q, np.arange(start, start + 9))
        both = vis & gt_vis
        assert np.abs(xy - gt)[both].max() < 0.05
        part, part_vis, part_start = seq.query(q, frames=(q - 1, q + 2))
        assert part_start == max(q - 1, start) and np.array_equal(
            part, xy[part_start - start : q + 2 - start]
        )


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in lrtl catches it."""


def test_resume_after_a_kill_skips_finished_query_frames(sequence, tmp_path, monkeypatch):
    calls = []
    original = FlowChainTracker.track

    def counting(self, query_frame, *args):
        if len(calls) == 3 and kill["armed"]:
            raise Killed
        calls.append(query_frame)
        return original(self, query_frame, *args)

    kill = {"armed": True}
    monkeypatch.setattr(FlowChainTracker, "track", counting)
    out = tmp_path / "chunk-001.zarr"
    with pytest.raises(Killed):
        chunk(sequence, out, 1)
    assert not out.exists() and partial_path(out).exists()
    assert calls == [5, 6, 7]
    kill["armed"] = False
    chunk(sequence, out, 1)
    assert calls == [5, 6, 7, 8, 9]  # only the unfinished query frames were tracked again
    assert out.exists() and not partial_path(out).exists()
    reference = tmp_path / "uninterrupted.zarr"
    chunk(sequence, reference, 1)
    a, b = open_chunk(out), open_chunk(reference)
    for name in ("tracks", "vis", "query_xy", "n_points", "query_frames", "window_start", "done"):
        assert np.array_equal(a[name][...], b[name][...]), name


def test_partial_store_with_other_params_is_discarded(sequence, tmp_path, monkeypatch, capsys):
    out = tmp_path / "chunk-000.zarr"
    original = FlowChainTracker.track

    def dying(self, query_frame, *args):
        if query_frame == 2:
            raise Killed
        return original(self, query_frame, *args)

    monkeypatch.setattr(FlowChainTracker, "track", dying)
    with pytest.raises(Killed):
        chunk(sequence, out, 0)
    monkeypatch.setattr(FlowChainTracker, "track", original)
    changed = {**TRACKS, "flowchain": {**TRACKS["flowchain"], "fb_beta": 0.25}}
    chunk(sequence, out, 0, changed)
    assert "different ['params']" in capsys.readouterr().err
    assert open_chunk(out).attrs["params"] == result_params("tracks", changed)


def test_index_names_missing_and_duplicated_frames(sequence, tmp_path, capsys):
    paths = [tmp_path / f"chunk-{c:03d}.zarr" for c in range(3)]
    for c in (0, 1):
        chunk(sequence, paths[c], c)
    with pytest.raises(SystemExit):
        index(sequence, paths[:2], tmp_path / "index.json")
    assert "missing frames [10, 11]" in capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        index(sequence, [paths[0], paths[1], paths[0]], tmp_path / "index.json")
    assert "duplicated frames {0:" in capsys.readouterr().err
    assert not (tmp_path / "index.json").exists()


def test_index_rejects_chunks_written_with_other_params(sequence, tmp_path, capsys):
    paths = [tmp_path / f"chunk-{c:03d}.zarr" for c in range(3)]
    for c in range(3):
        chunk(sequence, paths[c], c)
    with pytest.raises(SystemExit):
        index(sequence, paths, tmp_path / "index.json", {**TRACKS, "stride": 8})
    assert "other tracks params" in capsys.readouterr().err


def test_bad_inputs_stop_with_a_message(sequence, tmp_path, capsys):
    with pytest.raises(SystemExit):
        tracks.main(
            [
                "chunk",
                "--frames",
                sequence["frames"],
                "--chunk",
                "0",
                "--params",
                json.dumps(TRACKS),
                "--dataset",
                "tiny",
                "--sequence",
                "s",
                "--out",
                str(tmp_path / "c.zarr"),
            ]
        )
    assert "needs --flow" in capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        chunk(sequence, tmp_path / "c.zarr", 3)
    assert "chunk 3 does not exist" in capsys.readouterr().err
    capsys.readouterr()
    with pytest.raises(SystemExit):
        chunk(sequence, tmp_path / "c.zarr", 0, {**TRACKS, "strid": 4})
    assert "unknown key(s) ['strid']" in capsys.readouterr().err


def test_threads_flag_limits_opencv(sequence, tmp_path):
    import cv2

    before = cv2.getNumThreads()
    try:
        chunk(sequence, tmp_path / "c0.zarr", 0, threads="1")
        assert cv2.getNumThreads() == 1  # the job held to the rule's threads
    finally:
        cv2.setNumThreads(before)
    assert (tmp_path / "c0.zarr").is_dir()


def test_non_finite_flow_stops_tracking_and_baseline_and_a_repaired_rerun_equals_a_clean_build(
    sequence, tmp_path, monkeypatch, capsys
):
    import shutil

    import zarr

    from lrtl.baseline import main as baseline_main

    flow = tmp_path / "flow.zarr"
    shutil.copytree(sequence["flow"], flow)
    broken = {**sequence, "flow": str(flow)}
    field = zarr.open_group(str(flow), mode="r+")["forward_1"]
    clean = field[7].copy()
    field[7, 10, 20] = np.nan  # frame 7 -> 8 is read by query frames 5..9 (chunk 1)
    calls = []
    original = FlowChainTracker.track

    def counting(self, query_frame, *args):
        calls.append(query_frame)
        return original(self, query_frame, *args)

    monkeypatch.setattr(FlowChainTracker, "track", counting)
    out = tmp_path / "chunk-001.zarr"
    with pytest.raises(SystemExit):
        chunk(broken, out, 1)
    err = capsys.readouterr().err
    assert str(flow) in err and "forward_1" in err and "frame(s) [7]" in err and "compute_flow" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        baseline_main(["--frames", sequence["frames"], "--flow", str(flow), "--params",
                       json.dumps(config_section("baseline")), "--out", str(tmp_path / "baseline.zarr")])
    err = capsys.readouterr().err
    assert str(flow) in err and "forward_1" in err and "frame(s) [7]" in err
    assert not (tmp_path / "baseline.zarr").exists()

    field[7] = clean  # the flow is repaired: the partial chunk belongs to other input and is not resumed
    calls.clear()
    chunk(broken, out, 1)
    assert "different ['inputs']" in capsys.readouterr().err and calls == [5, 6, 7, 8, 9]
    reference = tmp_path / "clean.zarr"
    chunk(sequence, reference, 1)
    a, b = open_chunk(out), open_chunk(reference)
    for name in ("tracks", "vis", "query_xy", "n_points", "query_frames", "window_start", "done"):
        assert np.array_equal(a[name][...], b[name][...]), name
