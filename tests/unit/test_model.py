"""The segmentation model: shapes, softmax, DINO backbone geometry and weights loading, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lrtl.backbones import DinoViT, build_backbone
from lrtl.checkpoint import load_checkpoint
from lrtl.cli import StageError
from lrtl.imageops import resize_rgb
from lrtl.model import build_model
from lrtl.model_inputs import normalize_images
from tests.conftest import config_section, tiny_model

TINY = tiny_model(k=3, backbone={"inputs": ["rgb"]})  # RGB model shapes; flow input: test_model_inputs.py


def test_small_model_shapes_and_softmax():
    torch.manual_seed(0)
    model = build_model(TINY)
    rgb = torch.randint(0, 256, (2, 32, 48, 3), dtype=torch.uint8)
    out = model(normalize_images(rgb))
    assert out.logits.shape == (2, 3, 32, 48)
    assert out.features.shape == (2, 16, 16, 24)  # finest stage stride 2, mask_stride 2 -> no upsampling
    masks = out.masks
    assert torch.allclose(masks.sum(1), torch.ones(2, 32, 48), atol=1e-5)
    assert (masks >= 0).all()
    out.logits.mean().backward()  # gradients reach the encoder
    assert model.backbone.stages[0][0][0].weight.grad is not None


def test_mask_stride_one_upsamples_features():
    model = build_model({**TINY, "mask_stride": 1})
    out = model(torch.randn(1, 3, 32, 48))
    assert out.features.shape[-2:] == (32, 48)


def test_bad_mask_stride_and_unknown_keys_are_rejected():
    with pytest.raises(ValueError, match="mask_stride"):
        build_model({**TINY, "mask_stride": 3})
    with pytest.raises(ValueError, match="unknown"):
        build_model({**TINY, "colour": 1})


def test_normalize_images_uint8_and_float_agree():
    rgb = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    a = normalize_images(rgb)
    b = normalize_images(rgb.float())
    assert a.shape == (2, 3, 5, 7) and a.dtype == torch.float32
    assert torch.allclose(a, b)
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    grey = mean.round().to(torch.uint8).expand(1, 4, 4, 3)
    assert normalize_images(grey).abs().max() < 0.01  # the ImageNet mean maps to ~0


def test_resize_rgb_shapes():
    rgb = np.random.default_rng(0).integers(0, 256, (3, 40, 60, 3), dtype=np.uint8)
    assert resize_rgb(rgb, (20, 30)).shape == (3, 20, 30, 3)
    assert resize_rgb(rgb, (80, 90)).shape == (3, 80, 90, 3)
    assert np.array_equal(resize_rgb(rgb, (40, 60)), rgb)


@pytest.fixture(scope="module")
def dino_random():
    """The paper backbone with random weights on a tiny input: 24x40, patch 8, stride 4 -> a 5x9 grid."""
    torch.manual_seed(0)
    return build_backbone(
        {"name": "dino_vitb8", "weights": None, "layers": [5, 7, 9, 11], "patch_stride": 4}, (24, 40)
    )


def test_dino_backbone_key_features_on_a_stride_4_grid(dino_random):
    feats = dino_random(torch.randn(2, 3, 24, 40))
    assert len(feats) == 4
    assert all(f.shape == (2, 768, 5, 9) for f in feats)
    assert dino_random.vit.patch_embed.proj.stride == (4, 4)
    assert dino_random.vit.pos_embed.shape == (1, 1 + 5 * 9, 768)
    assert not any(p.requires_grad for p in dino_random.parameters())
    dino_random.train()
    assert not dino_random.vit.training  # frozen: stays in eval mode


def test_dino_key_features_are_the_attention_keys(dino_random):
    """Block 5's feature is the 'key' slice of block 5's qkv projection of the token sequence."""
    images = torch.randn(1, 3, 24, 40)
    vit = dino_random.vit
    with torch.no_grad():
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in vit.blocks[:5]:
            x = block(x)
        qkv = vit.blocks[5].attn.qkv(vit.blocks[5].norm1(x))
    expected = qkv[0, 1:, 768:1536].T.reshape(768, 5, 9)
    assert torch.allclose(dino_random(images)[0][0], expected, atol=1e-5)


def test_dino_weights_file_is_loaded_and_missing_file_names_the_rule(tmp_path):
    import timm

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "dino_tiny.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.state_dict().items()}}, path)
    backbone = DinoViT("vit_tiny_patch16_224", str(path), [1, 3], 8, (32, 48))
    assert torch.equal(backbone.vit.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)
    assert backbone.weights_sha256 and len(backbone.weights_sha256) == 64
    feats = backbone(torch.randn(1, 3, 32, 48))
    assert [f.shape for f in feats] == [(1, 192, 3, 5)] * 2  # (32 - 16) / 8 + 1 = 3, (48 - 16) / 8 + 1 = 5
    with pytest.raises(StageError, match="download_weights") as err:
        DinoViT("vit_tiny_patch16_224", str(tmp_path / "absent.pth"), [1], 8, (32, 48))
    assert "absent.pth" in str(err.value)


def test_dino_model_does_not_checkpoint_the_frozen_backbone(tmp_path):
    cfg = {
        **TINY,
        "backbone": {"name": "dino_vitb8", "weights": None, "layers": [9, 11], "patch_stride": 4},
        "input_size": [24, 40],
        "mask_stride": 1,
    }
    model = build_model(cfg)
    out = model(torch.randn(1, 3, 24, 40))
    assert out.logits.shape == (1, 3, 24, 40)
    # the paper (reference) head: 5x9 grid -> 26x42 (two x2 upsamplings, 1x1 convs of padding 1), centre-cropped
    assert out.features.shape == (1, 16, 24, 40)
    assert not any(name.startswith("backbone.") for name in model.trainable_state_dict())


def test_load_checkpoint_round_trip(tmp_path):
    from lrtl.checkpoint import save_checkpoint  # the writer of checkpoints

    params = _tiny_params()
    torch.manual_seed(1)
    model = build_model(params.model.to_dict())
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, params, step=7)
    loaded, cfg = load_checkpoint(path)
    assert cfg["k"] == 3 and list(cfg["input_size"]) == [32, 48]
    assert cfg["checkpoint"]["step"] == 7 and cfg["checkpoint"]["lrtl_version"]
    from lrtl.model_inputs import in_channels, input_kinds

    assert input_kinds(cfg) == input_kinds(params.model.to_dict())  # the checkpoint says what the model sees
    images = torch.randn(2, in_channels(input_kinds(cfg)), 32, 48)
    model.eval()
    assert torch.equal(model(images).logits, loaded(images).logits)
    assert not loaded.training
    with pytest.raises(StageError, match="no checkpoint"):
        load_checkpoint(tmp_path / "absent.pt")


def _tiny_params():
    from lrtl.train_params import parse_params

    return parse_params(
        config_section(
            "train.defaults",
            model=tiny_model(k=3, backbone={"weights": None, "layers": []}),
            data={
                "gaps": [1],
                "pair_offset": 2,
                "n_tracks": 64,
                "context": 7,
                "smooth": 3,
                "flow_size": [],
                "workers": 0,
                "cache_queries": 8,
            },
            loss={"w_flow": 1.0, "w_traj": 1e-3, "rank": 2},
            optim={"warmup": 0.1},
            iterations=4,
            batch_items=1,
            device="cpu",
            log_every=2,
            checkpoint_every=2,
            validate={"every": 0, "frames": 0},
        )
    )


def test_paper_head_geometry_and_centre_crop():
    """The reference head at the paper's grid: 47x87 -> 194x354 mask features (1x1 convs of padding 1), then
    the reference's centre crop (torchvision rounding) to 192x352; a map >10% larger is resized instead."""
    from lrtl.model import ReferencePixelDecoder, crop_or_resize, crop_window

    decoder = ReferencePixelDecoder([8, 8], 32, 32)
    feats = [torch.randn(1, 8, 47, 87), torch.randn(1, 8, 47, 87)]
    with torch.no_grad():
        features = decoder(feats)
    assert features.shape == (1, 32, 194, 354)
    assert crop_window((194, 354), (192, 352)) == (1, 1)
    assert torch.equal(crop_or_resize(features, (192, 352)), features[..., 1:193, 1:353])
    assert crop_window((240, 354), (192, 352)) is None
    assert crop_or_resize(features, (96, 176)).shape == (1, 32, 96, 176)
    norms = [m for m in decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 1 + 2 * 1  # deepest (shared with the head) + one lateral + one output


def test_small_model_frames_are_independent_and_every_parameter_learns():
    """Per-frame computation (GroupNorm, no batch statistics): a frame's masks do not depend on the other frames
    of the batch; one backward pass reaches every trainable parameter."""
    torch.manual_seed(0)
    model = build_model(tiny_model(k=3, dropout=0.0, backbone={"inputs": ["rgb"]})).train()  # batch stats would show
    images = torch.randn(4, 3, 32, 48)
    with torch.no_grad():
        batch = model(images).logits  # [4, K, 32, 48]
        alone = torch.cat([model(images[i : i + 1]).logits for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=1e-4, atol=1e-5)
    out = model(images)
    (out.masks[:, 0] * images[:, 0]).mean().backward()  # a loss that depends on every mask pixel
    frozen = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not frozen, f"no gradient reaches {frozen}"
