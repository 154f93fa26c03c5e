"""Train the segmentation model on frames, flow and tracks of the training sequences (METHOD.md §4-§8).

    python -m lrtl.train --frames A.zarr B.zarr --flow A.zarr B.zarr --tracks A/index.json B/index.json \
        --params '<json of the merged train section>' --state-dir DIR.state --out model.pt \
        --metrics metrics.jsonl --curve loss.png [--threads N]

The lists are aligned by position. Resume state (last.pt and the live metrics log) lives in --state-dir,
outside the declared outputs, so a killed job continues where it stopped (STYLE.md §12). The final model.pt,
the metrics.jsonl copy and the loss-curve PNG are written atomically at the end.

This module is the loop and its CLI; the parameters live in lrtl.train_params, checkpoints in lrtl.checkpoint,
the periodic validation in lrtl.validation and the curve in lrtl.pictures.write_curve.

Loss: w_flow L_flow + w_traj L_traj + w_temp a(it) L_temp (METHOD.md §7); a term whose weight is 0 is not
computed (ablations flow_only / tracks_only). `compat: reference` restores the reference's schedules (160k
horizon), gradient clip 0.01, temporal-loss centre index, half-pixel sampling, flip without negating u and the
track-sampling quirks (METHOD.md §11).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lrtl import losses
from lrtl.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from lrtl.cli import StageError, add_settings_argument, json_params, run_stage
from lrtl.data import TrainItems, flatten_batch, load_sequence, make_loader
from lrtl.jobcontrol import hold_state_dir, stop_with_controller
from lrtl.model import build_model
from lrtl.model_inputs import input_kinds, model_input
from lrtl.pictures import write_curve
from lrtl.runtime import input_identity, limit_threads, resolve_device
from lrtl.settings import merge_settings, result_params
from lrtl.stores import atomic_path, write_text
from lrtl.train_params import TrainParams, parse_params
from lrtl.validation import SELECTED_ON_GT, load_validation, validate

log = logging.getLogger(__name__)

REFERENCE_HORIZON = 160_000  # the reference's nominal schedule length (METHOD.md §8, §11 item 3)
REFERENCE_GRAD_CLIP = 0.01  # the reference's inherited clip (METHOD.md §11 item 2)


# --------------------------------------------------------------------------- schedules


def lr_factor(step: int, iterations: int, warmup: float, power: float, reference: bool) -> float:
    """Linear warm-up from 1e-6 over `warmup * iterations` steps, times (1 - step / horizon) ** power;
    horizon = iterations (lrtl) or the nominal 160k (compat: reference, METHOD.md §8, §12.4)."""
    horizon = REFERENCE_HORIZON if reference else iterations
    warm_steps = round(warmup * iterations)
    factor = 1.0
    if step < warm_steps:
        alpha = step / warm_steps
        factor = 1e-6 * (1 - alpha) + alpha
    return factor * max(1.0 - step / horizon, 0.0) ** power


def trajectory_boost(step: int, iterations: int, boost: float, until: float) -> float:
    """Multiple of w_traj at a step: boost at step 0, falling linearly to 1 at until x iterations, then 1."""
    return 1.0 + (boost - 1.0) * max(0.0, 1.0 - step / (until * iterations))


def temporal_ramp(step: int, iterations: int, reference: bool) -> float:
    """a(it) = 0.001 + 0.999 min(it / horizon, 1) (METHOD.md §7.3)."""
    horizon = REFERENCE_HORIZON if reference else iterations
    return 0.001 + 0.999 * min(step / horizon, 1.0)


# --------------------------------------------------------------------------- helpers


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay except for norm layers and the query embeddings (MaskFormer / METHOD.md §8)."""
    decay, no_decay = [], []
    for module in model.modules():
        exempt = isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.Embedding))
        for parameter in module.parameters(recurse=False):
            if parameter.requires_grad:
                (no_decay if exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def memory_mb(device: torch.device) -> dict[str, float]:
    usage = {"max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        usage["cuda_max_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return usage


def resume_signature(params: TrainParams, inputs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Everything that determines a training run's result: result params (not run settings), the checkpoint
    format, and the identity of every input store and of the backbone weights."""
    weights = params.model.backbone.weights if params.model.backbone.name != "small" else None
    return {
        "params": result_params("train", params.to_dict()),
        "format": CHECKPOINT_FORMAT,
        "inputs": input_identity([*inputs, weights]),
    }


def signature_difference(recorded: dict[str, Any] | None, signature: dict[str, Any]) -> list[str]:
    """The parts of a signature that differ ([] = the same job); a state without one differs in everything."""
    if recorded is None:
        return ["signature (none recorded)"]
    changed = [key for key in signature if key != "inputs" and recorded.get(key) != signature[key]]
    old, new = recorded.get("inputs", {}), signature["inputs"]
    changed += [f"input {path}" for path in sorted(set(old) | set(new)) if old.get(path) != new.get(path)]
    return changed


def read_metrics(path: Path, up_to_step: int | None = None) -> list[dict[str, Any]]:
    """The rows of a metrics log, as written. Read line by line, not with pd.read_json(lines=True): the rows are
    written back verbatim (resume, final copy), and a frame would add NaN for the keys a row lacks (loss rows vs
    validation rows), turn ints into floats and parse floats imprecisely."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if up_to_step is None or row["step"] <= up_to_step]


def metrics_row(step: int, lr: float, grad_norm: float, window: dict[str, Any], device) -> dict[str, Any]:
    """One metrics.jsonl line: means over the steps since the last line."""
    n_steps = window["n"]
    row = {"step": step, "lr": lr, "grad_norm": grad_norm, "it_per_s": n_steps / max(window["step"], 1e-9),
           "data_wait": window["data"] / max(window["step"], 1e-9)}
    for name, total in window["sums"].items():
        row["loss" if name == "total" else f"loss_{name}"] = total / n_steps
    return {**row, **memory_mb(device)}


def log_row(row: dict[str, Any], iterations: int) -> None:
    terms = ", ".join(f"{name[5:]} {value:.4g}" for name, value in row.items()
                      if name.startswith("loss_") and not name.startswith("loss_raw"))
    log.info("step %d/%d loss %.4g (%s) lr %.3g, %.2f it/s, data wait %.0f%%", row["step"], iterations,
             row["loss"], terms, row["lr"], row["it_per_s"], 100 * row["data_wait"])


def compute_losses(
    out, batch: dict[str, torch.Tensor], params: TrainParams, step: int, frame_size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Weighted loss terms of one step (unweighted values under 'raw_*'); terms with weight 0 are skipped."""
    loss, reference = params.loss, params.compat == "reference"
    align_corners = not reference  # METHOD.md §11 item 6
    masks = out.logits.softmax(dim=1)  # [4B, K, h, w]
    terms: dict[str, torch.Tensor] = {}
    if loss.w_flow:
        flow = batch["flow"]  # [4B, 2, hf, wf]
        resized = F.interpolate(masks, size=flow.shape[-2:], mode="bilinear", align_corners=False)
        raw = losses.flow_loss(resized, flow, weight=batch.get("flow_weight"))
        terms["raw_flow"], terms["flow"] = raw, loss.w_flow * raw
    if loss.w_traj:
        weights = losses.mask_weights(masks, batch["loc"], loss.weight_clamp, align_corners)  # [4B, K, N]
        if loss.track_weight != "none":
            weights = weights * losses.track_reliability(batch["vis"], loss.track_weight).unsqueeze(1)  # x [4B, 1, N]
        traj = losses.trajectory_matrix(batch["tracks"])  # [4B, 2C, N]
        raw = losses.lowrank_trajectory_loss(traj, weights, loss.rank, loss.route)
        boost = trajectory_boost(step, params.iterations, loss.traj_boost, loss.traj_boost_until)
        terms["raw_traj"], terms["traj"] = raw, loss.w_traj * boost * raw
    if loss.w_temp:
        raw = losses.temporal_loss_items(
            masks,
            batch["tracks"],
            batch["vis"],
            batch["loc"],
            batch["t_index"],
            frame_size=frame_size,
            offset=params.data.pair_offset,
            compat_reference=reference,
            align_corners=align_corners,
        )
        ramp = temporal_ramp(step, params.iterations, reference)
        terms["raw_temp"], terms["temp"] = raw, loss.w_temp * ramp * raw
    if not any(name in terms for name in ("flow", "traj", "temp")):
        raise StageError("train.loss: all of w_flow, w_traj and w_temp are 0; nothing to train")
    terms["total"] = sum(terms[name] for name in ("flow", "traj", "temp") if name in terms)
    return terms


# --------------------------------------------------------------------------- the training function


def run_train(
    *,
    frames: Sequence[str | os.PathLike],
    flow: Sequence[str | os.PathLike],
    tracks: Sequence[str | os.PathLike],
    params: TrainParams,
    state_dir: str | os.PathLike,
    out: str | os.PathLike,
    metrics: str | os.PathLike,
    curve: str | os.PathLike,
    best: str | os.PathLike | None = None,
) -> None:
    """Train top to bottom: data -> model -> optimiser -> resume -> loop -> model.pt, metrics, curve.

    With ground truth in the frames stores, the model is validated every `validate.every` steps and at the
    end; `best` receives the checkpoint of the best validation J (selected on labels: a diagnostic, the
    results use the last model), or the last model when there is nothing to validate on.
    """
    started = time.perf_counter()
    if not (len(frames) == len(flow) == len(tracks)):
        raise StageError(
            f"--frames ({len(frames)}), --flow ({len(flow)}) and --tracks ({len(tracks)}) must list "
            f"the same sequences in the same order"
        )
    state_dir, out, metrics, curve = Path(state_dir), Path(out), Path(metrics), Path(curve)
    state_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params.device, "train.device")
    reference = params.compat == "reference"
    grad_clip = REFERENCE_GRAD_CLIP if reference else params.optim.grad_clip

    # data: frames and flow of every sequence in memory, tracks read per query frame
    inputs = input_kinds(params.model.to_dict())  # what the network sees: rgb and/or flow
    sequences = [
        load_sequence(f, w, t, input_size=params.model.input_size, params=params.data, flow_input="flow" in inputs)
        for f, w, t in zip(frames, flow, tracks, strict=True)
    ]
    items = TrainItems(sequences, params.data, seed=params.seed, compat_reference=reference)
    log.info(
        "%d training sequences, %d frames; tracks at %s px",
        len(sequences),
        sum(s.n_frames for s in sequences),
        items.track_size,
    )
    input_flow = {str(f): s.input_flow for f, s in zip(frames, sequences, strict=True)} if "flow" in inputs else None
    validation = load_validation(frames, params.validate, params.model.input_size, input_flow)
    if validation is not None:
        log.info("validating every %d steps on %d annotated frames", params.validate.every, len(validation.gt))

    # model and optimiser (AdamW; no weight decay for norms and query embeddings)
    model = build_model(params.model.to_dict()).to(device)
    optimizer = torch.optim.AdamW(param_groups(model, params.optim.weight_decay), lr=params.optim.lr)
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info(
        "model: %s backbone, K=%d, %d trainable parameters, device %s",
        params.model.backbone.name,
        params.model.k,
        n_trainable,
        device,
    )

    # resume from the state dir only when its checkpoint was written by this exact job: the same result params,
    # checkpoint format and inputs (a finished job removes its state, so a rerun never resumes a final model)
    step = 0
    best_val: dict[str, Any] | None = None  # {"step", "val_j"} of the best validation so far
    last, live_metrics, best_state = state_dir / "last.pt", state_dir / "metrics.jsonl", state_dir / "best.pt"
    signature = resume_signature(params, [*frames, *flow, *tracks])
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        stale = signature_difference(state.get("resume_signature"), signature)
        if not stale:
            model.load_state_dict(state["model"], strict=False)
            optimizer.load_state_dict(state["optimizer"])
            for group in optimizer.param_groups:  # the base lr, absent from states saved before the LambdaLR
                group.setdefault("initial_lr", params.optim.lr)
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
            step = int(state["step"])
            best_val = state.get("validation_best")
            log.info("resumed from %s at step %d", last, step)
        else:
            log.warning("%s belongs to another job (different %s); discarding it and starting from step 0",
                        last, ", ".join(stale))
            best_state.unlink(missing_ok=True)
    # the live log keeps the lines up to the resumed step (a killed run may have logged beyond its checkpoint)
    rows = read_metrics(live_metrics, up_to_step=step) if step else []
    write_text(live_metrics, "".join(json.dumps(row) + "\n" for row in rows))

    # lr = optim.lr * lr_factor(step): warm-up and poly decay relative to this run's own length, continued from the
    # resumed step (LambdaLR scales each group's "initial_lr", which a resumed optimiser state carries)
    schedule = functools.partial(lr_factor, iterations=params.iterations, warmup=params.optim.warmup,
                                 power=params.optim.poly_power, reference=reference)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule, last_epoch=step - 1)

    loader = make_loader(
        items,
        batch_items=params.batch_items,
        first_item=step * params.batch_items,
        n_items=(params.iterations - step) * params.batch_items,
    )
    model.train()
    window = {"data": 0.0, "step": 0.0, "n": 0, "sums": {}}
    progress = tqdm(
        total=params.iterations, initial=step, desc="train", unit="it", disable=None
    )
    tic = time.perf_counter()
    with live_metrics.open("a") as metrics_log:
        for batch in loader:
            lr = scheduler.get_last_lr()[0]  # this step's lr, the same in every parameter group
            batch = {
                name: value.to(device, non_blocking=True) for name, value in flatten_batch(batch).items()
            }
            data_done = time.perf_counter()

            out_model = model(model_input(batch["rgb"], batch.get("flow_input"), inputs))  # logits [4B, K, h, w]
            terms = compute_losses(out_model, batch, params, step, items.track_size)
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1

            toc = time.perf_counter()
            window["data"] += data_done - tic
            window["step"] += toc - tic
            window["n"] += 1
            for name, value in terms.items():
                window["sums"][name] = window["sums"].get(name, 0.0) + float(value.detach())
            tic = toc
            progress.update(1)
            progress.set_postfix(loss=f"{float(terms['total'].detach()):.4g}", refresh=False)

            if step % params.log_every == 0 or step == params.iterations:
                row = metrics_row(step, lr, float(grad_norm), window, device)
                metrics_log.write(json.dumps(row) + "\n")
                metrics_log.flush()
                log_row(row, params.iterations)
                window = {"data": 0.0, "step": 0.0, "n": 0, "sums": {}}
            if validation is not None and (step % params.validate.every == 0 or step == params.iterations):
                val_j = validate(model, validation, params.model.input_size, device, params.validate.threshold)
                metrics_log.write(json.dumps({"step": step, "val_j": val_j, "val_frames": len(validation.gt)}) + "\n")
                metrics_log.flush()
                log.info("step %d validation J %.4f on %d annotated frames", step, val_j, len(validation.gt))
                if best_val is None or val_j > best_val["val_j"]:
                    best_val = {"step": step, "val_j": val_j}
                    save_checkpoint(best_state, model, params, step, selected_on=SELECTED_ON_GT, val_j=val_j,
                                    checkpoint_rule="best_on_gt")
                tic = time.perf_counter()  # validation time is not training time
            if step % params.checkpoint_every == 0 or step == params.iterations:
                save_checkpoint(last, model, params, step, optimizer, validation_best=best_val,
                                resume_signature=signature)
    progress.close()

    # final artefacts: model.pt, best.pt, the metrics log and the curve, each written atomically
    rows = read_metrics(live_metrics)
    val_rows = [row for row in rows if "val_j" in row]
    summary = None
    if val_rows:
        summary = {"last": {"step": val_rows[-1]["step"], "val_j": val_rows[-1]["val_j"]}, "best": best_val,
                   "frames": val_rows[-1]["val_frames"], "best_selected_on": SELECTED_ON_GT}
        log.info("validation J: last %.4f (step %d); best %.4f (step %d, %s)", summary["last"]["val_j"],
                 summary["last"]["step"], best_val["val_j"], best_val["step"], SELECTED_ON_GT)
    save_checkpoint(out, model, params, step, validation=summary, checkpoint_rule="last")
    if best is not None:
        if summary is not None and best_state.is_file():
            with atomic_path(best) as tmp:
                shutil.copyfile(best_state, tmp)
        else:
            save_checkpoint(Path(best), model, params, step, selected_on="last step (no ground truth to validate on)",
                            checkpoint_rule="last")
    write_text(metrics, "".join(json.dumps(row) + "\n" for row in rows))
    write_curve(rows, curve, f"{params.model.backbone.name}, K={params.model.k}, {step} steps")
    shutil.rmtree(state_dir)  # finished: the state is never resumed into another job
    log.info(
        "wrote %s after %d steps in %.1f s (%s)",
        out,
        step,
        time.perf_counter() - started,
        memory_mb(device),
    )


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lrtl.train", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--frames", nargs="+", required=True, help="frames stores of the training sequences"
    )
    parser.add_argument("--flow", nargs="+", required=True, help="flow stores, in the order of --frames")
    parser.add_argument(
        "--tracks", nargs="+", required=True, help="tracks index.json files, in the order of --frames"
    )
    parser.add_argument(
        "--params", type=json_params, required=True, help="JSON of the run's merged train section"
    )
    add_settings_argument(parser)
    parser.add_argument("--state-dir", required=True, help="resume state folder (not a declared output)")
    parser.add_argument("--out", required=True, help="final checkpoint (model.pt)")
    parser.add_argument("--metrics", required=True, help="metrics log to write (jsonl)")
    parser.add_argument("--curve", required=True, help="loss-curve PNG to write")
    parser.add_argument(
        "--best", help="checkpoint of the best validation J (selected on labels; the last model without them)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (the rule's threads; omitted: torch's choice)"
    )
    return parser


def apply_determinism(params: TrainParams) -> None:
    """Seeds and determinism switches (STYLE.md §14: applied in main, never at import)."""
    if params.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)


def main(argv: Sequence[str] | None = None) -> None:
    def body(args: argparse.Namespace) -> None:
        params = parse_params(merge_settings(args.params, args.settings))
        limit_threads(args.threads, torch_too=True)
        apply_determinism(params)
        with hold_state_dir(args.state_dir):  # one live trainer per state folder
            stop_with_controller()  # a killed snakemake does not leave its trainer running
            run_train(
                frames=args.frames,
                flow=args.flow,
                tracks=args.tracks,
                params=params,
                state_dir=args.state_dir,
                out=args.out,
                metrics=args.metrics,
                curve=args.curve,
                best=args.best,
            )

    run_stage("train", body, build_parser(), argv)


if __name__ == "__main__":
    main()
