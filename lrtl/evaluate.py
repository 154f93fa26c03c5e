"""Per-frame scores of one sequence's masks against its ground truth (METHOD.md §9 steps 3-4, 6).

    python -m lrtl.evaluate --masks M.zarr --frames F.zarr --params '<json of config evaluate>' \
        --out per-frame.tsv

For every annotated frame: the two merged soft masks are upsampled bilinearly (torch, align_corners=False)
to the GT resolution and thresholded at > `threshold`; J of each against the GT, the better of the two
(best-of-2, the only matching), and the boundary F of that chosen mask. Frame-selection columns say whether
the frame is scored under each rule of lrtl.metrics.scored_frames; lrtl.tables picks the rule per dataset.
Every annotated frame is stored, so all rules can be applied later.

Empty masks (METHOD.md §11 item 10): a frame whose GT and prediction are both empty scores J = 1 (official
DAVIS `db_eval_iou`), or J = 0 as the GWM/LRTL reference does when the masks come from a `compat: reference`
run (the `compat` attribute lrtl.infer writes into the masks store; the no-learning baseline has none: official).

TSV columns (one row per annotated frame, tab separated, written by pandas):
    dataset, sequence, run, seed, compat, checkpoint_rule  identity and provenance (stores' attrs)
    frame, n_frames                   frame index (0-based) and sequence length
    j_0, j_1, j, chosen, f            J of merged mask 0 / 1, best-of-2 J, its index, F of that mask
    scored_reference, scored_official, scored_annotated    frame rules (bool)
    gt_fraction, j_all_foreground     GT area fraction; J of the "all foreground" baseline
    annotations_missing               frames of the sequence without their mask where the layout annotates every
                                      frame (datasets.<d>.missing_annotations: warn); lrtl.tables warns about them
    oracle_merge_do_not_use           DIAGNOSTIC ONLY: best J over every 2-partition of the K soft masks,
                                      chosen with GT (never a result)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lrtl import metrics
from lrtl.cli import StageError, json_params, run_stage
from lrtl.imageops import upsample
from lrtl.params import Params
from lrtl.stores import atomic_path, open_store, read_ground_truth, read_masks

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset",
    "sequence",
    "run",
    "seed",
    "compat",
    "checkpoint_rule",
    "frame",
    "n_frames",
    "j_0",
    "j_1",
    "j",
    "chosen",
    "f",
    *(f"scored_{rule}" for rule in metrics.FRAME_RULES),
    "gt_fraction",
    "j_all_foreground",
    "annotations_missing",
    "oracle_merge_do_not_use",
]


@dataclasses.dataclass(frozen=True)
class EvaluateParams(Params):
    threshold: float  # soft-mask threshold after upsampling to GT resolution (paper 0.5, strict >)
    bound_th: float  # boundary tolerance of F as a fraction of the GT diagonal (DAVIS 0.008)
    oracle_max_k: int  # compute the oracle-merge diagnostic only when K <= this (2**K partitions); 0 = never


EMPTY_IOU = {"fixed": 1.0, "reference": 0.0}  # J of empty GT vs empty prediction per compat mode (§11 item 10)


def empty_iou(compat: str | None) -> float:
    """The IoU convention for empty GT and prediction of a run's compat mode (None, e.g. the baseline: fixed)."""
    if compat is None:
        return EMPTY_IOU["fixed"]
    if compat not in EMPTY_IOU:
        raise StageError(f"compat mode {compat!r} of the masks is neither fixed nor reference; rerun inference "
                         f"with a train.runs.<run>.compat of fixed or reference")
    return EMPTY_IOU[compat]


def oracle_merge(soft_full: np.ndarray, gt: np.ndarray, threshold: float, empty: float = 1.0) -> float:
    """Best J over all subsets of the K soft masks [K, H, W] taken as foreground (diagnostic, uses GT)."""
    k = soft_full.shape[0]
    best = 0.0
    for size in range(0, k + 1):
        for subset in itertools.combinations(range(k), size):
            pred = soft_full[list(subset)].sum(axis=0) > threshold if subset else np.zeros_like(gt)
            best = max(best, metrics.jaccard(pred, gt, empty))
    return best


def evaluate_sequence(
    soft: np.ndarray,
    merged: np.ndarray,
    gt: np.ndarray,
    gt_index: np.ndarray,
    params: EvaluateParams,
    compat: str | None = None,
) -> pd.DataFrame:
    """Per-frame scores; soft [T, K, h, w], merged [T, 2, h, w], gt bool [A, Hg, Wg], gt_index [A].

    compat: the run's compat mode; `reference` scores empty GT and empty prediction as J = 0 (else 1).
    """
    empty = empty_iou(compat)
    n_frames = merged.shape[0]
    rows = []
    rules = {rule: metrics.scored_frames(n_frames, gt_index, rule) for rule in metrics.FRAME_RULES}
    for a, (frame, mask) in enumerate(zip(gt_index.tolist(), gt, strict=True)):
        if not 0 <= frame < n_frames:
            raise StageError(f"annotation for frame {frame} but the masks have {n_frames} frames")
        height, width = mask.shape
        merged_bin = upsample(merged[frame], height, width) > params.threshold  # [2, Hg, Wg]
        j_pair = [metrics.jaccard(merged_bin[i], mask, empty) for i in range(2)]
        j, chosen = metrics.best_of_two(merged_bin, mask, empty)
        f = metrics.f_boundary(merged_bin[chosen], mask, params.bound_th)
        k = soft.shape[1]
        oracle = math.nan
        if 0 < k <= params.oracle_max_k:
            oracle = oracle_merge(upsample(soft[frame], height, width), mask, params.threshold, empty)
        rows.append(
            {
                "frame": frame,
                "n_frames": n_frames,
                "j_0": j_pair[0],
                "j_1": j_pair[1],
                "j": j,
                "chosen": chosen,
                "f": f,
                **{f"scored_{rule}": bool(rules[rule][a]) for rule in metrics.FRAME_RULES},
                "gt_fraction": float(mask.mean()),
                "j_all_foreground": metrics.jaccard(np.ones_like(mask), mask, empty),
                "oracle_merge_do_not_use": oracle,
            }
        )
    return pd.DataFrame(rows)


def run_evaluate(*, masks: str | Path, frames: str | Path, out: str | Path, params: EvaluateParams) -> None:
    soft, merged, mask_attrs = read_masks(masks)
    frame_attrs = dict(open_store(frames, "frames").attrs)
    gt, gt_index = read_ground_truth(frames)
    if merged.shape[0] != frame_attrs["n_frames"]:
        raise StageError(
            f"{masks}: {merged.shape[0]} frames of masks but {frames} has {frame_attrs['n_frames']}; "
            f"rerun inference for this sequence"
        )
    try:
        table = evaluate_sequence(soft, merged, gt, gt_index, params, compat=mask_attrs.get("compat"))
    except StageError as err:
        raise StageError(f"{masks}: {err}") from err
    identity = {
        "dataset": frame_attrs.get("dataset"),
        "sequence": frame_attrs.get("sequence"),
        "run": mask_attrs.get("run"),
        "seed": mask_attrs.get("seed"),
        "compat": mask_attrs.get("compat"),
        "checkpoint_rule": mask_attrs.get("checkpoint_rule"),
    }
    for name, value in identity.items():
        table[name] = value
    table["annotations_missing"] = len(frame_attrs.get("missing_annotations") or [])
    table = table.reindex(columns=COLUMNS)
    if len(table):
        log.info(
            "%s/%s run %s: %d annotated frames, mean J %.3f (all frames), mean F %.3f",
            identity["dataset"],
            identity["sequence"],
            identity["run"],
            len(table),
            table["j"].mean(),
            table["f"].mean(),
        )
    else:
        log.warning("%s has no ground truth; writing an empty table", frames)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.6f")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--masks", required=True, help="masks store of one sequence (lrtl.infer or lrtl.baseline)"
    )
    parser.add_argument("--frames", required=True, help="frames store of the sequence (ground truth)")
    parser.add_argument(
        "--params", required=True, type=json_params, help="JSON of the config section `evaluate`"
    )
    parser.add_argument("--out", required=True, help="per-frame TSV to write")

    def body(args: argparse.Namespace) -> None:
        params = EvaluateParams.from_mapping(args.params, "evaluate")
        log.info("params: %s", params)
        run_evaluate(masks=args.masks, frames=args.frames, out=args.out, params=params)

    run_stage("evaluate", body, parser, argv)


if __name__ == "__main__":
    main()
