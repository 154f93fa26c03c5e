"""Inference: K soft masks per frame and the label-free merge K -> 2 (METHOD.md §9 steps 1-2).

    python -m lrtl.infer --model model.pt --frames F.zarr [--flow FLOW.zarr] --params '<json of config infer>' \
        [--settings '<json of its run settings>'] --run NAME --out masks.zarr

--flow is needed (and read) by a model that takes optical flow as input (lrtl.model_inputs) and by the motion
merge (`merge_features: motion`). Pictures of the masks are their own job (lrtl.pictures).

`Predictor` owns everything between a frames array and masks: resizing to the checkpoint's input size
(lrtl.imageops.resize_rgb, shared with training), ImageNet normalisation (lrtl.model_inputs.normalize_images),
the no-grad scope, batching, the device, and the merge. By features (decoder, dino_vits8):

1. per mask k, the soft-mask-weighted mean of the merge features, L2-normalised;
2. affinity = cosine similarity clamped at >= 1e-6;
3. scikit-learn SpectralClustering(2, affinity='precomputed', random_state=0);
4. each merged mask = sum of the soft masks of its group.

Merge features (`merge_features`): `dino_vits8` = block-11 'key' features of a frozen DINO ViT-S/8 with patch
stride 4 (paper setting, weights from a local file), or `decoder` = the model's own mask features, both bilinearly
upsampled to the mask resolution. K == 2 is the identity.

`motion` (CPU default) groups the masks by how they move instead of how they look: each mask's soft-weighted mean
residual speed against the camera in the frame's optical flow (`motion_residual`: lmeds, minus the dominant affine
motion, or epipolar, the distance from the epipolar lines; lrtl.camera, lrtl.model_inputs), then the
two-group split of log(speed + MOTION_FLOOR_PX) with the largest between-group variance, masses as weights
(Otsu's criterion); group 0 is the faster group, the foreground. A mask less than `motion_texture.min_fraction`
textured (lrtl.flow_fill.textured_fraction) counts as still (untextured_still): its flow is its neighbours'.
Appearance features group an object with a background part that looks like it; on the synthetic default with a
flow-input net the decoder-feature merge scored J 59.7 where the best subset of the same masks scored 95.0 (motion:
95.0).

With `refine.radius` > 0 the merged masks are stored at the frames-store resolution, upsampled edge-aware with the
frame as guide (lrtl.refine); the K soft masks stay at the model's size.

Degenerate frames: a mask with total soft mass below `MIN_MASS` pixels counts as empty and joins group 1;
with at most one non-empty mask everything non-empty is group 0; with exactly two, one group each; if
spectral clustering puts every mask in one group, the mask least similar to the others is split off.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lrtl.backbones import DinoViT
from lrtl.camera import RESIDUAL_MODELS
from lrtl.checkpoint import load_checkpoint
from lrtl.cli import StageError, add_settings_argument, json_params, run_stage
from lrtl.flow_confidence import read_trust
from lrtl.flow_fill import textured_fraction
from lrtl.imageops import resize_rgb
from lrtl.model_inputs import (
    input_flow_of,
    input_kinds,
    model_input,
    normalize_images,
    read_motion,
    residual_speed_of,
)
from lrtl.params import Params
from lrtl.refine import refine_merged
from lrtl.runtime import resolve_device
from lrtl.settings import merge_settings
from lrtl.stores import open_store, read_rgb, write_masks

log = logging.getLogger(__name__)

MIN_MASS = 1.0  # a soft mask with less total mass (in pixels) than this is treated as empty
MERGE_FEATURES = ("motion", "decoder", "dino_vits8")
MOTION_FLOOR_PX = 0.1  # px at the model input size added to mask speeds before the log: slower counts as still
DINO_MERGE_ARCH = "vit_small_patch8_224"  # DINO ViT-S/8 uses timm's ViT-S/8 parameter names
DINO_MERGE_LAYER = 11  # last block of ViT-S (12 blocks)


@dataclasses.dataclass(frozen=True)
class RefineParams(Params):
    radius: int  # guided-filter window radius, px at the frames-store resolution; 0 = off (lrtl.refine)
    eps: float  # guided-filter ridge on the slope (grey levels 0..1)


@dataclasses.dataclass(frozen=True)
class TextureGateParams(Params):
    min_slope: float  # grey levels (0..1) per px: a pixel is textured from this texture strength (lrtl.flow_fill)
    min_fraction: float  # a mask with a smaller textured fraction counts as still; 0 = off


@dataclasses.dataclass(frozen=True)
class InferParams(Params):
    device: str  # auto | cpu | cuda
    batch_size: int  # frames per forward pass
    merge_features: str  # motion | decoder | dino_vits8
    dino_weights: str | None  # local DINO ViT-S/8 weights file (dino_vits8 only); null = random (tests only)
    dino_patch_stride: int  # patch-embedding stride of the merge ViT, pixels (paper 4)
    refine: RefineParams  # edge-aware upsampling of the merged masks to the frames store
    motion_trust: bool  # motion merge: weight each pixel's speed by its flow's forward-backward consistency
    motion_residual: str  # motion merge: speed against an affine camera (lmeds) or off the epipolar lines (epipolar)
    motion_texture: TextureGateParams  # motion merge: a mask mostly without texture counts as still


# --------------------------------------------------------------------------- merge (pure functions)


def mask_features(soft: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-mask-weighted mean feature per mask, L2-normalised, and the masks' mass.

    soft [B, K, h, w]; features [B, F, h', w'] (bilinearly upsampled to h, w here)
    -> (mean features [B, K, F], mass [B, K] in pixels).
    """
    if features.shape[-2:] != soft.shape[-2:]:
        features = F.interpolate(features, size=soft.shape[-2:], mode="bilinear", align_corners=False)
    mass = soft.sum(dim=(-2, -1))  # [B, K]
    summed = torch.einsum("bkhw,bfhw->bkf", soft, features)  # [B, K, F]
    mean = summed / mass.clamp_min(1e-12)[..., None]
    return F.normalize(mean, dim=-1), mass


def affinity(features: np.ndarray) -> np.ndarray:
    """Cosine affinity of L2-normalised features [K, F] -> [K, K], clamped at >= 1e-6."""
    return np.clip(features @ features.T, 1e-6, None)


def live_masks(mass: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices of the non-empty masks of mass [K], and the groups int [K] when they leave nothing to cluster
    (at most two non-empty masks), else None. Empty masks join group 1."""
    groups = np.ones(len(mass), dtype=np.int64)
    live = np.flatnonzero(mass >= MIN_MASS)
    if len(live) <= 1:
        groups[live] = 0
        return live, groups
    if len(live) == 2:
        groups[live] = [0, 1]
        return live, groups
    return live, None


def merge_groups(features: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Group (0 or 1) of each of K masks from normalised mean features [K, F] and mass [K] -> int [K]."""
    live, groups = live_masks(mass)
    if groups is not None:
        return groups
    from sklearn.cluster import SpectralClustering

    matrix = affinity(features[live].astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected" on near-block-diagonal affinities
        labels = SpectralClustering(2, affinity="precomputed", random_state=0).fit_predict(matrix)
    if labels.min() == labels.max():  # one cluster: split off the mask least similar to the rest
        labels = np.zeros(len(live), dtype=np.int64)
        labels[np.argmin(matrix.sum(axis=1) - np.diag(matrix))] = 1
    groups = np.ones(len(mass), dtype=np.int64)
    groups[live] = labels
    return groups


def mask_speeds(soft: np.ndarray, speed: np.ndarray, trust: np.ndarray | None = None) -> np.ndarray:
    """Mean residual speed of each soft mask: soft [B, K, h, w], speed [B, h, w] px, optional trust [B, h, w] in
    [0, 1] weighting each pixel (lrtl.flow_confidence.read_trust) -> [B, K]. A mask with no trusted pixel is still
    (speed 0): motion that cannot be trusted never makes a mask move."""
    weighted = soft if trust is None else soft * trust[:, None]  # [B, K, h, w]
    total = weighted.sum(axis=(-2, -1))  # [B, K]
    return np.einsum("bkhw,bhw->bk", weighted, speed) / np.maximum(total, 1e-12)


def untextured_still(speed: np.ndarray, soft: np.ndarray, textured: np.ndarray, min_fraction: float) -> np.ndarray:
    """Mask speeds [B, K] with those of the masks soft [B, K, h, w] whose textured fraction (textured [B, h, w] in
    [0, 1], lrtl.flow_fill.textured_fraction) is below min_fraction set to 0 -> [B, K].

    Flow has no evidence on a flat region (a clear sky, a white wall): whatever DIS or the texture fill puts there
    comes from the textured pixels around it, often a moving object's. A mask that is mostly such a region cannot be
    shown to move, so it counts as still."""
    fraction = mask_speeds(soft, textured)  # [B, K]: the same soft-weighted mean per mask, of the textured map
    return np.where(fraction < min_fraction, 0.0, speed)


def motion_groups(speed: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Group of each of K masks from their mean residual speed [K] (px) and mass [K] -> int [K]; group 0 moves.

    The split of the sorted log(speed + MOTION_FLOOR_PX) with the largest mass-weighted between-group variance.
    """
    live, groups = live_masks(mass)
    if groups is not None:
        if len(live) == 2:  # the faster of two masks is group 0
            groups[live] = 1
            groups[live[np.argmax(speed[live])]] = 0
        return groups
    value, weight = np.log(speed[live] + MOTION_FLOOR_PX), mass[live]
    order = np.argsort(value)
    best, fast = -1.0, order[-1:]
    for cut in range(1, len(order)):
        slow_idx, fast_idx = order[:cut], order[cut:]
        w_slow, w_fast = weight[slow_idx].sum(), weight[fast_idx].sum()
        mean_slow = (value[slow_idx] * weight[slow_idx]).sum() / w_slow
        mean_fast = (value[fast_idx] * weight[fast_idx]).sum() / w_fast
        between = w_slow * w_fast * (mean_fast - mean_slow) ** 2
        if between > best:
            best, fast = between, fast_idx
    groups = np.ones(len(mass), dtype=np.int64)
    groups[live[fast]] = 0
    return groups


def merge_masks(soft: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Sum the soft masks [K, h, w] of each group -> merged [2, h, w]."""
    return np.stack([soft[groups == g].sum(axis=0) for g in (0, 1)])


# --------------------------------------------------------------------------- predictor


class DinoMergeFeatures(torch.nn.Module):
    """Block-11 'key' features of a frozen DINO ViT-S/8 at patch stride `stride`: [B, 3, h, w] -> [B,
    384, gh, gw]."""

    def __init__(self, weights: str | None, stride: int, input_size: Sequence[int]):
        super().__init__()

        if weights is not None and not Path(weights).is_file():
            raise StageError(
                f"{weights}: DINO ViT-S/8 weights file not found (infer.dino_weights, needed by "
                f"merge_features: dino_vits8); run `snakemake download_weights` on a machine with internet "
                f"or copy the file there"
            )
        self.vit = DinoViT(DINO_MERGE_ARCH, weights, [DINO_MERGE_LAYER], stride, input_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.vit(images)[0]


class Predictor:
    """No-grad K-mask prediction and K -> 2 merge for frames at any resolution.

    model: called as model(inputs [B, C, h, w], lrtl.model_inputs.model_input) -> object with .logits
    [B, K, h, w] and .features [B, F, h', w']; input_size: (h, w) the model was trained at; inputs: what the
    model sees, ("rgb",) and/or "flow".
    """

    def __init__(
        self,
        model: torch.nn.Module,
        input_size: Sequence[int],
        device: torch.device,
        batch_size: int,
        merge_backbone: torch.nn.Module | None = None,
        inputs: Sequence[str] = ("rgb",),
    ):
        self.model = model.to(device).eval()
        self.inputs = tuple(inputs)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.device = device
        self.batch_size = batch_size
        self.merge_backbone = None if merge_backbone is None else merge_backbone.to(device).eval()

    @torch.no_grad()
    def predict(
        self,
        rgb: np.ndarray,
        flow: np.ndarray | None = None,
        speed: np.ndarray | None = None,
        trust: np.ndarray | None = None,
        textured: np.ndarray | None = None,
        min_textured: float = 0.0,
    ) -> dict[str, np.ndarray]:
        """rgb uint8 [T, H, W, 3] (and, for a model that takes flow, its encoded flow float32 [T, 2, h, w] at the
        input size, lrtl.model_inputs.read_input_flow) -> soft float32 [T, K, h, w], merged float32
        [T, 2, h, w], groups int [T, K]. With `speed`, the residual speed maps float32 [T, h, w] at the input size
        (lrtl.model_inputs.read_residual_speed), the masks are merged by motion (motion_groups), else by features;
        `trust` float32 [T, h, w] in [0, 1] (lrtl.flow_confidence) weights each pixel's speed in its masks' mean, so
        that a mask whose flow cannot be trusted (sky, occlusions) counts as still; a mask whose fraction of
        `textured` pixels float32 [T, h, w] (lrtl.flow_fill.textured_fraction) is below `min_textured` counts as
        still (untextured_still)."""
        if "flow" in self.inputs and (flow is None or len(flow) != len(rgb)):
            raise StageError(f"the model takes optical flow as input: give the flow of all {len(rgb)} frames")
        if speed is not None and speed.shape != (len(rgb), *self.input_size):
            raise StageError(
                f"motion merge: speed maps {speed.shape} do not match {len(rgb)} frames at {self.input_size}"
            )

        soft_all, merged_all, groups_all = [], [], []
        starts = range(0, len(rgb), self.batch_size)
        for start in tqdm(starts, desc="infer", unit="batch", disable=None):
            batch = resize_rgb(rgb[start : start + self.batch_size], self.input_size)  # [B, h, w, 3]
            rgb_batch = torch.from_numpy(batch).to(self.device)  # [B, h, w, 3]
            flow_batch = None if flow is None else torch.from_numpy(flow[start : start + self.batch_size])
            out = self.model(model_input(rgb_batch, flow_batch, self.inputs))  # input [B, C, h, w]
            logits = out.logits.float()  # [B, K, h, w]
            if logits.shape[-2:] != self.input_size:
                logits = F.interpolate(logits, size=self.input_size, mode="bilinear", align_corners=False)
            soft = logits.softmax(dim=1)  # [B, K, h, w]
            soft_np = soft.cpu().numpy()
            if speed is not None:
                mass_np = soft_np.sum(axis=(-2, -1))  # [B, K]
                window = slice(start, start + self.batch_size)
                mean_speed = mask_speeds(soft_np, speed[window], None if trust is None else trust[window])  # [B, K]
                if textured is not None and min_textured > 0:
                    mean_speed = untextured_still(mean_speed, soft_np, textured[window], min_textured)
                groups_batch = [motion_groups(mean_speed[b], mass_np[b]) for b in range(len(soft_np))]
            else:
                feats = (
                    out.features if self.merge_backbone is None else self.merge_backbone(normalize_images(rgb_batch))
                )  # [B, F, h', w']
                means, mass = mask_features(soft, feats.float())  # [B, K, F], [B, K]
                means_np, mass_np = means.cpu().numpy(), mass.cpu().numpy()
                groups_batch = [merge_groups(means_np[b], mass_np[b]) for b in range(len(soft_np))]
            for b, groups in enumerate(groups_batch):
                soft_all.append(soft_np[b])
                merged_all.append(merge_masks(soft_np[b], groups))
                groups_all.append(groups)
        return {"soft": np.stack(soft_all), "merged": np.stack(merged_all), "groups": np.stack(groups_all)}


def build_predictor(model_path: str | Path, params: InferParams) -> tuple[Predictor, dict[str, Any]]:
    """Load a checkpoint and, for dino_vits8, the merge ViT -> (predictor, model cfg)."""
    device = resolve_device(params.device, "infer.device")
    model, cfg = load_checkpoint(model_path, device)
    if params.merge_features not in MERGE_FEATURES:
        raise StageError(
            f"infer.merge_features must be one of {MERGE_FEATURES}, not {params.merge_features!r}"
        )
    merge_backbone = None
    if params.merge_features == "dino_vits8" and int(cfg["k"]) > 2:
        merge_backbone = DinoMergeFeatures(params.dino_weights, params.dino_patch_stride, cfg["input_size"])
    inputs = input_kinds(cfg)
    return Predictor(model, cfg["input_size"], device, params.batch_size, merge_backbone, inputs), cfg


# --------------------------------------------------------------------------- stage


def run_infer(
    *,
    model: str | Path,
    frames: str | Path,
    run: str,
    out: str | Path,
    params: InferParams,
    flow: str | Path | None = None,
) -> None:
    started = time.perf_counter()
    if params.batch_size < 1:
        raise StageError(f"infer.batch_size must be >= 1, got {params.batch_size}")
    if params.motion_residual not in RESIDUAL_MODELS:
        raise StageError(f"infer.motion_residual must be one of {RESIDUAL_MODELS}, not {params.motion_residual!r}")
    frame_attrs = dict(open_store(frames, "frames").attrs)
    rgb = read_rgb(frames)  # [T, H, W, 3]
    predictor, cfg = build_predictor(model, params)
    takes_flow = "flow" in predictor.inputs
    merges_by_motion = params.merge_features == "motion" and int(cfg["k"]) > 2
    if takes_flow and flow is None:
        raise StageError(f"{model}: this model takes optical flow as input; pass the sequence's flow store (--flow)")
    if merges_by_motion and flow is None:
        raise StageError(
            "infer.merge_features: motion merges the masks by their motion; pass the sequence's flow store "
            "(--flow) or set merge_features: decoder"
        )
    motion = read_motion(flow, predictor.input_size) if takes_flow or merges_by_motion else None  # [T, h, w, 2]
    if motion is not None and len(motion) != len(rgb):
        raise StageError(f"{flow}: {len(motion)} frames, but {frames} has {len(rgb)}; rebuild its flow")
    flow_input = input_flow_of(motion) if takes_flow else None  # [T, 2, h, w]
    speed = residual_speed_of(motion, params.motion_residual) if merges_by_motion else None  # [T, h, w]
    trust = read_trust(flow, predictor.input_size) if merges_by_motion and params.motion_trust else None
    gate = params.motion_texture
    textured = (
        textured_fraction(rgb, predictor.input_size, gate.min_slope)
        if merges_by_motion and gate.min_fraction > 0 else None
    )  # [T, h, w]
    result = predictor.predict(rgb, flow_input, speed, trust, textured, gate.min_fraction)
    merged = result["merged"]  # [T, 2, h, w]
    if params.refine.radius > 0:
        merged = np.stack([
            refine_merged(pair, frame, params.refine.radius, params.refine.eps)
            for pair, frame in zip(merged, rgb, strict=True)
        ])  # [T, 2, H, W]
    provenance = cfg.get("checkpoint") or {}
    train_params = provenance.get("params") or {}
    write_masks(
        out,
        result["soft"],
        merged,
        run=run,
        dataset=frame_attrs.get("dataset"),
        sequence=frame_attrs.get("sequence"),
        merge=params.merge_features,
        groups=result["groups"].tolist(),
        params=params.to_dict(),
        model=str(model),
        checkpoint_step=provenance.get("step"),
        checkpoint_rule=provenance.get("checkpoint_rule") or "last",  # best_on_gt, released; older models: last
        seed=_find_key(train_params, "seed"),
        compat=_find_key(train_params, "compat"),
    )
    log.info(
        "%d frames, K=%d -> %s in %.1f s",
        len(rgb),
        result["soft"].shape[1],
        out,
        time.perf_counter() - started,
    )
    if predictor.device.type == "cuda":
        log.info("max GPU memory %.0f MiB", torch.cuda.max_memory_allocated() / 2**20)


def _find_key(mapping: Any, key: str) -> Any:
    """A key anywhere in nested training params (seed, compat), or None."""
    if isinstance(mapping, dict):
        if key in mapping and not isinstance(mapping[key], dict):
            return mapping[key]
        for value in mapping.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.infer", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint written by lrtl.train (model.pt)")
    parser.add_argument("--frames", required=True, help="frames store of one sequence")
    parser.add_argument(
        "--flow", help="flow store of the sequence: for a model that takes flow as input and for merge_features: motion"
    )
    parser.add_argument(
        "--params", required=True, type=json_params, help="JSON of the config section `infer`"
    )
    add_settings_argument(parser)
    parser.add_argument("--run", required=True, help="run name, recorded in the masks store")
    parser.add_argument(
        "--out", required=True, help="masks store to write (soft [T,K,h,w], merged [T,2,h,w])"
    )

    def body(args: argparse.Namespace) -> None:
        params = InferParams.from_mapping(merge_settings(args.params, args.settings), "infer")
        log.info("params: %s", params)
        run_infer(
            model=args.model,
            frames=args.frames,
            flow=args.flow,
            run=args.run,
            out=args.out,
            params=params,
        )

    run_stage("infer", body, parser, argv)


if __name__ == "__main__":
    main()
