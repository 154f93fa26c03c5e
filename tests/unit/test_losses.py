"""Unit tests for lrtl.losses: trajectory, flow and temporal losses (METHOD.md §7, §12.1)."""

from __future__ import annotations

import functools

import pytest
import torch

from lrtl import losses
from lrtl.losses import (
    flow_loss,
    lowrank_tail_sums,
    lowrank_trajectory_loss,
    mask_weights,
    quadratic_basis,
    sample_masks_at,
    temporal_loss,
    temporal_loss_items,
    trajectory_matrix,
)

RANK = 5


@pytest.fixture(params=["gram", "gram-blas", "qr"])
def route(request, monkeypatch):
    """The loss routes; "gram-blas" shrinks the CPU chunk so that these small N take the numpy-BLAS workers
    (at the default chunk they take the torch route)."""
    if request.param == "gram-blas":
        monkeypatch.setattr(losses, "_CPU_GRAM_CHUNK", 256)
        return "gram"
    return request.param


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _svdvals_tails(traj, weights, rank):
    """Direct formula in float64: [B, K] Σ_{i>r} σ_i(traj_b diag(w_bk))."""
    p = traj.double().unsqueeze(1) * weights.double().unsqueeze(2)
    return torch.linalg.svdvals(p.mT)[..., rank:].sum(-1)  # tall: same values, much faster in LAPACK


def _sigma1(traj, weights):
    p = traj.double().unsqueeze(1) * weights.double().unsqueeze(2)
    return torch.linalg.svdvals(p.mT)[..., 0]


# --------------------------------------------------------------------------------------------------
# synthetic trajectories
# --------------------------------------------------------------------------------------------------


def _affine_tracks(points: torch.Tensor, frames: int, gen: torch.Generator) -> torch.Tensor:
    """Points [N, 2] moved by a random per-frame 2-D affine map. Returns [C, N, 2] pixels."""
    out = []
    for _ in range(frames):
        a = torch.eye(2) + 0.05 * torch.randn(2, 2, generator=gen)
        b = 20.0 * torch.randn(2, generator=gen)
        out.append(points @ a.T + b)
    return torch.stack(out)


def _two_motion_scene(n_per_motion=300, frames=10, seed=0):
    """Two affine motions. Returns traj [1, 2C, N], labels [N] (0 / 1)."""
    gen = _gen(seed)
    pts = torch.rand(2 * n_per_motion, 2, generator=gen) * torch.tensor([400.0, 300.0])
    tracks = torch.cat(
        [_affine_tracks(pts[:n_per_motion], frames, gen), _affine_tracks(pts[n_per_motion:], frames, gen)], 1
    )  # [C, N, 2]
    labels = torch.cat([torch.zeros(n_per_motion), torch.ones(n_per_motion)]).long()
    return trajectory_matrix(tracks.unsqueeze(0)).double(), labels


@functools.cache
def _degenerate_cases():
    """Named (traj [B, D, N] float32, weights [B, K, N] float32) covering the degenerate regimes."""
    gen = _gen(1)
    batch, n_masks, dim, n_cols = 2, 3, 82, 1500
    cases = {}
    cases["random"] = (
        torch.randn(batch, dim, n_cols, generator=gen) * 100,
        torch.rand(batch, n_masks, n_cols, generator=gen),
    )
    low8 = torch.randn(batch, dim, 8, generator=gen) @ torch.randn(batch, 8, n_cols, generator=gen) * 30
    cases["rank8"] = (low8, torch.rand(batch, n_masks, n_cols, generator=gen))
    # all 82 singular values equal (orthonormal rows): repeated, and the tie straddles the rank boundary
    ortho = torch.linalg.qr(torch.randn(batch, n_cols, dim, generator=gen, dtype=torch.float64))[0]
    cases["repeated"] = (
        (ortho.transpose(1, 2) * 500).float(),
        torch.ones(batch, n_masks, n_cols) * (1 - 1e-6),
    )
    # pairs of equal singular values inside the tail
    u = torch.linalg.qr(torch.randn(batch, dim, dim, generator=gen, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(batch, n_cols, dim, generator=gen, dtype=torch.float64))[0]
    s = torch.linspace(1000, 10, dim // 2, dtype=torch.float64).repeat_interleave(2)
    cases["paired"] = ((u * s) @ v.transpose(1, 2)).float(), torch.ones(batch, n_masks, n_cols) * (1 - 1e-6)
    near = torch.rand(batch, n_masks, n_cols, generator=gen) > 0.5
    cases["masks_near_0_1"] = (
        torch.randn(batch, dim, n_cols, generator=gen) * 100,
        torch.where(near, 1 - 1e-6, 1e-6).float(),
    )
    return cases


# --------------------------------------------------------------------------------------------------
# lowrank_trajectory_loss
# --------------------------------------------------------------------------------------------------


def test_trajectory_matrix_rows_are_x_then_y():
    tracks = torch.arange(2 * 3 * 4 * 2, dtype=torch.float32).reshape(2, 3, 4, 2)  # [B, C, N, 2]
    p = trajectory_matrix(tracks)
    assert p.shape == (2, 6, 4)
    assert torch.equal(p[:, :3], tracks[..., 0])
    assert torch.equal(p[:, 3:], tracks[..., 1])


def test_single_affine_motion_is_low_rank(route):
    # x_t = A_t X + b_t: every row of the 2C x N matrix is a combination of X, Y and 1, so rank <= 3 <= r.
    # Two independent motions span 3 + 3 = 6 > r = 5 dimensions, so mixing them leaves σ_6 > 0.
    traj, labels = _two_motion_scene()
    own = torch.where(labels == 0, 1 - 1e-6, 1e-6)  # mask selecting motion 0
    mixed = torch.full_like(own, 0.5)  # mask mixing both motions
    weights = torch.stack([own, 1 - own, mixed]).unsqueeze(0)  # [1, 3, N]
    tails = lowrank_tail_sums(traj, weights, RANK, route)[0]
    sigma1 = _sigma1(traj, weights)[0]
    assert tails[0] < 1e-6 * sigma1[0]
    assert tails[1] < 1e-6 * sigma1[1]
    assert tails[2] > 1e-3 * sigma1[2]
    assert tails[2] > 1e3 * max(tails[0], tails[1])


def test_permuting_tracks_leaves_loss_unchanged(route):
    traj, weights = _degenerate_cases()["random"]
    perm = torch.randperm(traj.shape[-1], generator=_gen(3))
    a = lowrank_trajectory_loss(traj, weights, RANK, route)
    b = lowrank_trajectory_loss(traj[..., perm], weights[..., perm], RANK, route)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)


@pytest.mark.parametrize("case", ["random", "rank8", "repeated", "paired", "masks_near_0_1"])
def test_routes_match_direct_svdvals(route, case):
    traj, weights = _degenerate_cases()[case]
    expected = _svdvals_tails(traj, weights, RANK)  # [B, K]
    got = lowrank_tail_sums(traj, weights, RANK, route)
    rel = ((got - expected).abs() / expected.abs()).max().item()
    assert rel < 1e-4, f"{case}/{route}: max rel err {rel:.2e}"
    loss = lowrank_trajectory_loss(traj, weights, RANK, route)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), expected.mean(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n_cols", [9_000, 700])
@pytest.mark.parametrize("dim", [6, 45, 82])
def test_staircase_gram_equals_the_full_weighted_gram(dim, n_cols, threads, monkeypatch):
    """Row blocks x column chunks (N spans several chunks, uneven last block) rebuild p diag(w²) pᵀ, on both
    routes (numpy BLAS workers for N >= one CPU chunk, torch below) and with one or two worker threads."""
    monkeypatch.setattr(losses, "_TORCH_GRAM_CHUNK", 4096)  # the torch route also spans several chunks
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = _gen(3)
        traj = torch.randn(3, dim, n_cols, generator=gen) * 50  # [B, D, N]
        weights = torch.rand(3, 2, n_cols, generator=gen)  # [B, K, N]
        p = traj.double()
        expected = torch.einsum("bdn,bkn,ben->bkde", p, weights.double().square(), p)  # [B, K, D, D]
        torch.testing.assert_close(losses._weighted_gram(traj, weights), expected, rtol=1e-12, atol=1e-6)
        upper = torch.ones(dim, dim, dtype=torch.bool).triu()
        for gram_route in (losses._weighted_gram_blas, losses._weighted_gram_torch):
            torch.testing.assert_close(
                gram_route(traj, weights)[..., upper], expected[..., upper], rtol=1e-12, atol=1e-6
            )
    finally:
        torch.set_num_threads(old_threads)


def test_exactly_low_rank_tail_is_round_off(route):
    # rank 4 <= r: the exact tail is zero, so compare in units of σ_1.
    gen = _gen(5)
    traj = torch.randn(2, 82, 4, generator=gen) @ torch.randn(2, 4, 1000, generator=gen) * 30
    weights = torch.rand(2, 3, 1000, generator=gen)
    expected = _svdvals_tails(traj, weights, RANK)
    got = lowrank_tail_sums(traj, weights, RANK, route)
    assert ((got - expected).abs() / _sigma1(traj, weights)).max() < 1e-5


@pytest.mark.parametrize("case", ["random", "rank8", "repeated", "paired", "masks_near_0_1"])
def test_gradients_finite_on_degenerate_inputs(route, case):
    traj, weights = _degenerate_cases()[case]
    traj = traj.clone().requires_grad_(True)
    weights = weights.clone().requires_grad_(True)
    lowrank_trajectory_loss(traj, weights, RANK, route).backward()
    assert torch.isfinite(traj.grad).all() and torch.isfinite(weights.grad).all()
    assert weights.grad.abs().sum() > 0


def test_gradients_finite_for_vanishing_singular_values(route):
    gen = _gen(6)
    traj = (torch.randn(1, 82, 3, generator=gen) @ torch.randn(1, 3, 800, generator=gen) * 50).requires_grad_(
        True
    )
    weights = torch.rand(1, 2, 800, generator=gen).requires_grad_(True)
    lowrank_trajectory_loss(traj, weights, RANK, route).backward()
    assert torch.isfinite(traj.grad).all() and torch.isfinite(weights.grad).all()


def test_gradients_match_svdvals_autograd(route):
    gen = _gen(7)
    traj = torch.randn(2, 20, 300, generator=gen, dtype=torch.float64) * 10
    weights = torch.rand(2, 3, 300, generator=gen, dtype=torch.float64)
    t1, w1 = traj.clone().requires_grad_(True), weights.clone().requires_grad_(True)
    lowrank_trajectory_loss(t1, w1, RANK, route).backward()
    t2, w2 = traj.clone().requires_grad_(True), weights.clone().requires_grad_(True)
    _svdvals_tails(t2, w2, RANK).mean().backward()
    torch.testing.assert_close(w1.grad, w2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-6, atol=1e-9)


def test_non_finite_input_raises_clear_error(route):
    traj, weights = _degenerate_cases()["random"]
    traj = traj.clone()
    traj[0, 3, 7] = float("nan")
    traj[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="traj has 2 non-finite"):
        lowrank_trajectory_loss(traj, weights, RANK, route)
    bad_w = weights.clone()
    bad_w[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="weights has 1 non-finite"):
        lowrank_trajectory_loss(_degenerate_cases()["random"][0], bad_w, RANK, route)


def test_bad_route_and_rank_beyond_dim():
    traj, weights = _degenerate_cases()["random"]
    with pytest.raises(ValueError, match="unknown route"):
        lowrank_trajectory_loss(traj, weights, RANK, "svd")
    assert lowrank_trajectory_loss(traj, weights, 82).item() == 0.0


# --------------------------------------------------------------------------------------------------
# sampling helpers
# --------------------------------------------------------------------------------------------------


def test_sample_masks_at_uses_pixel_centre_convention():
    h, w = 5, 7
    cols = torch.arange(w, dtype=torch.float32).expand(h, w)
    rows = torch.arange(h, dtype=torch.float32).unsqueeze(1).expand(h, w)
    masks = torch.stack([cols, rows]).unsqueeze(0)  # [1, 2, h, w]
    xy = torch.tensor([[0.0, 0.0], [6.0, 4.0], [2.5, 1.25]])  # pixel positions
    loc = torch.stack([xy[:, 0] / (w - 1) * 2 - 1, xy[:, 1] / (h - 1) * 2 - 1], -1).unsqueeze(0)
    got = sample_masks_at(masks, loc)  # [1, 2, N]
    torch.testing.assert_close(got[0].T, xy)


def test_mask_weights_clamps():
    masks = torch.zeros(1, 2, 4, 4)
    masks[:, 1] = 1.0
    w = mask_weights(masks, torch.zeros(1, 3, 2))
    assert torch.all(w[0, 0] == 1e-6) and torch.allclose(w[0, 1], torch.tensor(1 - 1e-6))


# --------------------------------------------------------------------------------------------------
# flow_loss
# --------------------------------------------------------------------------------------------------


def _quadratic_flow(height, width, gen):
    phi = quadratic_basis(height, width, dtype=torch.float32)  # [L, 6]
    theta = torch.randn(6, 2, generator=gen) * 5
    return (phi @ theta).T.reshape(2, height, width)  # [2, H, W]


def test_flow_loss_zero_for_quadratic_flow_one_mask():
    gen = _gen(10)
    h, w = 24, 40
    flow = torch.stack([_quadratic_flow(h, w, gen) for _ in range(2)])  # [B, 2, H, W]
    masks = torch.zeros(2, 3, h, w)
    masks[:, 1] = 1.0
    assert flow_loss(masks, flow).item() < 1e-8


def test_flow_loss_zero_for_hard_partition_and_positive_for_soft_mixture():
    gen = _gen(11)
    h, w = 24, 40
    f1, f2 = _quadratic_flow(h, w, gen), _quadratic_flow(h, w, gen)
    region = torch.zeros(h, w, dtype=torch.bool)
    region[:, : w // 2] = True
    region[5:12, 25:33] = True
    flow = torch.where(region, f1, f2).unsqueeze(0)  # [1, 2, H, W]
    hard = torch.stack([region, ~region]).float().unsqueeze(0)  # [1, 2, H, W]
    assert flow_loss(hard, flow).item() < 1e-8
    soft_wrong = torch.full_like(hard, 0.5).requires_grad_(True)
    loss = flow_loss(soft_wrong, flow)
    assert loss.item() > 1e-2
    loss.backward()
    assert torch.isfinite(soft_wrong.grad).all() and soft_wrong.grad.abs().sum() > 0


def test_flow_loss_matches_lstsq_reference():
    gen = _gen(12)
    b, k, h, w = 2, 3, 16, 20
    masks = torch.randn(b, k, h, w, generator=gen, dtype=torch.float64).softmax(1)
    flow = torch.randn(b, 2, h, w, generator=gen, dtype=torch.float64) * 5
    phi = quadratic_basis(h, w)  # [L, 6]
    recon = torch.zeros(b, 2, h * w, dtype=torch.float64)
    for bi in range(b):
        for ki in range(k):
            m = masks[bi, ki].reshape(-1, 1)
            a = m * phi
            target = m * flow[bi].reshape(2, -1).T  # [L, 2]
            theta = torch.linalg.lstsq(a, target).solution  # [6, 2]
            recon[bi] += (a @ theta).T
    expected = (flow.reshape(b, 2, -1) - recon).square().mean()
    torch.testing.assert_close(flow_loss(masks, flow), expected, rtol=1e-6, atol=1e-10)


def test_flow_loss_gradient_finite_with_empty_mask():
    gen = _gen(13)
    masks = torch.zeros(1, 2, 12, 16)
    masks[:, 0] = 1.0
    masks.requires_grad_(True)
    flow = torch.randn(1, 2, 12, 16, generator=gen)
    flow_loss(masks, flow).backward()
    assert torch.isfinite(masks.grad).all()


# --------------------------------------------------------------------------------------------------
# temporal_loss
# --------------------------------------------------------------------------------------------------

H, W = 30, 40  # frame size in pixels; masks at the same size


def _ramp_masks(shift_x: float = 0.0) -> torch.Tensor:
    """Smooth 2-channel softmax masks of x - shift_x. Returns [1, 2, H, W]."""
    x = torch.arange(W, dtype=torch.float32).expand(H, W) - shift_x
    logits = torch.stack([(x - 20) / 4, -(x - 20) / 4])
    return logits.softmax(0).unsqueeze(0)


def _temporal_case(t_index: int, n_context: int = 41, shift: int = 3, garbage_elsewhere: bool = True):
    """Tracks that move by `shift` pixels in x between frames s and s+5 (both windows' t at t_index)."""
    gen = _gen(20)
    n = 50
    start = torch.stack(
        [torch.randint(8, 28, (n,), generator=gen), torch.randint(3, 27, (n,), generator=gen)], -1
    )
    start = start.float()  # [N, 2] integer pixel positions at s
    garbage = torch.rand(n_context, n, 2, generator=gen) * torch.tensor([W - 1.0, H - 1.0])
    tracks_s = garbage.clone() if garbage_elsewhere else start.expand(n_context, n, 2).clone()
    tracks_s5 = (
        garbage.clone()
        if garbage_elsewhere
        else (start + torch.tensor([shift, 0.0])).expand(n_context, n, 2).clone()
    )
    tracks_s[t_index] = start
    tracks_s[t_index + 5] = start + torch.tensor([shift, 0.0])
    tracks_s5[t_index] = start + torch.tensor([shift, 0.0])
    tracks_s5[t_index - 5] = start
    vis = torch.ones(1, n_context, n, dtype=torch.bool)
    norm = torch.tensor([2 / (W - 1), 2 / (H - 1)])
    loc_s = (start * norm - 1).unsqueeze(0)
    loc_s5 = ((start + torch.tensor([shift, 0.0])) * norm - 1).unsqueeze(0)
    return dict(
        masks_s=_ramp_masks(0.0),
        masks_s5=_ramp_masks(float(shift)),
        tracks_s=tracks_s.unsqueeze(0),
        vis_s=vis,
        loc_s=loc_s,
        tracks_s5=tracks_s5.unsqueeze(0),
        vis_s5=vis.clone(),
        loc_s5=loc_s5,
        t_index_s=torch.tensor([t_index]),
        t_index_s5=torch.tensor([t_index]),
    )


def test_temporal_loss_zero_when_consistent_and_positive_otherwise():
    case = _temporal_case(20)
    assert temporal_loss(**case, frame_size=(H, W)).item() < 1e-10
    inconsistent = dict(case, masks_s5=case["masks_s5"].flip(1))
    assert temporal_loss(**inconsistent, frame_size=(H, W)).item() > 1e-2


def test_temporal_loss_uses_t_index_near_window_ends_and_compat_uses_centre():
    for t_index in (5, 35):  # t near the start / end of its window (sequence ends)
        case = _temporal_case(t_index)
        assert temporal_loss(**case, frame_size=(H, W)).item() < 1e-10
        # the reference reads index 20 ± 5, where these tracks hold unrelated positions
        assert temporal_loss(**case, frame_size=(H, W), compat_reference=True).item() > 1e-3


def test_temporal_loss_compat_agrees_when_t_is_centred():
    case = _temporal_case(20)
    a = temporal_loss(**case, frame_size=(H, W))
    b = temporal_loss(**case, frame_size=(H, W), compat_reference=True)
    torch.testing.assert_close(a, b)


def test_temporal_loss_ignores_invisible_tracks_and_has_gradient():
    case = _temporal_case(10)
    bad = case["tracks_s"].clone()
    bad[0, 15, :10] = 0.0  # wrong positions at c + 5 for 10 tracks ...
    vis = case["vis_s"].clone()
    vis[0, 15, :10] = False  # ... that are invisible there
    masks_s = case["masks_s"].clone().requires_grad_(True)
    loss = temporal_loss(**dict(case, tracks_s=bad, vis_s=vis, masks_s=masks_s), frame_size=(H, W))
    assert loss.item() < 1e-10
    wrong = temporal_loss(**dict(case, masks_s5=case["masks_s5"].flip(1), masks_s=masks_s), frame_size=(H, W))
    wrong.backward()
    assert torch.isfinite(masks_s.grad).all() and masks_s.grad.abs().sum() > 0


def test_temporal_loss_rejects_index_outside_window():
    case = _temporal_case(20)
    with pytest.raises(ValueError, match="leaves the"):
        temporal_loss(**dict(case, t_index_s=torch.tensor([38])), frame_size=(H, W))


def test_temporal_loss_items_sums_the_two_pairs():
    c1, c2 = _temporal_case(12), _temporal_case(30)
    c2 = dict(c2, masks_s5=c2["masks_s5"].flip(1))  # make the second pair inconsistent
    # item layout [F, F+g, F+5, F+5+g]: positions 0/2 from c1, positions 1/3 from c2
    order = [("s", c1), ("s", c2), ("s5", c1), ("s5", c2)]
    masks = torch.cat([c[f"masks_{k}"] for k, c in order])
    tracks = torch.cat([c[f"tracks_{k}"] for k, c in order])
    vis = torch.cat([c[f"vis_{k}"] for k, c in order])
    loc = torch.cat([c[f"loc_{k}"] for k, c in order])
    t_index = torch.cat([c[f"t_index_{k}"] for k, c in order])
    total = temporal_loss_items(masks, tracks, vis, loc, t_index, frame_size=(H, W))
    expected = temporal_loss(**c1, frame_size=(H, W)) + temporal_loss(**c2, frame_size=(H, W))
    torch.testing.assert_close(total, expected)
    assert total.item() > 1e-2
