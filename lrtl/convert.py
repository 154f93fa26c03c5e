"""A reference checkpoint (karazijal/lrtl, detectron2's {'model': state_dict}) -> an lrtl checkpoint of the paper model.

    python -m lrtl.convert --reference davis_alt_best.pth --model '{"backbone": {...}, "k": 4, ...}' --out model.pt

`--model` is the paper run's `model` section (config.paper.yaml); the DINO weights are not in a reference
checkpoint (the reference keeps its ViT outside the module tree) and come from `model.backbone.weights`, as in
training. `lrtl.checkpoint.load_checkpoint(out)` then loads the result strictly into the paper model (METHOD.md §6,
§11 item 8). The conversion:

- renames every decoder tensor (`sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`) to lrtl's name;
- permutes the input channels of the three kinds of layers that read ViT key features (the deepest 3x3 conv,
  the 1x1 laterals, the transformer's input projection): the reference lays the keys out d * heads + h, lrtl
  h * head_dim + d;
- takes the GroupNorm that the reference shares among five convs once, and checks that its four other copies
  in the state dict are equal;
- drops the tensors listed in DROPPED, each with its reason.

Every lrtl tensor must be filled and every reference tensor used or listed; anything else is a StageError that
names the key.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lrtl import __version__
from lrtl.checkpoint import CHECKPOINT_FORMAT
from lrtl.cli import StageError, json_params, run_stage
from lrtl.model import SegmentationModel, build_model
from lrtl.model_inputs import IMAGENET_MEAN, IMAGENET_STD
from lrtl.runtime import file_sha256
from lrtl.stores import atomic_path

log = logging.getLogger(__name__)

HEAD = "sem_seg_head."
PIXEL = HEAD + "pixel_decoder."
PREDICTOR = HEAD + "predictor."
SHARED_NORM = PIXEL + "layer_{deepest}.norm."  # the reference's one GroupNorm of the deepest conv and the head
SHARED_NORM_COPIES = tuple(f"{PIXEL}mask_features.{i}.norm." for i in (0, 2, 3, 5))

# reference tensors that the paper model does not use: key prefix -> why
DROPPED = {
    PREDICTOR + "mask_querie_comb.": "the K -> 2 query-combination convs, built when K != 2 but used only with deep "
    "supervision, which the reference config turns off (METHOD.md §11 item 8)",
    "criterion.": "buffers of MaskFormer's set criterion (empty_weight), a loss the reference does not train with",
}
# non-persistent in the reference; older detectron2 checkpoints may carry them: checked, then dropped
PIXEL_STATS = {"pixel_mean": [255 * m for m in IMAGENET_MEAN], "pixel_std": [255 * s for s in IMAGENET_STD]}

# reference name (after the head prefix) -> lrtl name; "{deepest}" = the number of FPN levels
RENAMES: list[tuple[str, str]] = [
    (r"pixel_decoder\.adapter_(\d+)\.weight", "pixel_decoder.laterals.{0}.0.weight"),
    (r"pixel_decoder\.adapter_(\d+)\.norm\.(weight|bias)", "pixel_decoder.laterals.{0}.1.{1}"),
    (r"pixel_decoder\.layer_(\d+)\.weight", "pixel_decoder.{fpn}.0.weight"),
    (r"pixel_decoder\.layer_(\d+)\.norm\.(weight|bias)", "pixel_decoder.{fpn}.1.{1}"),
    (r"pixel_decoder\.mask_features\.([0235])\.weight", "pixel_decoder.head.{head}.weight"),
    (r"pixel_decoder\.mask_features\.6\.(weight|bias)", "pixel_decoder.mask_out.{0}"),
    (r"predictor\.transformer\.decoder\.layers\.(\d+)\.self_attn\.(.+)", "mask_decoder.layers.{0}.self_attn.{1}"),
    (r"predictor\.transformer\.decoder\.layers\.(\d+)\.multihead_attn\.(.+)", "mask_decoder.layers.{0}.cross_attn.{1}"),
    (
        r"predictor\.transformer\.decoder\.layers\.(\d+)\.(linear[12]|norm[123])\.(weight|bias)",
        "mask_decoder.layers.{0}.{1}.{2}",
    ),
    (r"predictor\.transformer\.decoder\.norm\.(weight|bias)", "mask_decoder.norm.{0}"),
    (r"predictor\.query_embed\.weight", "mask_decoder.query.weight"),
    (r"predictor\.input_proj\.(weight|bias)", "mask_decoder.input_proj.{0}"),
    (r"predictor\.mask_embed\.layers\.([012])\.(weight|bias)", "mask_decoder.mask_embed.{mlp}.{1}"),
]
HEAD_INDEX = {"0": 0, "2": 1, "3": 2, "5": 3}  # mask_features.<i> -> head.<j> (1, 4 are upsamplings; 6 mask_out)
# lrtl tensors whose input channels are ViT key features
READS_VIT = (
    r"pixel_decoder\.deepest\.0\.weight",
    r"pixel_decoder\.laterals\.\d+\.0\.weight",
    r"mask_decoder\.input_proj\.weight",
)


def lrtl_name(reference_key: str, levels: int) -> str | None:
    """The lrtl state-dict name of a reference decoder tensor, or None if it has none (FPN of `levels` levels)."""
    if not reference_key.startswith(HEAD):
        return None
    name = reference_key[len(HEAD) :]
    for pattern, template in RENAMES:
        match = re.fullmatch(pattern, name)
        if match is None:
            continue
        groups = match.groups()
        fields = {}
        if "{fpn}" in template:
            level = int(groups[0])
            if not 1 <= level <= levels:
                return None
            fields["fpn"] = "deepest" if level == levels else f"outputs.{level - 1}"
        if "{head}" in template:
            fields["head"] = HEAD_INDEX[groups[0]]
        if "{mlp}" in template:
            fields["mlp"] = 2 * int(groups[0])
        if "laterals" in template and not 1 <= int(groups[0]) < levels:
            return None
        if "laterals" in template:
            groups = (str(int(groups[0]) - 1), *groups[1:])
        return template.format(*groups, **fields)
    return None


def key_permutation(dim: int, heads: int) -> torch.Tensor:
    """Index p with lrtl_channel c = h * (dim / heads) + d  <-  reference channel p[c] = d * heads + h."""
    head_dim = dim // heads
    return torch.arange(dim).reshape(head_dim, heads).T.reshape(-1)


def dropped_reason(key: str) -> str | None:
    return next((reason for prefix, reason in DROPPED.items() if key.startswith(prefix)), None)


def _check_pixel_stats(key: str, value: torch.Tensor) -> None:
    expected = torch.tensor(PIXEL_STATS[key]).view(-1)
    if value.numel() != expected.numel() or not torch.allclose(value.float().view(-1), expected, atol=1e-2):
        raise StageError(
            f"{key} = {value.view(-1).tolist()} differs from the ImageNet statistics lrtl normalises with "
            f"({expected.tolist()}): the checkpoint expects other input normalisation"
        )


def convert_state_dict(reference: Mapping[str, torch.Tensor], model: SegmentationModel) -> dict[str, torch.Tensor]:
    """Reference state dict -> the paper model's trainable state dict (every tensor filled) or a StageError."""
    if not getattr(model, "reference", False):
        raise StageError("the model config is not the paper model (a DINO backbone): nothing to convert into")
    target = model.trainable_state_dict()
    levels = len(model.levels)
    permutation = key_permutation(model.backbone.dim, model.backbone.heads)
    shared = SHARED_NORM.format(deepest=levels)
    out: dict[str, torch.Tensor] = {}
    errors: list[str] = []
    for key, value in reference.items():
        if dropped_reason(key) is not None:
            continue
        if key in PIXEL_STATS:
            _check_pixel_stats(key, value)
            continue
        copy_of = next((shared + key[len(p) :] for p in SHARED_NORM_COPIES if key.startswith(p)), None)
        if copy_of is not None:
            if copy_of not in reference or not torch.equal(reference[copy_of], value):
                errors.append(f"{key}: should be a copy of the shared GroupNorm {copy_of} but differs or it is absent")
            continue
        name = lrtl_name(key, levels)
        if name is None or name not in target:
            errors.append(f"{key}: no counterpart in lrtl's paper model (name {name}) and not a known dropped tensor")
            continue
        value = value.to(target[name].dtype)
        if any(re.fullmatch(pattern, name) for pattern in READS_VIT):
            if value.shape[1] != permutation.numel():
                errors.append(f"{key}: reads {value.shape[1]} channels, the ViT gives {permutation.numel()}")
                continue
            value = value[:, permutation]  # reference d * heads + h -> lrtl h * head_dim + d
        if value.shape != target[name].shape:
            errors.append(f"{key} -> {name}: shape {tuple(value.shape)} != lrtl {tuple(target[name].shape)}")
            continue
        out[name] = value.contiguous()
    errors += [f"{name}: no reference tensor fills this lrtl tensor" for name in target if name not in out]
    if errors:
        raise StageError("reference checkpoint does not convert:\n  " + "\n  ".join(errors))
    return out


class _Unresolved:
    """Stands in for a pickled object whose class lrtl cannot import (e.g. the reference's own RNG-state or
    EMA classes in a checkpoint's non-model entries); its state is discarded."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            log.warning("reference checkpoint: %s.%s is not importable here; that entry is ignored", module, name)
            return _Unresolved


def _tolerant_pickle() -> types.ModuleType:
    module = types.ModuleType("lrtl_tolerant_pickle")
    module.Unpickler = _TolerantUnpickler
    module.load = lambda file, **kwargs: _TolerantUnpickler(file, **kwargs).load()
    return module


def read_reference(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A detectron2 checkpoint file -> (its 'model' state dict, the other entries that are plain numbers).

    Classes that only the reference's code defines (outside 'model') do not stop the reading."""
    if not path.is_file():
        raise StageError(f"{path}: no reference checkpoint here (download it: see README, released checkpoints)")
    raw = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle())
    state = raw.get("model") if isinstance(raw, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StageError(f"{path}: not a detectron2 checkpoint ({{'model': state_dict}})")
    info = {k: v for k, v in raw.items() if k != "model" and isinstance(v, (int, float, str))}
    return state, info


def run_convert(*, reference: Path, model_cfg: dict[str, Any], out: Path) -> None:
    model = build_model(model_cfg)
    state, info = read_reference(reference)
    converted = convert_state_dict(state, model)
    model.load_state_dict(converted, strict=False)  # the frozen backbone comes from its own weights
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": converted,
        "model_cfg": dict(model_cfg),
        "params": {"compat": "reference"},  # trained by the reference's code: scored under its conventions
        "step": info.get("iteration"),
        "lrtl_version": __version__,
        "torch_version": torch.__version__,
        "git_sha": None,
        "backbone_sha256": getattr(model.backbone, "weights_sha256", None),
        "selected_on": "released by the authors (karazijal/lrtl), converted by lrtl.convert",
        "checkpoint_rule": "released",  # lrtl.tables labels its rows "released checkpoint, scored by lrtl"
        "converted_from": {"path": str(reference), "sha256": file_sha256(reference), **info},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(checkpoint, tmp)
    log.info("converted %d reference tensors into %d lrtl tensors -> %s", len(state), len(converted), out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.convert", description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="reference checkpoint (.pth, detectron2)")
    parser.add_argument("--model", type=json_params, required=True, help="JSON of the paper run's model section")
    parser.add_argument("--out", type=Path, required=True, help="lrtl checkpoint to write (.pt)")
    run_stage(
        "convert",
        lambda args: run_convert(reference=args.reference, model_cfg=args.model, out=args.out),
        parser,
        argv,
    )


if __name__ == "__main__":
    main()
