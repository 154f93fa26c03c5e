"""The forward-backward check of a dense flow field (lrtl.flow_confidence) and the flow loss it weights."""

from __future__ import annotations

import numpy as np
import torch

from lrtl.flow_confidence import consistent
from lrtl.losses import flow_loss, quadratic_basis


def translation(height: int, width: int, u: float, v: float) -> np.ndarray:
    field = np.zeros((height, width, 2), np.float32)
    field[..., 0], field[..., 1] = u, v
    return field


def test_a_translation_and_its_inverse_agree_except_where_points_leave_the_frame():
    forward, backward = translation(20, 30, 3.0, 0.0), translation(20, 30, -3.0, 0.0)
    ok = consistent(forward, backward)
    assert ok[:, :27].all()  # x + 3 <= 29 stays inside
    assert not ok[:, 27:].any()  # lands beyond the last column


def test_a_region_whose_backward_flow_disagrees_fails_and_only_there():
    forward, backward = translation(20, 30, 2.0, 1.0), translation(20, 30, -2.0, -1.0)
    backward[5:10, 10:20] = 0.0  # in frame t+1 the flow there does not lead back
    ok = consistent(forward, backward)
    landed_in_bad = np.zeros((20, 30), bool)
    landed_in_bad[4:9, 8:18] = True  # x + (2, 1) falls in rows 5..9, columns 10..19
    assert not ok[landed_in_bad].any()
    far = np.ones((20, 30), bool)
    far[2:11, 6:21] = False  # away from the bad region (bilinear reach of one pixel) and inside
    far[19:, :] = far[:, 28:] = False
    assert ok[far].all()


def test_a_zero_weight_region_neither_shapes_nor_scores_the_fit():
    height, width = 12, 16
    phi = quadratic_basis(height, width)  # [L, 6]
    rng = np.random.default_rng(0)
    exact = (phi @ torch.tensor(rng.normal(size=(6, 2)))).T.reshape(2, height, width)  # a quadratic field
    flow = exact.clone()
    flow[:, :, 8:] = torch.tensor(rng.normal(scale=5.0, size=(2, height, 8)))  # noise on the right half
    masks = torch.ones(1, 1, height, width, dtype=torch.float64)
    weight = torch.ones(1, height, width, dtype=torch.float64)
    weight[:, :, 8:] = 0.0
    unweighted = flow_loss(masks, flow[None])
    weighted = flow_loss(masks, flow[None], weight=weight)
    assert unweighted > 1.0  # the noise cannot be fitted by one quadratic
    assert weighted < 1e-12  # without it the quadratic is recovered exactly
    assert torch.allclose(flow_loss(masks, flow[None], weight=torch.ones_like(weight)), unweighted)
