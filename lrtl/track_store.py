"""The tracks chunk store: layout, resumable writing, and the per-sequence reader used by training.

One zarr v3 store per (sequence, chunk): results/{dataset}/tracks/{sequence}/chunk-{chunk}.zarr

    tracks        float32 [Q, T_w, N_max, 2]  pixel (x, y) at frame resolution, at frames
                                              window_start[i] .. window_start[i] + T_w - 1
                  or int16 (storage: fixed16): round(16 x), attrs scale 1/16 (|x| < 2048 px, error <= 1/32 px)
    vis           bool    [Q, T_w, N_max]     visible (padding points beyond n_points[i] are never visible)
    query_xy      float32 [Q, N_max, 2]       grid point of each track at its query frame (row-major grid)
    n_points      int32   [Q]                 points of query frame i (a grid column fewer at some offsets)
    query_frames  int32   [Q]                 sequence index of each query frame
    window_start  int32   [Q]                 first frame of each query frame's window
    done          uint8   [Q]                 1 once query frame i is completely written (resume record)
    attrs: kind "tracks", format_version, lrtl_version, dataset, sequence, chunk, backend, params (the whole
           `tracks` config section), n_frames, height, width, window (T_w), stride, storage, complete, and the
           backend's provenance (co-tracker commit, checkpoint sha256).

Zarr chunks are (1 query frame, 16 frames, all points, ...), so training reads one query frame's points over
the few frames it needs.  While a job runs it writes into the undeclared sibling `<out>.partial/`; each query
frame's arrays are written before its `done` flag (zarr's LocalStore writes every chunk file atomically), and
the finished store is renamed onto `<out>` in one step.  A partial store whose signature (params, format
version, sequence, chunk, frame size, and the backend's weights identity: the CoTracker checkpoint's sha256)
differs is discarded with a warning and the job starts fresh.

The per-sequence `index.json` (written by `python -m lrtl.tracks index`) lists the chunks, relative to itself.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from lrtl import stores
from lrtl.cli import StageError

log = logging.getLogger(__name__)

KIND = "tracks"
TIME_CHUNK = 16
FIXED_SCALE = 16  # fixed16: 1/16 px steps
STORAGES = ("float32", "fixed16")


def partial_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".partial")


def _canonical(value: Any) -> str:
    return json.dumps(stores._jsonable(value), sort_keys=True)


def encode_tracks(tracks: np.ndarray, storage: str) -> np.ndarray:
    """float [..., 2] pixels -> the stored dtype."""
    if storage == "fixed16":
        limit = np.iinfo(np.int16).max
        scaled = np.nan_to_num(tracks * FIXED_SCALE, nan=0.0, posinf=limit, neginf=-limit)
        return np.clip(np.rint(scaled), -limit, limit).astype(np.int16)
    return tracks.astype(np.float32)


def decode_tracks(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.int16:
        return stored.astype(np.float32) / FIXED_SCALE
    return stored.astype(np.float32, copy=False)


class PartialChunk:
    """The in-progress store of one chunk job; reused after a kill when its signature matches."""

    def __init__(self, out: str | os.PathLike, *, signature: Mapping[str, Any], query_frames: np.ndarray,
                 window_start: np.ndarray, query_xy: np.ndarray, n_points: np.ndarray, window: int,
                 storage: str, extra_attrs: Mapping[str, Any]) -> None:
        if storage not in STORAGES:
            raise StageError(f"tracks.storage must be one of {STORAGES}, not {storage!r}")
        self.out = Path(out)
        self.path = partial_path(out)
        self.signature = dict(signature)
        self.group = self._reuse() or self._create(query_frames, window_start, query_xy, n_points, window,
                                                   storage, extra_attrs)
        self.storage = storage
        self.done = self.group["done"][...].astype(bool)  # [Q]

    def _reuse(self) -> zarr.Group | None:
        if not self.path.exists():
            return None
        try:
            group = zarr.open_group(str(self.path), mode="r+")
            recorded = group.attrs.get("signature")
            done = int(group["done"][...].sum())
        except Exception as err:  # an unreadable leftover of a killed job
            log.warning("partial store %s is unreadable (%s); starting fresh", self.path, err)
            return None
        if _canonical(recorded) != _canonical(self.signature):
            old, new = recorded or {}, stores._jsonable(self.signature)
            diff = sorted(k for k in set(old) | set(new) if _canonical(old.get(k)) != _canonical(new.get(k)))
            log.warning("partial store %s was written with different %s; discarding it and starting fresh",
                        self.path, diff)
            return None
        log.info("resuming %s: %d of %d query frames already done", self.path, done, group["done"].shape[0])
        return group

    def _create(self, query_frames, window_start, query_xy, n_points, window, storage,
                extra_attrs) -> zarr.Group:
        stores._remove(self.path)
        n_queries, n_max = query_xy.shape[:2]
        group = stores.create_group(self.path, KIND, **extra_attrs, window=window, storage=storage,
                                    signature=self.signature, complete=False)
        time_chunk = min(TIME_CHUNK, window)
        dtype = np.int16 if storage == "fixed16" else np.float32
        tracks = group.create_array("tracks", shape=(n_queries, window, n_max, 2), dtype=dtype,
                                    chunks=(1, time_chunk, max(1, n_max), 2), compressors=stores.COMPRESSORS,
                                    fill_value=0)
        if storage == "fixed16":
            tracks.attrs.update({"scale": 1.0 / FIXED_SCALE, "offset": 0.0, "units": "px"})
        group.create_array("vis", shape=(n_queries, window, n_max), dtype=bool,
                           chunks=(1, time_chunk, max(1, n_max)), compressors=stores.COMPRESSORS,
                           fill_value=False)
        stores.create_array(group, "query_xy", query_xy.astype(np.float32))
        for name, values in (("n_points", n_points), ("query_frames", query_frames),
                             ("window_start", window_start)):
            stores.create_array(group, name, np.asarray(values, np.int32), chunks=(n_queries,))
        group.create_array("done", shape=(n_queries,), dtype=np.uint8, chunks=(1,), fill_value=0,
                           compressors=None)
        return group

    def write(self, index: int, tracks: np.ndarray, vis: np.ndarray) -> None:
        """Store query frame `index` (tracks [T_w, n, 2], vis [T_w, n]) and then mark it done.

        Written one zarr chunk (16 frames) at a time, so the temporaries stay a fraction of the window.
        """
        n = tracks.shape[1]
        out_tracks, out_vis = self.group["tracks"], self.group["vis"]
        window, n_max = out_vis.shape[1:]
        step = out_vis.chunks[1]
        for t0 in range(0, window, step):
            t1 = min(window, t0 + step)
            block = np.zeros((t1 - t0, n_max, 2), out_tracks.dtype)  # [16, N_max, 2]
            block[:, :n] = encode_tracks(tracks[t0:t1], self.storage)
            out_tracks[index, t0:t1] = block
            block_vis = np.zeros((t1 - t0, n_max), bool)  # [16, N_max]
            block_vis[:, :n] = vis[t0:t1]
            out_vis[index, t0:t1] = block_vis
        self.group["done"][index] = 1
        self.done[index] = True

    def finish(self, attrs: Mapping[str, Any]) -> None:
        """Record completion and move the partial store onto `out` atomically."""
        if not self.done.all():
            missing = np.flatnonzero(~self.done).tolist()
            raise RuntimeError(f"{self.path}: query frames {missing} are not done")
        self.group.attrs.update(stores._jsonable({**attrs, "complete": True}))
        stores._remove(self.out)
        os.replace(self.path, self.out)


# --------------------------------------------------------------------------- reading


def open_chunk(path: str | os.PathLike) -> zarr.Group:
    """A finished chunk store, checked for kind, format version and completeness."""
    group = stores.open_store(path, KIND)
    if not group.attrs.get("complete"):
        raise StageError(f"{path}: tracks chunk is incomplete; delete it and rerun snakemake")
    return group


INDEX_KEYS = ("format_version", "sequence", "n_frames", "height", "width", "window", "chunks")
CHUNK_KEYS = ("path", "query_frames")


def read_index(path: Path) -> dict[str, Any]:
    """The parsed index.json, checked for format version and the keys the reader uses; a corrupt or
    incomplete file is a StageError naming it and the fix."""
    fix = index_fix(path)
    try:
        index = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: tracks index is not valid JSON ({err}); {fix}") from err
    if not isinstance(index, dict):
        raise StageError(f"{path}: tracks index is not a JSON object; {fix}")
    if "format_version" in index and index["format_version"] != stores.FORMAT_VERSION:
        raise StageError(f"{path}: format_version {index['format_version']} differs from "
                         f"{stores.FORMAT_VERSION}; delete the tracks folder and rerun snakemake")
    missing = [key for key in INDEX_KEYS if key not in index]
    chunks = index.get("chunks", [])  # absent: already listed as missing
    if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
        missing.append("chunks as a list of objects")
    else:
        missing += sorted({f"chunks[].{key}" for c in chunks for key in CHUNK_KEYS if key not in c})
    if missing:
        raise StageError(f"{path}: tracks index lacks {missing}; {fix}")
    return index


def index_fix(path: Path) -> str:
    return f"delete it and rerun the index rule (snakemake {path}; rule index_tracks)"


class SequenceTracks:
    """All query frames of one sequence, read through its index.json; open chunk stores are cached."""

    def __init__(self, index_json: str | os.PathLike) -> None:
        self.index_path = Path(index_json)
        if not self.index_path.is_file():
            raise StageError(f"{index_json}: no tracks index; produce it with snakemake {index_json}")
        self.index = read_index(self.index_path)
        self._where: dict[int, tuple[int, int]] = {}
        try:
            self.n_frames = int(self.index["n_frames"])
            self.height = int(self.index["height"])
            self.width = int(self.index["width"])
            self.window = int(self.index["window"])
            for c, chunk in enumerate(self.index["chunks"]):
                for i, q in enumerate(chunk["query_frames"]):
                    self._where[int(q)] = (c, i)
        except (TypeError, ValueError) as err:
            raise StageError(f"{index_json}: tracks index holds a non-integer frame count, size or query frame "
                             f"({err}); {index_fix(self.index_path)}") from err
        self._open: dict[int, dict[str, Any]] = {}

    @cached_property
    def sequence(self) -> str:
        return self.index["sequence"]

    def _chunk(self, c: int) -> dict[str, Any]:
        if c not in self._open:
            path = self.index_path.parent / self.index["chunks"][c]["path"]
            group = open_chunk(path)
            self._open[c] = {"path": path, "tracks": group["tracks"], "vis": group["vis"],
                             "n_points": group["n_points"][...], "window_start": group["window_start"][...],
                             "query_xy": group["query_xy"]}
        return self._open[c]

    def query(self, q: int, frames: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Tracks of query frame q: (tracks float32 [T_w, N, 2] pixel xy, vis bool [T_w, N], window_start).

        `frames=(start, stop)` reads only the sequence frames start..stop-1 clipped to the window; the
        returned start is then the first frame returned.
        """
        if q not in self._where:
            raise KeyError(f"{self.index_path}: frame {q} is not a query frame (0..{self.n_frames - 1})")
        c, i = self._where[q]
        chunk = self._chunk(c)
        n, start = int(chunk["n_points"][i]), int(chunk["window_start"][i])
        lo, hi = 0, self.window
        if frames is not None:
            lo = min(max(frames[0] - start, 0), self.window)
            hi = max(min(frames[1] - start, self.window), lo)
        tracks = decode_tracks(chunk["tracks"][i, lo:hi, :n])  # [T, N, 2]
        if not np.isfinite(tracks).all():
            bad = int((~np.isfinite(tracks)).sum())
            raise StageError(f"{chunk['path']}: query frame {q} has {bad} non-finite track value(s); the chunk "
                             f"is corrupt: rebuild it with rule track_chunk (snakemake --cores 1 --forcerun "
                             f"{str(chunk['path'])!r})")
        vis = chunk["vis"][i, lo:hi, :n]  # [T, N]
        return tracks, vis, start + lo

    def query_xy(self, q: int) -> np.ndarray:
        """Grid points of query frame q, float32 [N, 2]."""
        c, i = self._where[q]
        chunk = self._chunk(c)
        return chunk["query_xy"][i, : int(chunk["n_points"][i])]


def open_sequence_tracks(index_json: str | os.PathLike) -> SequenceTracks:
    return SequenceTracks(index_json)
