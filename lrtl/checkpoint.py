"""Self-describing checkpoints (STYLE.md §12): the one writer (lrtl.train) and the one loader.

    save_checkpoint(path, model, params, step)   # model args, params, step, versions (+ optimiser, RNG, extra)
    model, cfg = load_checkpoint(path, device)   # model in eval mode; cfg = model args + "checkpoint" provenance

lrtl.convert writes the same format from a reference checkpoint; lrtl.infer and the tests load with
load_checkpoint.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import torch

from lrtl import __version__
from lrtl.cli import StageError
from lrtl.model import SegmentationModel, build_model
from lrtl.stores import atomic_path
from lrtl.train_params import TrainParams

CHECKPOINT_FORMAT = "lrtl-checkpoint-1"


def git_sha() -> str | None:
    """HEAD of the checkout lrtl runs from (None outside a git checkout)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def save_checkpoint(
    path: Path,
    model: SegmentationModel,
    params: TrainParams,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    **extra: Any,
) -> None:
    """Self-describing checkpoint (STYLE.md §12): model args, params, step, versions (+ optimiser, RNG, extra)."""
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": model.trainable_state_dict(),
        "model_cfg": params.model.to_dict(),
        "params": params.to_dict(),
        "step": step,
        "lrtl_version": __version__,
        "torch_version": torch.__version__,
        "git_sha": git_sha(),
        "backbone_sha256": getattr(model.backbone, "weights_sha256", None),
    }
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
        checkpoint["torch_rng"] = torch.get_rng_state()
        if torch.cuda.is_available():
            checkpoint["cuda_rng"] = torch.cuda.get_rng_state_all()
    checkpoint.update(extra)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


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
            "step", "lrtl_version", "git_sha", "params", "torch_version", "backbone_sha256", "validation",
            "selected_on", "checkpoint_rule",
        )
    }
    return model, cfg
