"""Periodic validation during training: the annotated frames of the training sequences, scored by the
evaluation protocol (METHOD.md §8, §9 steps 1-3).

    frames = load_validation(frames_stores, params.validate, input_size, input_flow)   # None: nothing to score
    val_j = validate(model, frames, input_size, device, threshold)                      # mean best-of-2 J

A model selected on these scores is selected on ground-truth labels: a diagnostic, never a result.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from lrtl.imageops import resize_rgb, upsample
from lrtl.infer import Predictor
from lrtl.metrics import best_of_two
from lrtl.model_inputs import input_kinds
from lrtl.stores import open_store, read_ground_truth
from lrtl.train_params import ValidateParams

SELECTED_ON_GT = "selected on ground-truth labels: a diagnostic, never a result (METHOD.md §8)"


@dataclasses.dataclass(frozen=True)
class ValidationFrames:
    """Annotated frames of the training sequences with their ground truth (periodic validation)."""

    rgb: np.ndarray  # uint8 [V, h, w, 3], already at the model input size
    gt: list[np.ndarray]  # V bool masks [Hg, Wg] at their native resolution
    flow: np.ndarray | None = None  # float32 [V, 2, h, w] network flow input (lrtl.model_inputs), or None


def load_validation(
    frames: Sequence[str | os.PathLike],
    params: ValidateParams,
    input_size: Sequence[int],
    input_flow: dict[str, np.ndarray] | None = None,
) -> ValidationFrames | None:
    """Up to `params.frames` annotated frames spread evenly over the stores; None without ground truth.

    input_flow: frames store -> its network flow input [T, 2, h, w], for a model that takes flow."""
    if params.every <= 0 or params.frames <= 0:
        return None
    annotated = []  # (store, row in gt, frame index)
    for path in frames:
        _, gt_index = read_ground_truth(path)
        annotated += [(str(path), row, int(frame)) for row, frame in enumerate(gt_index.tolist())]
    if not annotated:
        return None
    picks = np.unique(np.linspace(0, len(annotated) - 1, min(params.frames, len(annotated))).round().astype(int))
    chosen = [annotated[i] for i in picks]
    groups = {store: open_store(store, "frames") for store, _, _ in chosen}
    rgb = [resize_rgb(groups[store]["rgb"][frame][None], input_size)[0] for store, _, frame in chosen]
    gt = [groups[store]["gt"][row].astype(bool) for store, row, _ in chosen]
    flow = None if input_flow is None else np.stack([input_flow[store][frame] for store, _, frame in chosen])
    return ValidationFrames(np.stack(rgb), gt, flow)


def validate(model, frames: ValidationFrames, input_size, device, threshold: float) -> float:
    """Mean best-of-2 J over the validation frames, by the evaluation protocol (METHOD.md §9 steps 1-3).

    The K masks are merged to 2 without labels (the model's decoder features); leaves the model in train mode.
    """
    try:
        predictor = Predictor(model, input_size, device, batch_size=8, inputs=input_kinds(model.cfg))
        merged = predictor.predict(frames.rgb, frames.flow)["merged"]  # [V, 2, h, w]
    finally:
        model.train()
    scores = [best_of_two(upsample(m, *gt.shape) > threshold, gt)[0] for m, gt in zip(merged, frames.gt, strict=True)]
    return float(np.mean(scores))


