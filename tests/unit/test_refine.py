"""lrtl.refine: the guided filter against its definition, and edge-aware upsampling of a coarse mask."""

import numpy as np
from scipy import ndimage

from lrtl import metrics
from lrtl.imageops import upsample
from lrtl.refine import guided_filter, refine_merged


def test_a_flat_guide_leaves_the_mean_of_the_window_means():
    # with a constant guide every window's slope is 0, so the output is the box mean of the box means
    rng = np.random.default_rng(0)
    source = rng.random((30, 40)).astype(np.float32)
    out = guided_filter(np.full((30, 40), 0.5, np.float32), source, radius=2, eps=1e-3)
    twice = ndimage.uniform_filter(ndimage.uniform_filter(source.astype(np.float64), 5, mode="reflect"), 5,
                                   mode="reflect")
    np.testing.assert_allclose(out, twice, atol=1e-5)


def test_the_guide_filtered_by_itself_is_kept_with_a_small_ridge():
    guide = np.zeros((40, 60), np.float32)
    guide[:, 25:] = 1.0  # a vertical step edge
    guide += np.random.default_rng(1).normal(0, 0.01, guide.shape).astype(np.float32)
    out = guided_filter(guide, guide, radius=4, eps=1e-6)
    assert np.abs(out - guide).max() < 0.02
    # a box filter of the same radius blurs the step over 9 columns
    assert np.abs(ndimage.uniform_filter(guide, 9, mode="reflect") - guide).max() > 0.3


def test_a_coarse_mask_refined_with_the_frame_lands_on_the_object():
    height, width, cell = 120, 200, 10
    yy, xx = np.mgrid[:height, :width]
    disc = (yy - 57) ** 2 + (xx - 83) ** 2 < 31**2  # the object, off the coarse grid
    rng = np.random.default_rng(2)
    rgb = np.where(disc[..., None], 60, 190) + rng.normal(0, 6, (height, width, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    coarse = disc.reshape(height // cell, cell, width // cell, cell).mean(axis=(1, 3)).astype(np.float32)
    merged = np.stack([coarse, 1 - coarse])  # [2, 12, 20]: what a model with 10 px cells predicts at best
    refined = refine_merged(merged, rgb, radius=cell, eps=1e-3)  # [2, H, W]
    bilinear = upsample(merged, height, width)
    j_refined = metrics.jaccard(refined[0] > 0.5, disc, 1.0)
    j_bilinear = metrics.jaccard(bilinear[0] > 0.5, disc, 1.0)
    assert refined.shape == (2, height, width) and j_refined > 0.97 and j_refined > j_bilinear + 0.02, (
        j_refined, j_bilinear)
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-4)
