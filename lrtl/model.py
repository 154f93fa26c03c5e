"""MaskFormer-style motion segmentation model (METHOD.md §6): backbone -> FPN pixel decoder -> K queries.

    model = build_model(cfg)                      # cfg = the train params' `model` section
    out = model(normalize_images(rgb))            # rgb uint8 [B, h, w, 3] at cfg["input_size"]
    out.logits    # [B, K, h, w]   softmax over K gives the masks (out.masks)
    out.features  # [B, F, h', w'] decoder mask features, used by inference to merge K -> 2

`lrtl.checkpoint.load_checkpoint(path)` rebuilds a model from a self-describing checkpoint written by lrtl.train
(or by lrtl.convert from a reference checkpoint).

Two decoders share the FPN idea (METHOD.md §6):
- the small CPU model (`backbone.name: small`): PixelDecoder + MaskDecoder below, logits resized bilinearly;
- the paper model (a DINO backbone): the reference's computation and state layout (karazijal/lrtl `mask_former/`,
  METHOD.md §11 item 8) so that its released checkpoints convert (lrtl.convert) and load strictly:
  ReferencePixelDecoder (BigPixelDecoder's head with 1x1 convs of padding 1 and one shared GroupNorm),
  ReferenceMaskDecoder (DETR's decoder: zero target, query embedding as a positional term in every layer, sine
  position encoding on the cross-attention keys only, post-norm, a final LayerNorm), and the logits
  centre-cropped to the input size (194x354 -> 192x352).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lrtl.backbones import DINO_ARCHES, ConvNormAct, build_backbone
from lrtl.train_params import ModelParams


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


# --------------------------------------------------------------------------- the paper model (reference layout)


def reference_group_norm(channels: int) -> nn.GroupNorm:
    """detectron2's "GN" norm: 32 groups (fewer only for widths that are not a multiple of 32, test sizes)."""
    return nn.GroupNorm(math.gcd(32, channels), channels)


def conv_gn(c_in: int, c_out: int, kernel: int, act: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) -> GroupNorm -> ReLU: detectron2's Conv2d(norm="GN", activation=relu)."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False),
        reference_group_norm(c_out),
    ]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def c2_xavier_fill(module: nn.Module) -> None:
    """detectron2/fvcore's c2_xavier_fill: kaiming_uniform(a=1) weights, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class ReferencePixelDecoder(nn.Module):
    """The reference's pixel decoder (karazijal/lrtl BigPixelDecoder, METHOD.md §6 and §11 item 8).

    FPN as PixelDecoder (deepest level 3x3 conv; shallower levels 1x1 lateral + coarser output, then 3x3), then
    a mask-feature head: 3x3 -> x2 nearest -> 1x1 (padding 1) -> 3x3 -> x2 nearest -> 1x1 (padding 1) -> 3x3
    (bias, no norm). Each head conv but the last is followed by the GroupNorm of the deepest 3x3 conv and a ReLU:
    the reference shares that one norm module among five convs, and so does this module. Each 1x1 conv with
    padding 1 grows the map by 2: a g0 x g1 grid -> (4 g0 + 6) x (4 g1 + 6), 194x354 for the paper's 47x87.
    """

    def __init__(self, in_channels: Sequence[int], conv_dim: int, mask_dim: int):
        super().__init__()
        self.deepest = conv_gn(in_channels[-1], conv_dim, 3)  # its norm, deepest[1], is shared by the head
        self.laterals = nn.ModuleList(conv_gn(c, conv_dim, 1, act=False) for c in in_channels[:-1])
        self.outputs = nn.ModuleList(conv_gn(conv_dim, conv_dim, 3) for _ in in_channels[:-1])
        self.head = nn.ModuleList(
            nn.Conv2d(conv_dim, conv_dim, kernel, padding=1, bias=False) for kernel in (3, 1, 3, 1)
        )
        self.mask_out = nn.Conv2d(conv_dim, mask_dim, 3, padding=1)

    def _head_conv(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.deepest[1](self.head[index](x)))  # the shared GroupNorm

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats: [B, C_l, g0, g1] shallow -> deep -> mask features [B, mask_dim, 4 g0 + 6, 4 g1 + 6]."""
        y = self.deepest(feats[-1])  # [B, C, g0, g1]
        for level in range(len(feats) - 2, -1, -1):
            lateral = self.laterals[level](feats[level])  # [B, C, h_l, w_l]
            y = self.outputs[level](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
        y = self._head_conv(0, y)  # [B, C, g0, g1]
        y = self._head_conv(1, F.interpolate(y, scale_factor=2.0, mode="nearest"))  # [B, C, 2 g0 + 2, ...]
        y = self._head_conv(2, y)
        y = self._head_conv(3, F.interpolate(y, scale_factor=2.0, mode="nearest"))  # [B, C, 4 g0 + 6, ...]
        return self.mask_out(y)

    def reset_parameters(self) -> None:
        """The reference's init: c2_xavier_fill on the FPN convs; the head keeps PyTorch's default init (its
        intended c2_xavier_fill never matched a module name, METHOD.md §11 item 8)."""
        for block in (self.deepest, *self.laterals, *self.outputs):
            c2_xavier_fill(block[0])


def detr_sine_encoding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """MaskFormer's PositionEmbeddingSine(dim / 2, normalize=True) on an unpadded h x w map -> [h*w, dim].

    Per axis, positions 1..n are normalised to (0, 2 pi] by (n + 1e-6); channel i of the dim / 2 channels of
    an axis is sin (i even) or cos (i odd) of position / 10000^(2 floor(i / 2) / (dim / 2)). The y channels
    come first, then the x channels; tokens are row-major (y, x)."""
    if dim % 2:
        raise ValueError(f"sine position encoding needs an even width, got {dim}")
    feats = dim // 2
    index = torch.arange(feats, device=device, dtype=torch.float32)
    period = 10000.0 ** (2 * torch.div(index, 2, rounding_mode="floor") / feats)  # [feats]
    even = (torch.arange(feats, device=device) % 2 == 0)  # [feats] sin channels

    def axis(n: int) -> torch.Tensor:
        position = torch.arange(1, n + 1, device=device, dtype=torch.float32)
        position = position / (position[-1:] + 1e-6) * (2 * math.pi)
        angle = position[:, None] / period  # [n, feats]
        return torch.where(even, angle.sin(), angle.cos())

    y = axis(height)[:, None, :].expand(height, width, feats)
    x = axis(width)[None, :, :].expand(height, width, feats)
    return torch.cat([y, x], dim=2).reshape(height * width, dim)


class DetrDecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention, cross-attention to the memory, FFN; each residual then
    LayerNorm. The query embedding is added to the self-attention queries and keys and to the cross-attention
    queries; the memory's position encoding to the cross-attention keys only (values stay the memory)."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(hidden, ffn)
        self.linear2 = nn.Linear(ffn, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.norm2 = nn.LayerNorm(hidden)
        self.norm3 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(
        self, target: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor, memory_pos: torch.Tensor
    ) -> torch.Tensor:
        """target [B, K, C], memory [B, N, C], query_pos [1, K, C], memory_pos [1, N, C] -> [B, K, C]."""
        query = target + query_pos  # [B, K, C]
        attended = self.self_attn(query, query, target, need_weights=False)[0]
        target = self.norm1(target + self.dropout1(attended))
        attended = self.cross_attn(target + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        target = self.norm2(target + self.dropout2(attended))
        update = self.linear2(self.dropout(F.relu(self.linear1(target))))  # [B, K, C]
        return self.norm3(target + self.dropout3(update))


class ReferenceMaskDecoder(nn.Module):
    """The reference's transformer predictor (MaskFormer's TransformerPredictor with DETR's Transformer, 0
    encoder layers, no class head, no deep supervision): 1x1 input projection of the deepest features ->
    memory; K learned query embeddings; decoding from a zero target; final LayerNorm; 3-layer MLP -> mask
    embeddings; dot product with the mask features -> K logit maps."""

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
        self.layers = nn.ModuleList(DetrDecoderLayer(hidden, heads, ffn, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.mask_embed = nn.Sequential(
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, mask_dim),
        )

    def forward(self, deepest: torch.Tensor, mask_features: torch.Tensor) -> torch.Tensor:
        """deepest [B, D, g0, g1], mask_features [B, F, h', w'] -> logits [B, K, h', w']."""
        memory = self.input_proj(deepest)  # [B, C, g0, g1]
        batch, hidden, height, width = memory.shape
        memory_pos = detr_sine_encoding(height, width, hidden, memory.device)[None].to(memory.dtype)  # [1, N, C]
        memory = memory.flatten(2).transpose(1, 2)  # [B, N, C]
        query_pos = self.query.weight[None]  # [1, K, C]
        target = memory.new_zeros(batch, *self.query.weight.shape)  # [B, K, C] zero target
        for layer in self.layers:
            target = layer(target, memory, query_pos, memory_pos)
        embed = self.mask_embed(self.norm(target))  # [B, K, mask_dim]
        return torch.einsum("bkc,bchw->bkhw", embed, mask_features)  # [B, K, h', w']

    def reset_parameters(self) -> None:
        """The reference's init: c2_xavier_fill on the input projection, xavier_uniform on every matrix of
        the transformer decoder; the queries and the MLP keep PyTorch's default init."""
        c2_xavier_fill(self.input_proj)
        for layer in self.layers:
            for parameter in layer.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)


def crop_window(size: Sequence[int], target: Sequence[int]) -> tuple[int, int] | None:
    """(top, left) of the reference's centre crop of a `size` map to `target` (torchvision's rounding), or
    None where the reference resizes instead (a map more than 10% larger, or smaller)."""
    (h, w), (th, tw) = size, target
    if not (th <= h < 1.1 * th and tw <= w < 1.1 * tw):
        return None
    return int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))


def crop_or_resize(x: torch.Tensor, target: Sequence[int]) -> torch.Tensor:
    """[B, C, h, w] -> [B, C, *target]: centre crop when slightly larger (the reference's interpolate_or_crop),
    else bilinear resize."""
    target = (int(target[0]), int(target[1]))
    if tuple(x.shape[-2:]) == target:
        return x
    window = crop_window(x.shape[-2:], target)
    if window is None:
        return F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    top, left = window
    return x[..., top : top + target[0], left : left + target[1]]


class SegmentationModel(nn.Module):
    """Backbone -> pixel decoder -> mask decoder. A DINO backbone selects the reference decoder (the paper
    model, whose state dict lrtl.convert fills from a reference checkpoint); `small` the CPU decoder."""

    def __init__(self, cfg: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.input_size = tuple(cfg["input_size"])
        self.backbone = build_backbone(cfg["backbone"], self.input_size)
        self.reference = cfg["backbone"]["name"] in DINO_ARCHES
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
        decoder_args = (
            self.backbone.out_channels[-1],
            cfg["k"],
            cfg["hidden"],
            cfg["heads"],
            cfg["decoder_layers"],
            cfg["ffn"],
            cfg["dropout"],
            cfg["hidden"],
        )
        if self.reference:
            if n_upsample != 2:
                raise ValueError(
                    f"the paper decoder upsamples its features x4 (reference head); model.mask_stride "
                    f"{cfg['mask_stride']} needs {2**n_upsample}x (set it to the backbone stride / 4)"
                )
            self.pixel_decoder = ReferencePixelDecoder(channels, cfg["hidden"], cfg["hidden"])
            self.mask_decoder = ReferenceMaskDecoder(*decoder_args)
            self.pixel_decoder.reset_parameters()
            self.mask_decoder.reset_parameters()
        else:
            self.pixel_decoder = PixelDecoder(channels, cfg["hidden"], cfg["hidden"], n_upsample)
            self.mask_decoder = MaskDecoder(*decoder_args)
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
        if self.reference:
            # the reference centre-crops the logits (194x354 -> 192x352); the features get the same crop
            if crop_window(mask_features.shape[-2:], images.shape[-2:]) is not None:
                mask_features = crop_or_resize(mask_features, images.shape[-2:])  # [B, F, h, w]
            return ModelOutput(logits=crop_or_resize(logits, images.shape[-2:]), features=mask_features)
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


MODEL_KEYS = tuple(field.name for field in dataclasses.fields(ModelParams))  # the train params' `model` keys


def build_model(cfg: dict[str, Any]) -> SegmentationModel:
    """cfg: {backbone: {...}, k, input_size: [h, w], hidden, heads, decoder_layers, ffn, dropout, mask_stride}
    (a "checkpoint" provenance entry, as lrtl.checkpoint.load_checkpoint returns it, is ignored)."""
    missing = [key for key in MODEL_KEYS if key not in cfg]
    unknown = [key for key in cfg if key not in (*MODEL_KEYS, "checkpoint")]
    if missing or unknown:
        raise ValueError(f"model config: missing keys {missing}, unknown keys {unknown}")
    return SegmentationModel({key: cfg[key] for key in MODEL_KEYS})
