"""Parameters of a training run: the config section `train` (defaults plus one run) as frozen dataclasses.

    params = parse_params(config_train_section)   # TrainParams; an unknown or missing key is a StageError
    steps = scaled_iterations(800, n_sequences=12, for_sequences=4)   # 2400: train.iterations_for_sequences

One source for the keys of each part: lrtl.model builds from ModelParams' keys, lrtl.data reads DataParams,
lrtl.train the rest. This module imports no model, data or training code, so any of them may import it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lrtl.cli import StageError
from lrtl.params import Params


@dataclasses.dataclass(frozen=True)
class BackboneParams(Params):
    name: str  # small | dino_vitb8
    channels: tuple[int, ...]  # small: widths of the stride-2 stages
    inputs: tuple[str, ...] | None  # small: rgb and/or flow (lrtl.model_inputs); null = rgb (dino_vitb8)
    weights: str | None  # dino_vitb8: local DINO weights file (null = random, tests only)
    layers: tuple[int, ...]  # dino_vitb8: blocks whose 'key' features feed the decoder (paper 5, 7, 9, 11)
    patch_stride: int  # dino_vitb8: patch-embedding stride (paper 4)


@dataclasses.dataclass(frozen=True)
class ModelParams(Params):
    backbone: BackboneParams
    k: int  # K masks (paper 4)
    input_size: tuple[int, ...]  # [h, w] model input (paper 192x352)
    hidden: int  # decoder width (paper 256)
    heads: int  # attention heads (paper 8)
    decoder_layers: int  # transformer decoder layers (paper 6)
    ffn: int  # transformer feed-forward width (paper 2048)
    dropout: float  # transformer dropout (paper 0.1)
    mask_stride: int  # input pixels per mask-feature cell (paper ~1)


@dataclasses.dataclass(frozen=True)
class DataParams(Params):
    gaps: tuple[int, ...]  # flow gaps g of the items (paper DAVIS/STv2 (1, 2), FBMS (3, 6))
    pair_offset: int  # o: frames between the pairs of an item (paper 5)
    n_tracks: int  # N tracks per frame (paper 70000)
    context: int  # C context frames per track (paper 41)
    smooth: int  # moving-average window over time, frames (paper 11)
    min_visibility: float  # keep tracks with mean visibility > this (paper 0.1)
    flow_size: tuple[int, ...]  # [h, w] of the flow loss (paper 480x854); [] = the flow store's
    preload_flow: bool  # keep all flow fields in memory (small datasets) or read them per item (DAVIS)
    flow_clamp: float  # |flow| clamp, pixels at flow_size (paper 20 at 480x854)
    flow_confidence: bool  # weight the flow loss by forward-backward consistency (lrtl.flow_confidence; paper off)
    flow_texture: float  # weight the flow loss by the textured fraction of each cell, this min slope (0 = off)
    flip: float  # probability of the shared horizontal flip (paper 0.5)
    workers: int  # DataLoader worker processes (0 = load in the training process)
    cache_queries: int  # query frames of tracks kept in memory per process (LRU)
    sampling: str  # frame_uniform (the reference: every (sequence, gap, frame) item equally) | sequence_uniform

    @property
    def weighs_flow(self) -> bool:
        """Whether the flow loss weighs its pixels (an item carries flow_weight)."""
        return self.flow_confidence or self.flow_texture > 0


@dataclasses.dataclass(frozen=True)
class LossParams(Params):
    w_flow: float  # weight of L_flow (paper 0.03)
    w_traj: float  # weight of L_traj (paper 5e-5)
    w_temp: float  # weight of L_temp before the ramp (paper 0.1)
    rank: int  # r (paper 5)
    route: str  # gram | qr: small-factor route of L_traj (METHOD.md §12.1)
    weight_clamp: float  # mask weights clamped to [c, 1 - c] (paper 1e-6)
    track_weight: str  # none | visibility | complete: L_traj columns scaled by the track's reliability (paper none)
    traj_boost: float  # L_traj weight at step 0 as a multiple of w_traj, falling linearly to 1x (paper 1: constant)
    traj_boost_until: float  # fraction of the iterations at which the boost has fallen to 1x


@dataclasses.dataclass(frozen=True)
class OptimParams(Params):
    lr: float  # AdamW base learning rate (paper 1.5e-4)
    weight_decay: float  # (paper 0.01; 0 for norms and query embeddings)
    warmup: float  # linear warm-up length, fraction of iterations (paper 1500 / 20000 = 0.075)
    poly_power: float  # poly decay exponent (paper 0.9)
    grad_clip: float  # full-model gradient-norm clip (paper 0.01, lrtl 1.0; compat: reference forces 0.01)


@dataclasses.dataclass(frozen=True)
class ValidateParams(Params):
    every: int  # steps between validations on the annotated frames of the training sequences; 0 = never
    frames: int  # annotated frames scored, spread evenly over the training sequences with ground truth
    threshold: float  # merged soft-mask threshold at ground-truth resolution (paper 0.5, strict >)


@dataclasses.dataclass(frozen=True)
class TrainParams(Params):
    model: ModelParams
    data: DataParams
    loss: LossParams
    optim: OptimParams
    iterations: int  # optimisation steps (paper 20000)
    batch_items: int  # 4-frame items per step (paper 2 = 8 frames)
    seed: int
    deterministic: bool  # torch deterministic algorithms
    device: str  # auto | cpu | cuda
    compat: str  # fixed | reference (METHOD.md §11)
    log_every: int  # steps between metrics.jsonl lines
    checkpoint_every: int  # steps between resume checkpoints (state-dir/last.pt)
    validate: ValidateParams  # periodic validation where ground truth exists (reference: every 250 steps)


def scaled_iterations(iterations: int, n_sequences: int, for_sequences: int) -> int:
    """Optimisation steps of a run on `n_sequences` training sequences whose `iterations` were set for up to
    `for_sequences` of them: more sequences train proportionally longer (rounded up), so that each keeps its share
    of the items; fewer keep `iterations`. `for_sequences` 0: `iterations` whatever the number (paper)."""
    if for_sequences < 0 or n_sequences < 1:
        raise ValueError(f"need for_sequences >= 0 and n_sequences >= 1, got {for_sequences} and {n_sequences}")
    if for_sequences == 0 or n_sequences <= for_sequences:
        return iterations
    return math.ceil(iterations * n_sequences / for_sequences)


def parse_params(mapping: dict[str, Any]) -> TrainParams:
    try:
        params = TrainParams.from_mapping(mapping, "train")
    except (ValueError, TypeError) as err:
        raise StageError(f"--params: {err}") from err
    if params.compat not in ("fixed", "reference"):
        raise StageError(f"train.compat must be fixed or reference, got {params.compat!r}")
    if params.loss.route not in ("gram", "qr"):
        raise StageError(f"train.loss.route must be gram or qr, got {params.loss.route!r}")
    return params
