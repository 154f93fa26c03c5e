"""The loss terms of one training step (lrtl.train.compute_losses): how the track weights enter L_traj."""

from __future__ import annotations

import types

import pytest
import torch

from lrtl.train import compute_losses
from lrtl.train_params import parse_params
from tests.conftest import config_section, tiny_model

FRAMES, CONTEXT, TRACKS, K = 4, 7, 40, 3  # 4 frames = one item; C context frames; N tracks per frame


def _params(run: dict | None = None, **loss):
    """train.defaults with a tiny model and L_traj alone (rank 2): `loss` keys and `run` keys merged over that."""
    loss = {"w_flow": 0.0, "w_traj": 1.0, "w_temp": 0.0, "rank": 2, **loss}
    return parse_params(config_section("train.defaults", model=tiny_model(k=K), loss=loss, **(run or {})))


def _traj_loss(track_weight: str, logits, tracks, vis, loc) -> torch.Tensor:
    out = types.SimpleNamespace(logits=logits)
    batch = {"tracks": tracks, "vis": vis, "loc": loc}
    return compute_losses(out, batch, _params(track_weight=track_weight), step=0, frame_size=(32, 48))["raw_traj"]


def _inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(FRAMES, K, 8, 12, generator=gen)  # [4, K, h, w]
    tracks = torch.randn(FRAMES, CONTEXT, TRACKS, 2, generator=gen).cumsum(dim=1) * 3 + 20  # [4, C, N, 2] px
    loc = torch.rand(FRAMES, TRACKS, 2, generator=gen) * 2 - 1  # [4, N, 2] normalised
    return gen, logits, tracks, loc


def test_a_track_never_visible_leaves_the_trajectory_loss():
    gen, logits, tracks, loc = _inputs(0)
    vis = torch.ones(FRAMES, CONTEXT, TRACKS, dtype=torch.bool)
    lost = torch.arange(TRACKS) % 2 == 1  # every other track: the tracker never saw it in the window
    vis[:, :, lost] = False
    tracks[:, :, lost] = torch.rand(FRAMES, CONTEXT, int(lost.sum()), 2, generator=gen) * 400  # [4, C, N/2, 2]
    kept = ~lost
    expected = _traj_loss("none", logits, tracks[:, :, kept], vis[:, :, kept], loc[:, kept])
    weighted = _traj_loss("visibility", logits, tracks, vis, loc)
    assert weighted.item() == pytest.approx(expected.item(), rel=1e-5)
    assert _traj_loss("none", logits, tracks, vis, loc).item() > 2 * expected.item()  # unweighted, they count


def test_a_track_counts_in_proportion_to_its_visible_frames():
    # P = p diag(w) with w scaled by the visible fraction f is the matrix of the tracks scaled by f (METHOD.md §7.2)
    gen, logits, tracks, loc = _inputs(1)
    vis = torch.rand(FRAMES, CONTEXT, TRACKS, generator=gen) < 0.6  # [4, C, N]
    fraction = vis.sum(dim=1).to(torch.float32) / CONTEXT  # [4, N]
    scaled = tracks * fraction[:, None, :, None]  # [4, C, N, 2]
    expected = _traj_loss("none", logits, scaled, vis, loc)
    assert _traj_loss("visibility", logits, tracks, vis, loc).item() == pytest.approx(expected.item(), rel=1e-5)
    all_visible = torch.ones_like(vis)
    assert _traj_loss("visibility", logits, tracks, all_visible, loc).item() == pytest.approx(
        _traj_loss("none", logits, tracks, all_visible, loc).item(), rel=1e-6
    )


def test_complete_keeps_only_the_tracks_visible_in_every_context_frame():
    gen, logits, tracks, loc = _inputs(2)
    vis = torch.ones(FRAMES, CONTEXT, TRACKS, dtype=torch.bool)
    lost = torch.arange(TRACKS) % 3 == 0
    vis[:, CONTEXT - 1, lost] = False  # lost in the last frame only: held positions from there on
    tracks[:, CONTEXT - 1, lost] += 50.0  # [4, N/3, 2] a jump no low-rank motion explains
    kept = ~lost
    expected = _traj_loss("none", logits, tracks[:, :, kept], vis[:, :, kept], loc[:, kept])
    assert _traj_loss("complete", logits, tracks, vis, loc).item() == pytest.approx(expected.item(), rel=1e-5)
    fraction = _traj_loss("visibility", logits, tracks, vis, loc).item()  # those count 6/7 there
    assert fraction > 1.5 * expected.item()


@pytest.mark.parametrize("boost, until, steps_and_factors", [
    (1.0, 0.5, [(0, 1.0), (50, 1.0), (99, 1.0)]),  # the paper's constant weight
    (4.0, 0.5, [(0, 4.0), (25, 2.5), (50, 1.0), (99, 1.0)]),  # linear from 4x to 1x over the first half
    (3.0, 1.0, [(0, 3.0), (50, 2.0), (100, 1.0)]),
])
def test_the_trajectory_weight_falls_from_its_boost_to_w_traj(boost, until, steps_and_factors):
    gen, logits, tracks, loc = _inputs(3)
    vis = torch.ones(FRAMES, CONTEXT, TRACKS, dtype=torch.bool)
    params = _params({"iterations": 100}, w_traj=2.0e-3, traj_boost=boost, traj_boost_until=until)
    out = types.SimpleNamespace(logits=logits)
    batch = {"tracks": tracks, "vis": vis, "loc": loc}
    for step, factor in steps_and_factors:
        terms = compute_losses(out, batch, params, step=step, frame_size=(32, 48))
        assert terms["traj"].item() == pytest.approx(2.0e-3 * factor * terms["raw_traj"].item(), rel=1e-6)
        assert terms["total"].item() == pytest.approx(terms["traj"].item(), rel=1e-6)


def test_a_boost_leaves_a_run_without_the_trajectory_loss_without_it():
    # flow_only sets w_traj 0: a boost in train.defaults must not bring L_traj back at the start
    gen, logits, tracks, loc = _inputs(4)
    params = _params(w_flow=1.0, w_traj=0.0, traj_boost=10.0)
    flow = torch.randn(FRAMES, 2, 8, 12, generator=gen)  # [4, 2, h, w]
    batch = {"tracks": tracks, "vis": torch.ones(FRAMES, CONTEXT, TRACKS, dtype=torch.bool), "loc": loc, "flow": flow}
    terms = compute_losses(types.SimpleNamespace(logits=logits), batch, params, step=0, frame_size=(32, 48))
    assert "traj" not in terms
    assert terms["total"].item() == pytest.approx(terms["flow"].item(), rel=1e-6)
