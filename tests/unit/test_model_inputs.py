"""The network's inputs (lrtl.model_inputs): the flow encoding's invariances, channel layout, backbone wiring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrtl import stores
from lrtl.backbones import build_backbone
from lrtl.model import build_model
from lrtl.model_inputs import (
    MIN_SCALE,
    encode_flow,
    in_channels,
    input_flow_field,
    input_kinds,
    model_input,
    normalize_images,
    read_input_flow,
)
from tests.conftest import tiny_model


def moving_square(height=40, width=56, camera=(0.0, 0.0), speed=(4.0, 0.0)):
    flow = np.zeros((height, width, 2), np.float32) + np.array(camera, np.float32)
    flow[10:22, 8:24] += np.array(speed, np.float32)
    return flow


def test_encoding_ignores_camera_translation_and_speed():
    base = encode_flow(moving_square(), (20, 28))
    assert base.shape == (2, 20, 28) and base.dtype == np.float32
    np.testing.assert_allclose(encode_flow(moving_square(camera=(3.0, -2.0)), (20, 28)), base, atol=1e-5)
    np.testing.assert_allclose(encode_flow(moving_square(speed=(12.0, 0.0)), (20, 28)), base, atol=1e-5)
    # the moving square stands out, the background is zero
    assert np.linalg.norm(base[:, 6:10, 5:10], axis=0).min() > 0.5 and np.abs(base[:, 15:, :]).max() == 0


def test_a_static_frame_is_not_blown_up_into_noise():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, (40, 56, 2)).astype(np.float32)
    encoded = encode_flow(noise, (40, 56))
    assert np.abs(encoded).max() < 0.05 / MIN_SCALE


def test_last_frame_takes_the_negated_backward_flow(tmp_path):
    flows = {g: np.random.default_rng(abs(g)).normal(size=(3, 8, 12, 2)).astype(np.float32) for g in (1, -1)}
    path = tmp_path / "flow.zarr"
    stores.write_flow(path, flows, backend="test")
    group = stores.open_flow(path)
    np.testing.assert_array_equal(input_flow_field(group, 0), flows[1][0])
    np.testing.assert_array_equal(input_flow_field(group, 2), -flows[-1][2])
    encoded = read_input_flow(path, (4, 6))
    assert encoded.shape == (3, 2, 4, 6)
    np.testing.assert_allclose(encoded[2], encode_flow(-flows[-1][2], (4, 6)))


def test_model_input_channels_and_order():
    rgb = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8)
    flow = torch.randn(2, 2, 8, 12)
    both = model_input(rgb, flow, ("rgb", "flow"))
    assert both.shape == (2, 5, 8, 12)
    assert torch.equal(both[:, :3], normalize_images(rgb)) and torch.equal(both[:, 3:], flow)
    assert model_input(rgb, flow, ("flow",)).shape == (2, 2, 8, 12)
    assert model_input(rgb, None, ("rgb",)).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="flow"):
        model_input(rgb, None, ("rgb", "flow"))


def test_inputs_from_the_model_cfg():
    assert input_kinds(tiny_model(backbone={"inputs": ["flow", "rgb"]})) == ("rgb", "flow")
    assert input_kinds(tiny_model(backbone={"inputs": None})) == ("rgb",)  # DINO: the workflow passes null
    assert in_channels(["rgb", "flow"]) == 5 and in_channels(["flow"]) == 2
    for bad in (["depth"], [], ["rgb", "rgb"]):
        with pytest.raises(ValueError, match="inputs"):
            in_channels(bad)


def test_small_model_takes_rgb_and_flow():
    model = build_model(tiny_model(k=3, backbone={"inputs": ["rgb", "flow"]}))
    out = model(torch.randn(2, 5, 32, 48))
    assert out.logits.shape == (2, 3, 32, 48)
    assert model.backbone.stages[0][0][0].weight.shape[1] == 5
    with pytest.raises(RuntimeError):
        model(torch.randn(2, 3, 32, 48))


def test_dino_backbone_refuses_flow_input():
    with pytest.raises(ValueError, match="RGB only"):
        build_backbone({"name": "dino_vitb8", "inputs": ["rgb", "flow"], "weights": None, "layers": [0],
                        "patch_stride": 8}, (32, 48))
