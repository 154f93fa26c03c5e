"""The cotracker backend against a tiny local torch.hub repository written by the test.

The fake model has CoTracker's offline call signature, model(video [B,T,3,h,w] 0-255, queries [B,N,3] (t,x,y),
iters) -> (tracks [B,T,N,2], vis [B,T,N], ...), insists on the model resolution, and moves every point with a
constant velocity (a parameter that only the checkpoint sets) in the direction of time it reads from the frame
brightness.  Before a point's query time it returns nonsense, so only a correct backward pass on the reversed
clip gives the right track.  The test fails if hub loading, checkpoint loading, the resize to the model
resolution and back, backward tracking, the visibility threshold or batching is broken.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest

from lrtl import stores, tracks
from lrtl.backends.cotracker import CoTrackerTracker
from lrtl.track_store import decode_tracks, open_chunk
from lrtl.tracks import TrackInputs, TracksParams, query_grid, window_bounds
from tests.conftest import config_section

torch = pytest.importorskip("torch")

HUBCONF = """
import torch
from torch import nn

MODEL_HW = (24, 32)


class FakeCoTracker(nn.Module):
    def __init__(self):
        super().__init__()
        self.velocity = nn.Parameter(torch.zeros(2))  # model px per frame, set by the checkpoint
        self.calls = []

    def forward(self, video, queries, iters=4):
        B, T, C, H, W = video.shape
        assert (C, (H, W)) == (3, MODEL_HW), video.shape
        self.calls.append((T, queries.shape[1], iters))
        forward_in_time = video[0, -1].mean() > video[0, 0].mean()  # brightness grows with the frame index
        direction = 1.0 if forward_in_time else -1.0
        t = torch.arange(T, dtype=video.dtype)[None, :, None]  # [1, T, 1]
        dt = t - queries[:, None, :, 0]  # [B, T, N]
        coords = queries[:, None, :, 1:] + direction * self.velocity * dt[..., None]  # [B, T, N, 2]
        coords = torch.where(dt[..., None] >= 0, coords, torch.full_like(coords, -1000.0))
        vis = torch.where(dt >= 0, 0.95, 0.0)
        vis = torch.where(queries[:, None, :, 1] > W / 2, torch.full_like(vis, 0.5), vis)  # right half: 0.5
        return coords, vis, None


class Predictor(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = FakeCoTracker()
        self.interp_shape = MODEL_HW


def cotracker2(*, pretrained=True, **kwargs):
    assert not pretrained, "lrtl must never ask torch.hub for pretrained weights"
    return Predictor()
"""

VELOCITY = (1.5, -0.75)  # model px / frame
H, W, T = 48, 80, 10
PARAMS = config_section(
    "tracks",
    backend="cotracker",
    chunk_size=4,
    stride=8,
    window=7,
    points_per_batch=25,
    storage="float32",
    cotracker={
        "source": "local",
        "commit": "",
        "repo_dir": "unused",
        "entry": "cotracker2",
        "checkpoint": "unused.pth",
        "height": 24,
        "width": 32,
        "iterations": 3,
        "device": "cpu",
        "aux_grid": 2,
        "aux_offset": 2,
    },
)


@pytest.fixture
def hub(tmp_path):
    repo = tmp_path / "co-tracker"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    checkpoint = tmp_path / "fake_cotracker.pth"
    torch.save({"velocity": torch.tensor(VELOCITY)}, checkpoint)
    rgb = np.zeros((T, H, W, 3), np.uint8)
    rgb += (10 + 20 * np.arange(T, dtype=np.uint8))[:, None, None, None]  # frame index as brightness
    frames = tmp_path / "frames.zarr"
    stores.write_frames(
        frames, rgb, np.zeros((0, H, W), bool), np.zeros(0, np.int32), dataset="d", sequence="s"
    )
    return {"repo": repo, "checkpoint": checkpoint, "frames": frames}


def expected(query_frame, xy, start, length):
    to_model = np.array([(32 - 1) / (W - 1), (24 - 1) / (H - 1)], np.float32)
    velocity = np.array(VELOCITY, np.float32) / to_model  # frame px / frame
    dt = np.arange(start, start + length)[:, None, None] - query_frame
    tracks_ = xy[None] + velocity * dt  # [T_w, N, 2]
    vis = np.broadcast_to(xy[:, 0] * to_model[0] <= 32 / 2, (length, len(xy))).copy()
    vis[query_frame - start] = True
    return tracks_, vis


def test_fake_hub_tracks_forward_and_backward_in_batches(hub):
    params = TracksParams.from_mapping(PARAMS)
    inputs = TrackInputs(
        frames=hub["frames"],
        n_frames=T,
        height=H,
        width=W,
        frame_range=(0, T),
        hub_repo=hub["repo"],
        checkpoint=hub["checkpoint"],
    )
    tracker = CoTrackerTracker(inputs=inputs, params=params)
    assert tracker.provenance()["checkpoint_sha256"]
    for q in (0, 4, 9):
        start, length = window_bounds(q, T, params.window)
        xy = query_grid(q, H, W, params.stride)  # 60 points -> 3 batches of <= 25
        tracker.model.calls.clear()
        got, vis = tracker.track(q, xy, start, length)
        want, want_vis = expected(q, xy, start, length)
        np.testing.assert_allclose(got, want, atol=1e-3)
        assert np.array_equal(vis, want_vis)
        n_aux = 4 * (
            2 - (q - start in (0, length - 1))
        )  # 2x2 grid at q-2 and q+2, a clamped time on q dropped
        passes = 2 if q > start else 1  # the reversed pass only when frames precede the query
        assert len(tracker.model.calls) == 3 * passes
        assert all(n <= 25 + n_aux and t == length and iters == 3 for t, n, iters in tracker.model.calls)
        assert sum(n for _, n, _ in tracker.model.calls) == passes * (60 + 3 * n_aux)


def test_cotracker_chunk_cli_and_missing_weights(hub, tmp_path, capsys):
    argv = [
        "chunk",
        "--frames",
        str(hub["frames"]),
        "--hub-repo",
        str(hub["repo"]),
        "--checkpoint",
        str(hub["checkpoint"]),
        "--chunk",
        "1",
        "--params",
        json.dumps(PARAMS),
        "--dataset",
        "d",
        "--sequence",
        "s",
        "--out",
        str(tmp_path / "chunk-001.zarr"),
    ]
    tracks.main(argv)
    group = open_chunk(tmp_path / "chunk-001.zarr")
    assert group["query_frames"][...].tolist() == [4, 5, 6, 7]
    assert group.attrs["checkpoint_sha256"] and group.attrs["cotracker_entry"] == "cotracker2"
    for i, q in enumerate(range(4, 8)):
        start, length = window_bounds(q, T, 7)
        n = int(group["n_points"][i])
        xy = query_grid(q, H, W, 8)
        want, want_vis = expected(q, xy, start, length)
        np.testing.assert_allclose(decode_tracks(group["tracks"][i])[:, :n], want, atol=1e-3)
        assert np.array_equal(group["vis"][i][:, :n], want_vis)

    for flag, missing in (("--checkpoint", "nope.pth"), ("--hub-repo", "no-repo")):
        bad = list(argv)
        bad[bad.index(flag) + 1] = str(tmp_path / missing)
        bad[-1] = str(tmp_path / "c2.zarr")
        with pytest.raises(SystemExit):
            tracks.main(bad)
        err = capsys.readouterr().err
        assert f"{missing} " in err and "download_weights" in err


class Killed(BaseException):
    """Stands in for SIGKILL: nothing in lrtl catches it."""


def test_resume_only_with_the_same_checkpoint(hub, tmp_path, monkeypatch, capsys):
    calls, kill = [], {"after": None}
    original = CoTrackerTracker.track

    def counting(self, query_frame, *args):
        if len(calls) == kill["after"]:
            raise Killed
        calls.append(query_frame)
        return original(self, query_frame, *args)

    monkeypatch.setattr(CoTrackerTracker, "track", counting)

    def chunk(out, checkpoint):
        tracks.main(["chunk", "--frames", str(hub["frames"]), "--hub-repo", str(hub["repo"]),
                     "--checkpoint", str(checkpoint), "--chunk", "1", "--params", json.dumps(PARAMS),
                     "--dataset", "d", "--sequence", "s", "--out", str(out)])  # fmt: skip

    out = tmp_path / "chunk-001.zarr"
    kill["after"] = 2
    with pytest.raises(Killed):
        chunk(out, hub["checkpoint"])
    kill["after"] = None
    chunk(out, hub["checkpoint"])  # same checkpoint: resumes
    assert calls == [4, 5, 6, 7]
    assert "resuming" in capsys.readouterr().err

    calls.clear()
    out.rename(tmp_path / "first.zarr")
    kill["after"] = 2
    with pytest.raises(Killed):
        chunk(out, hub["checkpoint"])
    torch.save({"velocity": -torch.tensor(VELOCITY)}, hub["checkpoint"])  # new weights, same file name
    kill["after"] = None
    chunk(out, hub["checkpoint"])
    assert calls == [4, 5, 4, 5, 6, 7]  # every query frame tracked again with the new weights
    assert "different ['checkpoint_sha256']" in capsys.readouterr().err
    fresh = tmp_path / "fresh.zarr"
    chunk(fresh, hub["checkpoint"])
    a, b = open_chunk(out), open_chunk(fresh)
    assert a.attrs["checkpoint_sha256"] == b.attrs["checkpoint_sha256"] != open_chunk(
        tmp_path / "first.zarr").attrs["checkpoint_sha256"]
    for name in ("tracks", "vis"):
        assert np.array_equal(a[name][...], b[name][...]), name
