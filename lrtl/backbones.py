"""Image backbones of the segmentation model: a small conv encoder (CPU default) and frozen DINO ViT-B/8.

Both return a list of feature maps ordered shallow -> deep, each [B, C_i, h_i, w_i], and expose
`out_channels` (C_i per level) and `strides` (nominal input pixels per feature cell per level).

- `small`: trained from scratch with the decoder (METHOD.md §13); stage i has stride 2**(i+1).
- `dino_vitb8`: the paper's backbone (METHOD.md §6): timm `vit_base_patch8_224`, DINO weights from a local
  file, patch-embedding stride 4 (overlapping patches; position embeddings interpolated bicubically by DINO's
  scale factor (g + 0.1) / 28, as the reference's ViT extractor), 'key' facet of blocks 5/7/9/11, completely
  frozen (no grad, always eval, not checkpointed). Key channels are laid out head-major (h * head_dim + d, the
  qkv projection's own order); the reference lays them out d * heads + h, which `lrtl.convert` permutes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrtl.cli import StageError
from lrtl.model_inputs import in_channels
from lrtl.runtime import file_sha256

log = logging.getLogger(__name__)

# backbone name -> (timm architecture, constructor overrides); DINO's ViT matches timm's parameter names.
# Tests narrow the ViT through the overrides (e.g. {"embed_dim": 24, "num_heads": 3}) to keep the code path.
DINO_ARCHES: dict[str, tuple[str, dict[str, Any]]] = {"dino_vitb8": ("vit_base_patch8_224", {})}


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 2 channels each (MaskFormer uses 32 groups of 256)."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= 2 or g == 1)
    return nn.GroupNorm(groups, channels)


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int = 3, stride: int = 1, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
            group_norm(c_out),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SmallEncoder(nn.Module):
    """Stages of [3x3 conv stride 2, 3x3 conv], GroupNorm + ReLU; stage i outputs stride 2**(i+1)."""

    def __init__(self, channels: Sequence[int], in_channels: int = 3):
        super().__init__()
        if not channels:
            raise ValueError("small backbone: channels must list at least one stage width")
        stages, c_in = [], in_channels
        for c_out in channels:
            stages.append(nn.Sequential(ConvNormAct(c_in, c_out, 3, 2), ConvNormAct(c_out, c_out, 3, 1)))
            c_in = c_out
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(channels)
        self.strides = [2 ** (i + 1) for i in range(len(channels))]
        self.frozen = False

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images [B, in_channels, h, w] (lrtl.model_inputs) -> [B, C_i, h / 2**(i+1), w / 2**(i+1)] per stage."""
        feats, x = [], images
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


def _dino_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap DINO checkpoint dicts ('teacher', 'state_dict', 'model'); strip wrapper prefixes."""
    for key in ("teacher", "state_dict", "model"):
        if isinstance(raw, dict) and key in raw and isinstance(raw[key], dict):
            raw = raw[key]
    if not isinstance(raw, dict):
        raise StageError(f"{path}: not a state dict of a DINO ViT")
    state = {}
    for name, value in raw.items():
        for prefix in ("module.", "backbone."):
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if not name.startswith("head."):
            state[name] = value
    return state


class DinoViT(nn.Module):
    """Frozen DINO ViT with a reduced patch stride; returns the 'key' features of selected blocks.

    forward(images [B, 3, h, w]) -> list of [B, D, gh, gw], gh = (h - P) // stride + 1 (P: patch size), one
    per entry of `layers` in increasing order. 192x352 input, P = 8, stride 4 -> a 47x87 grid (METHOD.md §6).
    """

    def __init__(
        self,
        arch: str,
        weights: str | None,
        layers: Sequence[int],
        patch_stride: int,
        input_size: Sequence[int],
        arch_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__()
        import timm  # only this backbone needs timm; importing lrtl.model stays cheap without it

        with torch.device("meta"):  # no time spent on an init that the weights replace
            vit = timm.create_model(arch, pretrained=False, num_classes=0, **(arch_kwargs or {}))
        if weights is None:
            log.warning("%s backbone with RANDOM weights (weights: null); only tests should do this", arch)
            vit.to_empty(device="cpu")
            _random_init(vit)
            self.weights_sha256 = None
        else:
            path = Path(weights)
            if not path.is_file():
                raise StageError(
                    f"{path}: DINO weights file not found; run `snakemake download_weights` (the "
                    f"download_weights rule) on a machine with internet, or copy the file there, or point "
                    f"train.*.model.backbone"
                    f".weights at it"
                )
            state = _dino_state_dict(torch.load(path, map_location="cpu", weights_only=True), path)
            missing, unexpected = vit.load_state_dict(state, strict=False, assign=True)
            if missing or unexpected:
                raise StageError(
                    f"{path}: does not match {arch} (missing {missing[:5]}, unexpected {unexpected[:5]})"
                )
            self.weights_sha256 = file_sha256(path)
            log.info("loaded %s weights from %s (sha256 %s)", arch, path, self.weights_sha256)
        self.patch = vit.patch_embed.patch_size[0]
        self.stride = patch_stride
        height, width = input_size
        grid = ((height - self.patch) // patch_stride + 1, (width - self.patch) // patch_stride + 1)
        _set_patch_stride(vit, patch_stride, (height, width), grid)
        self.grid = grid
        self.layers = sorted(layers)
        if self.layers[-1] >= len(vit.blocks):
            raise ValueError(f"{arch} has {len(vit.blocks)} blocks; layers {self.layers} out of range")
        vit.blocks = vit.blocks[: self.layers[-1] + 1]  # later blocks are never used
        self.vit = vit
        for parameter in self.vit.parameters():
            parameter.requires_grad_(False)
        self.vit.eval()
        self.dim = vit.embed_dim
        self.heads = vit.blocks[0].attn.num_heads  # key channel c = head * (dim // heads) + d
        self.out_channels = [self.dim] * len(self.layers)
        self.strides = [patch_stride] * len(self.layers)
        self.frozen = True

    def train(self, mode: bool = True) -> DinoViT:
        super().train(mode)
        self.vit.eval()  # frozen: dropout/drop-path stay off even while the decoder trains
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        vit = self.vit
        batch = images.shape[0]
        x = vit.patch_embed(images)  # [B, gh*gw, D]
        x = vit._pos_embed(x)  # [B, 1 + gh*gw, D] (cls token prepended)
        x = vit.norm_pre(x)
        feats = []
        for index, block in enumerate(vit.blocks):
            if index in self.layers:
                qkv = block.attn.qkv(block.norm1(x))  # [B, 1 + G, 3D]: q | k | v, heads concatenated
                key = qkv[:, 1:, self.dim : 2 * self.dim]  # [B, G, D] 'key' facet without the cls token
                feats.append(key.transpose(1, 2).reshape(batch, self.dim, *self.grid))
            x = block(x)
        return feats


def _random_init(vit: nn.Module) -> None:
    """Cheap random weights for tests: N(0, 0.02) matrices, zero biases, unit norm scales."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in vit.named_parameters():
            if parameter.ndim <= 1:
                parameter.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
            else:
                parameter.normal_(0.0, 0.02, generator=generator)


def _set_patch_stride(vit: nn.Module, stride: int, size: tuple[int, int], grid: tuple[int, int]) -> None:
    """Overlapping patches: conv stride -> `stride`; position embeddings bicubically interpolated to `grid`.

    The interpolation uses DINO's scale factor (g + 0.1) / old per axis (not the target size), as DINO's
    `interpolate_pos_encoding` patched by the reference's ViT extractor does: with align_corners=False the
    sampling positions depend on the scale, so this is what the DINO features of the reference are."""
    embed = vit.patch_embed
    embed.proj.stride = (stride, stride)
    embed.img_size = size
    embed.grid_size = grid
    embed.num_patches = grid[0] * grid[1]
    embed.strict_img_size = False
    embed.dynamic_img_pad = False
    pos = vit.pos_embed.data  # [1, prefix + g0*g1, D]
    prefix = pos.shape[1] - int(round(math.sqrt(pos.shape[1] - 1))) ** 2
    old = int(round(math.sqrt(pos.shape[1] - prefix)))
    patch_pos = pos[:, prefix:].reshape(1, old, old, -1).permute(0, 3, 1, 2)  # [1, D, old, old]
    if tuple(grid) != (old, old) or size[0] != size[1]:  # DINO keeps them as they are only in this case
        scale = ((grid[0] + 0.1) / old, (grid[1] + 0.1) / old)
        patch_pos = F.interpolate(
            patch_pos, scale_factor=scale, mode="bicubic", align_corners=False, recompute_scale_factor=False
        )  # [1, D, g0, g1]
    if tuple(patch_pos.shape[-2:]) != tuple(grid):
        raise ValueError(f"position embeddings {old}x{old} -> {tuple(patch_pos.shape[-2:])}, expected {grid}")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    vit.pos_embed = nn.Parameter(torch.cat([pos[:, :prefix], patch_pos], dim=1), requires_grad=False)
    if hasattr(vit, "dynamic_img_size"):
        vit.dynamic_img_size = False


def build_backbone(cfg: dict[str, Any], input_size: Sequence[int]) -> nn.Module:
    """cfg = model.backbone: {name: small, channels, inputs} or {name: dino_vitb8, weights, layers, patch_stride}
    (inputs: lrtl.model_inputs; absent or null = RGB only)."""
    name = cfg["name"]
    inputs = cfg.get("inputs") or ["rgb"]
    if name == "small":
        return SmallEncoder(cfg["channels"], in_channels(inputs))
    if list(inputs) != ["rgb"]:
        raise ValueError(f"backbone {name} takes RGB only; model.backbone.inputs {list(inputs)} needs the small one")
    if name in DINO_ARCHES:
        arch, arch_kwargs = DINO_ARCHES[name]
        return DinoViT(arch, cfg["weights"], cfg["layers"], cfg["patch_stride"], input_size, arch_kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose small or {', '.join(DINO_ARCHES)}")
