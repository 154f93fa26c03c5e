"""MaskFormer-style motion segmentation model (METHOD.md §6): backbone -> FPN pixel decoder -> K queries.

    model = build_model(cfg)                      # cfg = the train params' `model` section
    out = model(normalize_images(rgb))            # rgb uint8 [B, h, w, 3] at cfg["input_size"]
    out.logits    # [B, K, h, w]   softmax over K gives the masks (out.masks)
    out.features  # [B, F, h', w'] decoder mask features, used by inference to merge K -> 2

`load_checkpoint(path)` rebuilds a model from a self-describing checkpoint written by lrtl.train.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrtl.backbones import ConvNormAct, build_backbone
from lrtl.cli import StageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = "lrtl-checkpoint-1"


def resize_rgb(rgb: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 [T, H, W, 3] -> uint8 [T, h, w, 3], bicubic as the reference (METHOD.md §9 step 1).

    Shared by training and inference so that both see identically resized frames (cv2 saturates to 0..255).
    """
    height, width = int(size[0]), int(size[1])
    if rgb.shape[1:3] == (height, width):
        return np.ascontiguousarray(rgb)
    return np.stack([cv2.resize(frame, (width, height), interpolation=cv2.INTER_CUBIC) for frame in rgb])


def normalize_images(rgb: torch.Tensor) -> torch.Tensor:
    """RGB [B, H, W, 3] in 0..255 (uint8 or float) -> float32 [B, 3, H, W] with ImageNet mean/std."""
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"normalize_images expects [B, H, W, 3], got {tuple(rgb.shape)}")
    images = rgb.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, H, W]
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images - mean) / std).contiguous()


class ModelOutput(NamedTuple):
    logits: torch.Tensor  # [B, K, h, w] at the model input size
    features: torch.Tensor  # [B, F, h', w'] mask features

    @property
    def masks(self) -> torch.Tensor:
        """Softmax over the K masks, [B, K, h, w]."""
        return self.logits.softmax(dim=1)


class PixelDecoder(nn.Module):
    """FPN (MaskFormer's BasePixelDecoder): deepest level 3x3 conv; each shallower level 1x1 lateral +
    upsampled coarser output, then a 3x3 conv. A head of `n_upsample` x2 nearest upsamplings with 3x3 convs,
    then a 3x3 conv, gives the mask features. One GroupNorm per conv (METHOD.md §11 item 8)."""

    def __init__(self, in_channels: Sequence[int], conv_dim: int, mask_dim: int, n_upsample: int):
        super().__init__()
        self.deepest = ConvNormAct(in_channels[-1], conv_dim, 3)
        self.laterals = nn.ModuleList(ConvNormAct(c, conv_dim, 1, act=False) for c in in_channels[:-1])
        self.outputs = nn.ModuleList(ConvNormAct(conv_dim, conv_dim, 3) for _ in in_channels[:-1])
        self.upsample = nn.ModuleList(ConvNormAct(conv_dim, conv_dim, 3) for _ in range(n_upsample))
        self.mask_out = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.deepest(feats[-1])  # [B, C, h_L, w_L]
        for level in range(len(feats) - 2, -1, -1):
            lateral = self.laterals[level](feats[level])  # [B, C, h_l, w_l]
            if y.shape[-2:] != lateral.shape[-2:]:
                y = F.interpolate(y, size=lateral.shape[-2:], mode="nearest")
            y = self.outputs[level](lateral + y)
        for conv in self.upsample:
            y = conv(F.interpolate(y, scale_factor=2.0, mode="nearest"))
        return self.mask_out(y)  # [B, mask_dim, h', w']


def sine_position_encoding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR's 2-D sine encoding (normalised coordinates, temperature 1e4) -> [h*w, dim]."""
    quarter = dim // 4
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 * math.pi
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 * math.pi
    freqs = 10000.0 ** (-torch.arange(quarter, device=device, dtype=torch.float32) / max(quarter, 1))
    y = ys[:, None] * freqs  # [h, q]
    x = xs[:, None] * freqs  # [w, q]
    y = torch.cat([y.sin(), y.cos()], dim=1)[:, None, :].expand(height, width, 2 * quarter)
    x = torch.cat([x.sin(), x.cos()], dim=1)[None, :, :].expand(height, width, 2 * quarter)
    pos = torch.cat([y, x], dim=2).reshape(height * width, 4 * quarter)
    return F.pad(pos, (0, dim - 4 * quarter))


class MaskDecoder(nn.Module):
    """DETR-style transformer decoder (0 encoder layers, post-norm) over the deepest backbone level; each of
    the K learned queries -> 3-layer MLP -> mask embedding; its dot product with the mask features -> one
    logit map."""

    def __init__(
        self,
        in_channels: int,
        k: int,
        hidden: int,
        heads: int,
        layers: int,
        ffn: int,
        dropout: float,
        mask_dim: int,
    ):
        super().__init__()
        self.input_proj = nn.Conv2d(in_channels, hidden, 1)
        self.query = nn.Embedding(k, hidden)
        layer = nn.TransformerDecoderLayer(hidden, heads, ffn, dropout, batch_first=True, norm_first=False)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(hidden))
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, mask_dim),
        )

    def forward(self, deepest: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        memory = self.input_proj(deepest)  # [B, hidden, h_L, w_L]
        batch, hidden, height, width = memory.shape
        pos = sine_position_encoding(height, width, hidden, memory.device)  # [h_L*w_L, hidden]
        memory = memory.flatten(2).transpose(1, 2) + pos  # [B, h_L*w_L, hidden]
        queries = self.query.weight.unsqueeze(0).expand(batch, -1, -1)  # [B, K, hidden]
        embed = self.mask_embed(self.decoder(queries, memory))  # [B, K, mask_dim]
        return torch.einsum("bkc,bchw->bkhw", embed, mask_features)  # [B, K, h', w']


class SegmentationModel(nn.Module):
    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.input_size = tuple(cfg["input_size"])
        self.backbone = build_backbone(cfg["backbone"], self.input_size)
        # FPN over the backbone levels at least as coarse as mask_stride; x2 upsamplings below those
        strides = self.backbone.strides
        self.levels = [i for i, stride in enumerate(strides) if stride >= cfg["mask_stride"]] or [
            len(strides) - 1
        ]
        finest = strides[self.levels[0]]
        n_upsample = int(round(math.log2(finest / cfg["mask_stride"])))
        if n_upsample < 0 or 2**n_upsample * cfg["mask_stride"] != finest:
            raise ValueError(
                f"model.mask_stride {cfg['mask_stride']} must be a backbone stride {strides} divided "
                f"by a power of 2"
            )
        channels = [self.backbone.out_channels[i] for i in self.levels]
        self.pixel_decoder = PixelDecoder(channels, cfg["hidden"], cfg["hidden"], n_upsample)
        self.mask_decoder = MaskDecoder(
            self.backbone.out_channels[-1],
            cfg["k"],
            cfg["hidden"],
            cfg["heads"],
            cfg["decoder_layers"],
            cfg["ffn"],
            cfg["dropout"],
            cfg["hidden"],
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier init of the decoder convs and linears (the reference meant to but never did, §11.8)."""
        for name, module in self.named_modules():
            if name.startswith("backbone") and getattr(self.backbone, "frozen", False):
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not name.startswith("mask_decoder.decoder"):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """images [B, 3, h, w] normalised (normalize_images) at input_size -> ModelOutput."""
        feats = self.backbone(images)  # list of [B, C_i, h_i, w_i]
        mask_features = self.pixel_decoder([feats[i] for i in self.levels])  # [B, F, h', w']
        logits = self.mask_decoder(feats[-1], mask_features)  # [B, K, h', w']
        if logits.shape[-2:] != images.shape[-2:]:
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ModelOutput(logits=logits, features=mask_features)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without a frozen backbone (its weights come from their own file, METHOD.md §6)."""
        frozen = getattr(self.backbone, "frozen", False)
        return {
            name: value
            for name, value in self.state_dict().items()
            if not (frozen and name.startswith("backbone."))
        }


MODEL_KEYS = (
    "backbone",
    "k",
    "input_size",
    "hidden",
    "heads",
    "decoder_layers",
    "ffn",
    "dropout",
    "mask_stride",
)


def build_model(cfg: dict[str, Any]) -> SegmentationModel:
    """cfg: {backbone: {...}, k, input_size: [h, w], hidden, heads, decoder_layers, ffn, dropout, mask_stride}
    (a "checkpoint" provenance entry, as load_checkpoint returns it, is ignored)."""
    missing = [key for key in MODEL_KEYS if key not in cfg]
    unknown = [key for key in cfg if key not in (*MODEL_KEYS, "checkpoint")]
    if missing or unknown:
        raise ValueError(f"model config: missing keys {missing}, unknown keys {unknown}")
    return SegmentationModel({key: cfg[key] for key in MODEL_KEYS})


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, dict[str, Any]]:
    """A checkpoint written by lrtl.train -> (model in eval mode on `device`, model cfg incl. input_size, k).

    The cfg also carries the checkpoint's provenance under "checkpoint" (step, lrtl version, git sha,
    params)."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"{path}: no checkpoint here; train it with the pipeline (snakemake {path})")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise StageError(f"{path}: not an lrtl checkpoint of format {CHECKPOINT_FORMAT}; retrain it")
    cfg = dict(checkpoint["model_cfg"])
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(checkpoint["model"], strict=False)
    frozen_prefix = "backbone." if getattr(model.backbone, "frozen", False) else None
    missing = [name for name in missing if not (frozen_prefix and name.startswith(frozen_prefix))]
    if missing or unexpected:
        raise StageError(
            f"{path}: checkpoint does not match its model cfg (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]})"
        )
    model.to(device).eval()
    cfg["checkpoint"] = {
        key: checkpoint.get(key)
        for key in (
            "step", "lrtl_version", "git_sha", "params", "torch_version", "backbone_sha256", "validation", "selected_on"
        )
    }
    return model, cfg
