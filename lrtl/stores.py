"""Zarr v3 layouts of every artefact, written atomically (temp + rename), with self-describing attrs.

Layouts (all arrays of one store share the store's `format_version`):

frames   results/{dataset}/frames/{sequence}.zarr
    rgb       uint8   [T, H, W, 3]   frames at the configured resolution, chunk = one frame
    gt        bool    [A, Hg, Wg]    binary foreground at the annotation's native resolution (A may be 0)
    gt_index  int32   [A]            frame index of each annotation
    attrs: dataset, sequence, n_frames, height, width, frame_names, source, missing_annotations (names of the
           frames without a mask where the layout annotates every frame: allowed by datasets.<d>.missing_annotations)
flow     results/{dataset}/flow/{sequence}.zarr
    forward_{g}   float32 [T, H, W, 2]   flow t -> t+g in pixels (u, v); rows t >= T-g are zero, invalid
    backward_{g}  float32 [T, H, W, 2]   flow t -> t-g; rows t < g are zero, invalid
    attrs: gaps, backend, params, height, width, n_frames
masks    results/{dataset}/masks/{run}/{sequence}.zarr
    soft      float16 [T, K, h, w]   softmax masks of the model
    merged    float16 [T, 2, h, w]   the K masks merged into 2 groups (sum of soft masks per group)
    attrs: run, k, height, width, merge
tracks   results/{dataset}/tracks/{sequence}/chunk-{chunk}.zarr   (see lrtl.track_store for the layout)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from lrtl import __version__
from lrtl.cli import StageError

FORMAT_VERSION = 1
COMPRESSORS = (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),)


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `out`; on success it replaces `out`, on error it is removed."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(out)
    os.replace(tmp, out)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_text(out: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def write_json(out: str | os.PathLike, value: Any) -> None:
    write_text(out, json.dumps(value, indent=2, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- generic store access


def store_attrs(kind: str, **attrs: Any) -> dict[str, Any]:
    """The attrs every store carries, plus the stage's own."""
    return {"kind": kind, "format_version": FORMAT_VERSION, "lrtl_version": __version__, **attrs}


def create_group(path: Path, kind: str, **attrs: Any) -> zarr.Group:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs.update(_jsonable(store_attrs(kind, **attrs)))
    return group


def create_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple[int, ...] | None = None) -> None:
    """Write `data` as a compressed array; `chunks` defaults to one item along the first axis."""
    data = np.asarray(data)
    if chunks is None:
        chunks = (1, *data.shape[1:]) if data.ndim else ()
    chunks = tuple(max(1, c) for c in chunks)
    array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, compressors=COMPRESSORS)
    if data.size:
        array[...] = data


# The rule that writes each kind of store, and the results-map folder (STYLE.md §8) that holds it.
PRODUCERS = {"frames": "prepare_frames", "flow": "compute_flow", "tracks": "track_chunk",
             "masks": "infer_masks (baseline_masks for run baseline)", "synthetic_gt": "make_synthetic"}
FOLDER_KINDS = {"frames": "frames", "flow": "flow", "tracks": "tracks", "masks": "masks",
                "GroundTruth": "synthetic_gt"}


def missing_store(path: Path, kind: str | None = None) -> StageError:
    """The error for a store that is not there: its path, the rule that makes it and the command to run.

    Without `kind` the rule is looked up from the path's results-map folder, as a hint only."""
    if kind is None:
        kind = next((FOLDER_KINDS[part] for part in reversed(path.parts[:-1]) if part in FOLDER_KINDS), None)
    maker = f"rule {PRODUCERS[kind]} makes it" if kind in PRODUCERS else "the pipeline makes it"
    return StageError(f"{path}: no zarr store here; {maker}: run `snakemake {path}`")


def open_store(path: str | os.PathLike, kind: str) -> zarr.Group:
    """Open a store read-only, checking that it exists, is of `kind` and of the current format."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise missing_store(path, kind)
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("kind") != kind:
        raise StageError(f"{path}: expected a {kind} store, found kind={attrs.get('kind')!r}")
    if attrs.get("format_version") != FORMAT_VERSION:
        raise StageError(
            f"{path}: format_version {attrs.get('format_version')} differs from this lrtl's {FORMAT_VERSION}; "
            f"delete it and rerun snakemake to rebuild it"
        )
    return group


def store_path(group: zarr.Group) -> Path:
    """The folder of an open local store (for messages)."""
    return Path(getattr(group.store, "root", str(group.store)))


def check_finite(values: np.ndarray, store: str | os.PathLike, kind: str, array: str, first_frame: int = 0
                 ) -> None:
    """Stop with the store, array, frame and fix when `values` (frames along axis 0) hold NaN or inf.

    Every stage that reads flow, tracks or masks calls this at load, before anything is written from them;
    `kind` (a PRODUCERS key) names the rule that rebuilds the store.
    """
    bad = ~np.isfinite(values)
    if not bad.any():
        return
    frames = first_frame + np.flatnonzero(bad.reshape(len(bad), -1).any(axis=1))
    maker = f"rule {PRODUCERS[kind]}" if kind in PRODUCERS else "the rule that made it"
    raise StageError(
        f"{store}: {array} has {int(bad.sum())} non-finite value(s) at frame(s) {frames[:8].tolist()}"
        f"{' ...' if len(frames) > 8 else ''}; the store is corrupt: rebuild it with {maker} "
        f"(snakemake --cores 1 --forcerun {str(store)!r}), nothing was written from it"
    )


REQUIRED_ARRAYS = {"frames": ("rgb", "gt", "gt_index"), "masks": ("soft", "merged")}


def validate(path: str | os.PathLike) -> dict[str, Any]:
    """Check a store's kind, format and required arrays; return its attrs."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise missing_store(path)
    group = zarr.open_group(str(path), mode="r")
    kind = group.attrs.get("kind")
    group = open_store(path, kind)
    names = set(group.array_keys())
    missing = [name for name in REQUIRED_ARRAYS.get(kind, ()) if name not in names]
    if kind == "flow":
        missing += [f"{d}_{g}" for g in group.attrs["gaps"] for d in ("forward", "backward")
                    if f"{d}_{g}" not in names]
    if missing:
        raise StageError(f"{path}: {kind} store lacks arrays {missing}")
    return dict(group.attrs)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- frames


def write_frames(out: str | os.PathLike, rgb: np.ndarray, gt: np.ndarray, gt_index: np.ndarray,
                 **attrs: Any) -> None:
    """rgb uint8 [T, H, W, 3]; gt bool [A, Hg, Wg]; gt_index int [A]."""
    n_frames, height, width, _ = rgb.shape
    with atomic_path(out) as tmp:
        group = create_group(tmp, "frames", n_frames=n_frames, height=height, width=width, **attrs)
        create_array(group, "rgb", rgb.astype(np.uint8))
        create_array(group, "gt", gt.astype(bool))
        create_array(group, "gt_index", np.asarray(gt_index, dtype=np.int32), chunks=(max(1, len(gt_index)),))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """All frames, uint8 [T, H, W, 3]; a store holding anything else stops naming it and the fix."""
    rgb = open_store(path, "frames")["rgb"][...]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3 or not rgb.shape[0]:
        raise StageError(f"{path}: rgb is {rgb.dtype} {list(rgb.shape)}, not uint8 [T>0, H, W, 3]; the store is "
                         f"corrupt: rebuild it with rule prepare_frames (snakemake --cores 1 --forcerun "
                         f"{str(path)!r})")
    return rgb


def read_ground_truth(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(gt bool [A, Hg, Wg], gt_index int32 [A]) of a frames store."""
    group = open_store(path, "frames")
    return group["gt"][...], group["gt_index"][...]


# --------------------------------------------------------------------------- flow


def flow_name(gap: int) -> str:
    """Array name of the flow t -> t+gap (gap may be negative)."""
    return f"forward_{gap}" if gap > 0 else f"backward_{-gap}"


def write_flow(out: str | os.PathLike, flows: Mapping[int, np.ndarray], **attrs: Any) -> None:
    """flows: signed gap -> float32 [T, H, W, 2]; both directions of every gap must be present."""
    gaps = sorted({abs(g) for g in flows})
    if not gaps:
        raise ValueError(f"write_flow: no flow for {out} (a sequence of fewer than 2 frames has none)")
    missing = [g for a in gaps for g in (a, -a) if g not in flows]
    if missing:
        raise ValueError(f"write_flow: missing gaps {missing}")
    n_frames, height, width, _ = flows[gaps[0]].shape
    with atomic_path(out) as tmp:
        group = create_group(tmp, "flow", gaps=gaps, n_frames=n_frames, height=height, width=width, **attrs)
        for gap, flow in flows.items():
            create_array(group, flow_name(gap), flow.astype(np.float32))


def open_flow(path: str | os.PathLike) -> zarr.Group:
    return open_store(path, "flow")


def read_flow(group: zarr.Group, gap: int, frame: int) -> np.ndarray:
    """Flow frame -> frame+gap, float32 [H, W, 2]; a StageError names the store if it does not exist."""
    n_frames = group.attrs["n_frames"]
    if abs(gap) not in group.attrs["gaps"]:
        raise StageError(f"{group.store}: no flow for gap {gap} (has {group.attrs['gaps']}); add it to flow.gaps")
    if not 0 <= frame + gap < n_frames or not 0 <= frame < n_frames:
        raise StageError(f"{group.store}: flow {frame} -> {frame + gap} is outside the {n_frames} frames")
    field = group[flow_name(gap)][frame]  # [H, W, 2]
    check_finite(field[None], store_path(group), "flow", flow_name(gap), frame)
    return field


# --------------------------------------------------------------------------- masks


def write_masks(out: str | os.PathLike, soft: np.ndarray, merged: np.ndarray, **attrs: Any) -> None:
    """soft float [T, K, h, w]; merged float [T, 2, h', w'] (the model's size, or the frames store's when refined)."""
    n_frames, k, height, width = soft.shape
    with atomic_path(out) as tmp:
        group = create_group(tmp, "masks", n_frames=n_frames, k=k, height=height, width=width, **attrs)
        create_array(group, "soft", soft.astype(np.float16))
        create_array(group, "merged", merged.astype(np.float16))


def write_baseline_masks(out: str | os.PathLike, merged: np.ndarray, frame_attrs: Mapping[str, Any], run: str,
                         params: Mapping[str, Any]) -> None:
    """The masks store of a no-learning baseline (flow or tracks): merged float [T, 2, h, w] doubles as the soft
    masks (K = 2); no checkpoint, seed or compat mode."""
    write_masks(out, merged, merged, run=run, dataset=frame_attrs.get("dataset"),
                sequence=frame_attrs.get("sequence"), merge="baseline", params=dict(params), checkpoint_rule="none",
                seed=None, compat=None)


def read_masks(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(soft float32 [T, K, h, w], merged float32 [T, 2, h', w'], attrs)."""
    group = open_store(path, "masks")
    soft, merged = group["soft"][...].astype(np.float32), group["merged"][...].astype(np.float32)
    check_finite(soft, path, "masks", "soft")
    check_finite(merged, path, "masks", "merged")
    return soft, merged, dict(group.attrs)
