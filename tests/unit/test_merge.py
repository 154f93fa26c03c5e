"""The label-free K -> 2 merge of lrtl.infer on synthetic features."""

import numpy as np
import torch

from lrtl.flow_fill import textured_fraction
from lrtl.infer import (
    affinity,
    mask_features,
    mask_speeds,
    merge_groups,
    merge_masks,
    motion_groups,
    untextured_still,
)


def one_hot_masks(labels: np.ndarray, k: int) -> np.ndarray:
    return np.stack([(labels == i).astype(np.float32) for i in range(k)])  # [K, h, w]


def test_two_groups_of_near_identical_features_cluster_together():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=16), rng.normal(size=16)
    feats = np.stack(
        [
            a + 0.01 * rng.normal(size=16),
            b + 0.01 * rng.normal(size=16),
            a + 0.01 * rng.normal(size=16),
            b + 0.01 * rng.normal(size=16),
        ]
    )
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    groups = merge_groups(feats, np.full(4, 100.0))
    assert groups[0] == groups[2] and groups[1] == groups[3] and groups[0] != groups[1]


def test_merge_from_feature_maps_end_to_end():
    # 4 masks = 4 vertical stripes; features: stripes 0 and 1 share one vector, stripes 2 and 3 another.
    h, w, f = 8, 16, 6
    labels = np.repeat(np.arange(4), w // 4)[None, :].repeat(h, 0)  # [h, w]
    soft = torch.from_numpy(one_hot_masks(labels, 4))[None]  # [1, 4, h, w]
    vec = torch.eye(f)[:2]  # two orthogonal feature vectors
    feature_map = torch.where(
        torch.from_numpy(labels < 2)[None], vec[0][:, None, None], vec[1][:, None, None]
    )
    means, mass = mask_features(soft, feature_map[None].float())  # features at full res
    assert torch.allclose(means.norm(dim=-1), torch.ones(1, 4))
    groups = merge_groups(means[0].numpy(), mass[0].numpy())
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]
    merged = merge_masks(soft[0].numpy(), groups)
    assert merged.shape == (2, h, w)
    np.testing.assert_allclose(merged.sum(axis=0), 1.0)  # a partition of the soft masks
    left = merged[groups[0]]
    assert left[:, : w // 2].min() == 1 and left[:, w // 2 :].max() == 0


def test_low_resolution_features_are_upsampled():
    soft = torch.rand(2, 3, 12, 20).softmax(dim=1)
    means, mass = mask_features(soft, torch.rand(2, 5, 3, 5))
    assert means.shape == (2, 3, 5) and mass.shape == (2, 3)
    torch.testing.assert_close(mass.sum(dim=1), torch.full((2,), 240.0))


def test_k2_is_identity():
    feats = np.array([[1.0, 0.0], [1.0, 0.0]])  # even identical features keep two groups
    assert merge_groups(feats, np.array([50.0, 50.0])).tolist() == [0, 1]
    soft = np.random.default_rng(1).random((2, 4, 4))
    np.testing.assert_array_equal(merge_masks(soft, np.array([0, 1])), soft)


def test_degenerate_empty_masks_and_single_cluster():
    feats = np.eye(4)
    # only one non-empty mask: everything real in group 0, merged[1] holds only the empty ones
    groups = merge_groups(feats, np.array([500.0, 0.0, 0.1, 0.0]))
    assert groups.tolist() == [0, 1, 1, 1]
    # two non-empty masks: one group each, empties in group 1
    groups = merge_groups(feats, np.array([300.0, 0.0, 200.0, 0.0]))
    assert groups[0] != groups[2]
    # all features identical: still two non-empty groups
    same = np.tile([[1.0, 0.0, 0.0]], (4, 1))
    groups = merge_groups(same, np.full(4, 10.0))
    assert set(groups.tolist()) == {0, 1}


def test_affinity_clamped_positive():
    feats = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    matrix = affinity(feats)
    assert matrix.min() >= 1e-6 and matrix[0, 1] == 1e-6
    np.testing.assert_allclose(np.diag(matrix), 1.0)


def test_motion_merge_puts_every_moving_object_against_the_split_background():
    # background split in two masks (speeds near 0), three objects at different speeds: the slowest object is
    # still far faster than the background on a log scale, so all objects form group 0 (the moving group).
    speed = np.array([1.7, 0.07, 0.6, 1.1, 0.05])
    mass = np.array([0.07, 0.4, 0.21, 0.03, 0.29]) * 1000
    assert motion_groups(speed, mass).tolist() == [0, 1, 0, 0, 1]


def test_motion_merge_of_synthetic_masks_matches_the_ground_truth():
    from lrtl.camera import residual_speed
    from lrtl.synthetic import SyntheticParams, generate_scene
    from tests.conftest import config_section

    params = config_section("synthetic", n_sequences=4, height=90, width=160, n_frames=[6, 6], n_objects=[2, 3],
                            object_speed=[1.5, 3.0], camera_zoom=0.01, seed=5)
    for index in range(4):
        scene = generate_scene(SyntheticParams.from_mapping(params), index)
        ids = scene.object_ids(1)  # [H, W]
        labels = np.where(ids == 0, (np.arange(ids.shape[1]) >= ids.shape[1] // 2)[None, :].astype(int), ids + 1)
        k = int(labels.max()) + 1  # 2 background halves + the objects in view
        soft = one_hot_masks(labels, k)  # [K, H, W]
        mass = soft.sum(axis=(1, 2))
        speed = (soft * residual_speed(scene.flow(1, 1))).sum(axis=(1, 2)) / np.maximum(mass, 1e-12)
        groups = motion_groups(speed, mass)
        merged = merge_masks(soft, groups)
        np.testing.assert_array_equal(merged[0] > 0.5, ids > 0)  # group 0 is exactly the moving objects


def test_motion_merge_degenerate_cases():
    assert motion_groups(np.array([0.1, 3.0]), np.array([500.0, 50.0])).tolist() == [1, 0]  # K = 2: faster first
    assert motion_groups(np.array([0.1, 3.0, 1.0]), np.array([500.0, 0.0, 50.0])).tolist() == [1, 1, 0]
    assert motion_groups(np.array([0.1, 3.0, 1.0]), np.array([500.0, 0.0, 0.0])).tolist() == [0, 1, 1]


def test_untrusted_motion_never_makes_a_mask_move():
    # 3 masks on a 4 x 6 frame: background (left), object (middle, 2 px/frame), "sky" (right) whose flow is noise
    # at 5 px/frame but fails the forward-backward check. Trusted, the sky counts as still and joins the background.
    soft = np.zeros((1, 3, 4, 6))
    soft[0, 0, :, :2] = soft[0, 1, :, 2:4] = soft[0, 2, :, 4:] = 1.0
    speed = np.zeros((1, 4, 6))
    speed[0, :, 2:4], speed[0, :, 4:] = 2.0, 5.0
    trust = np.ones((1, 4, 6))
    trust[0, :, 4:] = 0.0
    trust[0, 0, 2] = 0.0  # one untrusted object pixel does not change the object's mean
    np.testing.assert_allclose(mask_speeds(soft, speed)[0], [0.0, 2.0, 5.0])
    np.testing.assert_allclose(mask_speeds(soft, speed, trust)[0], [0.0, 2.0, 0.0])
    mass = soft.sum(axis=(-2, -1))[0]
    assert motion_groups(mask_speeds(soft, speed)[0], mass).tolist() == [1, 0, 0]  # the sky joins the object
    assert motion_groups(mask_speeds(soft, speed, trust)[0], mass).tolist() == [1, 0, 1]


def test_a_mask_that_is_mostly_flat_counts_as_still():
    # background (left), object (middle, 2 px/frame), a clear sky (right) whose flow, filled from the object beside
    # it, says 3 px/frame. The sky has no texture: it cannot be shown to move and joins the background.
    soft = np.zeros((1, 3, 4, 6))
    soft[0, 0, :, :2] = soft[0, 1, :, 2:4] = soft[0, 2, :, 4:] = 1.0
    speed = mask_speeds(soft, np.broadcast_to(np.array([0.0, 0.0, 2.0, 2.0, 3.0, 3.0]), (1, 4, 6)))  # [1, 3]
    textured = np.ones((1, 4, 6))
    textured[0, :, 4:] = 0.0
    textured[0, :3, 2] = 0.0  # the object is 5/8 textured: above a half, it still moves
    mass = soft.sum(axis=(-2, -1))[0]
    assert motion_groups(speed[0], mass).tolist() == [1, 0, 0]  # the sky joins the object
    gated = untextured_still(speed, soft, textured, 0.5)
    np.testing.assert_allclose(gated[0], [0.0, 2.0, 0.0])
    assert motion_groups(gated[0], mass).tolist() == [1, 0, 1]
    np.testing.assert_allclose(untextured_still(speed, soft, textured, 0.7)[0], [0.0, 0.0, 0.0])  # 5/8 < 0.7
    np.testing.assert_allclose(untextured_still(speed, soft, textured, 0.0), speed)  # off


def test_textured_fraction_finds_the_flat_half_of_a_frame():
    rng = np.random.default_rng(0)
    frame = np.full((64, 96, 3), 128, np.uint8)  # left half flat grey
    frame[:, 48:] = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)  # right half noise: texture everywhere
    fraction = textured_fraction(frame[None], (16, 24), 0.002)  # [1, 16, 24], 4 x 4 px cells
    assert fraction.shape == (1, 16, 24) and fraction.dtype == np.float32
    assert fraction[0, :, :8].max() == 0.0  # flat, away from the seam (the structure tensor window reaches over it)
    assert fraction[0, :, 12:].min() == 1.0
