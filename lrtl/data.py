"""Training items from the frames, flow and tracks stores (METHOD.md §4, §5).

An item is 4 frames [F, F+g, F+o, F+o+g] (o = pair_offset, paper 5; the shifted variant [F-o, F-o+g, F, F+g]
near the end) of one sequence with one shared random horizontal flip. Per frame it holds

    rgb      uint8   [h, w, 3]     resized to the model input size
    flow     float32 [2, hf, wf]   forward F -> F+g (positions 0, 2) or backward F+g -> F (1, 3), pixels at
                                   the flow loss resolution, clamped to +-flow_clamp
    flow_weight float32 [hf, wf] only with data.flow_confidence or data.flow_texture: the fraction of each cell's
                                   pixels whose flow passes the forward-backward check (lrtl.flow_confidence),
                                   times the fraction that is textured (lrtl.flow_fill), the flow loss weight
    tracks   float32 [C, N, 2]     smoothed context-window tracks, pixel (x, y) at the tracks' resolution
    vis      bool    [C, N]        visibility of those tracks
    loc      float32 [N, 2]        unsmoothed position at the frame, x / (W - 1) * 2 - 1 (same for y)
    t_index  int64                 index of the frame inside its C-frame context window
    flow_input float32 [2, h, w]   only for a model that takes flow (lrtl.model_inputs): the frame's encoded
                                   gap-1 motion at the model input size, whatever the item's gap

Items are keyed by an integer: item `key` is drawn by a generator seeded with (seed, key), so the stream of
items is the same for any number of DataLoader workers and a resumed run continues it exactly.

Frames and flow of every sequence are preloaded (resized) once; tracks are read per query frame through
`lrtl.track_store.open_sequence_tracks` and kept in a per-process LRU cache.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from lrtl import stores
from lrtl.cli import StageError
from lrtl.flow_confidence import consistency_weights, consistent
from lrtl.flow_fill import textured_fraction
from lrtl.imageops import resize_flow, resize_rgb
from lrtl.model_inputs import read_input_flow
from lrtl.runtime import limit_threads
from lrtl.track_store import SequenceTracks, open_sequence_tracks
from lrtl.train_params import DataParams

log = logging.getLogger(__name__)

COORD_LIMIT = 1e6  # ±inf -> ±1e6 (METHOD.md §4 step 5)
LOC_LIMIT = 3.0  # normalised loc clamp (§4 step 4)
FAR_FACTOR = 20.0  # x clamped to ±20 W, y to ±20 H (§4 step 5)


SAMPLINGS = ("frame_uniform", "sequence_uniform")


@dataclasses.dataclass
class SequenceData:
    name: str
    n_frames: int
    rgb: np.ndarray  # uint8 [T, h, w, 3] at the model input size
    flow_path: Path
    flow: dict[int, np.ndarray] | None  # preloaded: signed gap -> float32 [T, 2, hf, wf] (invalid rows zero)
    tracks_index: Path
    input_flow: np.ndarray | None = None  # float32 [T, 2, h, w] network flow input (lrtl.model_inputs), or None
    flow_weight: dict[int, np.ndarray] | None = None  # preloaded: signed gap -> float32 [T, hf, wf], or None
    texture: np.ndarray | None = None  # float32 [T, hf, wf]: textured fraction of each loss cell (data.flow_texture)


# --------------------------------------------------------------------------- pure sampling steps


def draw_item(
    rng: np.random.Generator, n_frames: Sequence[int], gaps: Sequence[int], sampling: str
) -> tuple[int, int, int]:
    """(sequence index, gap, base frame F) of one training item (METHOD.md §5, §11 item 15).

    frame_uniform: uniform over every (sequence, gap, F) with F + gap inside the sequence, as the reference's
    shuffled item list (karazijal/lrtl datasets/scan_dataset_2.py), so a sequence is drawn in proportion to its
    length; drawn with replacement per key where the reference shuffles once per epoch (the same frequencies).
    sequence_uniform: a sequence uniformly, then a gap, then F: every sequence equally often, whatever its length.
    """
    if sampling == "sequence_uniform":
        seq = int(rng.integers(len(n_frames)))
        gap = int(gaps[rng.integers(len(gaps))])
        return seq, gap, int(rng.integers(0, n_frames[seq] - gap))
    if sampling != "frame_uniform":
        raise StageError(f"train.data.sampling must be one of {SAMPLINGS}, not {sampling!r}")
    counts = np.array([max(n - gap, 0) for n in n_frames for gap in gaps])  # items per (sequence, gap)
    index = int(rng.integers(counts.sum()))
    cell = int(np.searchsorted(np.cumsum(counts), index, side="right"))
    seq, gap_index = divmod(cell, len(gaps))
    return seq, int(gaps[gap_index]), index - int(counts[:cell].sum())


def item_frames(n_frames: int, base: int, gap: int, offset: int) -> list[int]:
    """[F, F+g, F+o, F+o+g], or [F-o, F-o+g, F, F+g] when F+o+g is past the end (METHOD.md §5)."""
    if base + offset + gap > n_frames - 1:
        base = max(base - offset, 0)
    frames = [base, base + gap, base + offset, base + offset + gap]
    if frames[-1] > n_frames - 1:
        raise ValueError(
            f"a sequence of {n_frames} frames is too short for gap {gap} and pair offset {offset}"
        )
    return frames


def query_frames(t: int, n_frames: int) -> list[int]:
    """The query frames whose tracks are candidates for frame t: {t-1, t, t+1}, shifted inside [0, T)."""
    if n_frames < 3:
        return list(range(n_frames))
    first = min(max(t - 1, 0), n_frames - 3)
    return [first, first + 1, first + 2]


def context_window(t: int, n_frames: int, context: int) -> tuple[int, int, int, int]:
    """(start, stop, pad_before, t_index): the C frames around t (METHOD.md §4 step 8).

    T >= C: frames [start, start + C) with start = clamp(t - C // 2, 0, T - C), no padding.
    T < C: all T frames, reflect-padded to C with (C - T) // 2 frames before; t_index = t + (C - T) // 2.
    """
    if n_frames >= context:
        start = min(max(t - context // 2, 0), n_frames - context)
        return start, start + context, 0, t - start
    pad_before = (context - n_frames) // 2
    return 0, n_frames, pad_before, t + pad_before


def moving_average(values: np.ndarray, valid: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred moving average over axis 0 counting only `valid` entries; padded entries are not counted.

    values [L, N, 2], valid bool [L, N] -> (averages [L, N, 2], count [L, N]); average 0 where count is 0.
    """
    half = window // 2
    weight = valid.astype(np.float64)
    sums = np.concatenate([np.zeros((1, *values.shape[1:])), np.cumsum(values * weight[..., None], axis=0)])
    counts = np.concatenate([np.zeros((1, *valid.shape[1:])), np.cumsum(weight, axis=0)])
    length = values.shape[0]
    hi = np.minimum(np.arange(length) + half + 1, length)
    lo = np.maximum(np.arange(length) - half, 0)
    total = sums[hi] - sums[lo]  # [L, N, 2]
    count = counts[hi] - counts[lo]  # [L, N]
    averages = total / np.maximum(count, 1.0)[..., None]
    return averages.astype(np.float32), count


def hold_edges(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill entries where `valid` is False with the nearest valid entry along axis 0 (earlier, else later)."""
    length = values.shape[0]
    index = np.where(valid, np.arange(length)[:, None], -1)  # [L, N]
    forward = np.maximum.accumulate(index, axis=0)
    index_rev = np.where(valid[::-1], np.arange(length)[:, None], -1)
    backward = (length - 1 - np.maximum.accumulate(index_rev, axis=0))[::-1]
    source = np.where(forward >= 0, forward, np.minimum(backward, length - 1))
    return np.take_along_axis(values, source[..., None], axis=0)


def clean_tracks(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """NaN -> 0, ±inf -> ±1e6, then x clamped to ±20 W and y to ±20 H (METHOD.md §4 step 5)."""
    xy = np.nan_to_num(xy.astype(np.float32), nan=0.0, posinf=COORD_LIMIT, neginf=-COORD_LIMIT, copy=False)
    limit = np.array([FAR_FACTOR * width, FAR_FACTOR * height], dtype=np.float32)
    np.minimum(xy, limit, out=xy)
    np.maximum(xy, -limit, out=xy)
    return xy


def normalise_loc(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel (x, y) [N, 2] -> x / (W - 1) * 2 - 1, y / (H - 1) * 2 - 1, NaN -> 0, clamped to ±3 (§4.4)."""
    scale = np.array([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=np.float64)
    loc = xy.astype(np.float64) * scale - 1.0
    return np.clip(np.nan_to_num(loc, nan=0.0), -LOC_LIMIT, LOC_LIMIT).astype(np.float32)


def sample_frame_tracks(
    queries: Sequence[tuple[np.ndarray, np.ndarray, int]],
    t: int,
    n_frames: int,
    *,
    height: int,
    width: int,
    n_tracks: int,
    context: int,
    smooth: int,
    min_visibility: float,
    rng: np.random.Generator,
    compat_reference: bool,
) -> dict[str, Any]:
    """Training tracks of frame t from the tracks of its query frames (METHOD.md §4 steps 1-9).

    queries: per query frame (tracks float32 [T_w, n, 2] pixel xy, vis bool [T_w, n], window_start).
    Returns tracks float32 [C, N, 2], vis bool [C, N], loc float32 [N, 2], t_index int, n_valid int.
    lrtl default vs compat_reference (METHOD.md §11 items 4, 5): the visibility mean is over the track's
    source window (reference: over all T frames); the moving average counts only in-window frames and
    out-of-window frames hold the nearest in-window value (reference: zeros enter the average).
    """
    # 1-2: candidates visible at t with enough mean visibility
    groups = []  # (query index, candidate columns)
    for index, (tr, vis, start) in enumerate(queries):
        if not start <= t < start + tr.shape[0]:
            continue
        denominator = n_frames if compat_reference else tr.shape[0]
        keep = vis[t - start] & (vis.sum(axis=0) / denominator > min_visibility)
        groups.append((index, np.flatnonzero(keep)))
    n_valid = sum(len(cols) for _, cols in groups)
    start, stop, pad_before, t_index = context_window(t, n_frames, context)
    if n_valid == 0:
        log.warning("frame %d: no valid tracks; the item carries zero tracks", t)
        return {
            "tracks": np.zeros((context, n_tracks, 2), np.float32),
            "vis": np.zeros((context, n_tracks), bool),
            "loc": np.zeros((n_tracks, 2), np.float32),
            "t_index": t_index,
            "n_valid": 0,
        }
    # 3: N draws without replacement, topped up with replacement when fewer are valid
    if n_valid >= n_tracks:
        chosen = rng.choice(n_valid, n_tracks, replace=False)
    else:
        chosen = np.concatenate([np.arange(n_valid), rng.integers(0, n_valid, n_tracks - n_valid)])
    chosen.sort()  # the losses ignore track order; sorted, each query frame's share is a slice
    # place the chosen tracks on the timeline frames [lo, hi): the context window plus the smoothing margin
    half = smooth // 2
    lo, hi = max(start - half, 0), min(stop + half, n_frames)
    positions = np.zeros((hi - lo, n_tracks, 2), np.float32)  # [L, N, 2]
    in_window = np.zeros((hi - lo, n_tracks), bool)  # [L, N] inside the track's source window
    visible = np.zeros((hi - lo, n_tracks), bool)
    loc_xy = np.zeros((n_tracks, 2), np.float32)
    offsets = np.cumsum([0] + [len(cols) for _, cols in groups])
    bounds = np.searchsorted(chosen, offsets)  # chosen[bounds[i]:bounds[i + 1]] come from group i
    for (index, cols), first, a, b in zip(groups, offsets[:-1], bounds[:-1], bounds[1:], strict=True):
        if a == b:
            continue
        tr, vis, source_start = queries[index]
        source_cols = cols[chosen[a:b] - first]
        f0, f1 = max(lo, source_start), min(hi, source_start + tr.shape[0])
        rows = slice(f0 - source_start, f1 - source_start)
        positions[f0 - lo : f1 - lo, a:b] = tr[rows, source_cols]
        in_window[f0 - lo : f1 - lo, a:b] = True
        visible[f0 - lo : f1 - lo, a:b] = vis[rows, source_cols]
        loc_xy[a:b] = tr[t - source_start, source_cols]
    # 4-5: loc from the unsmoothed position at t; cleanup
    loc = normalise_loc(loc_xy, height, width)  # [N, 2]
    positions = clean_tracks(positions, height, width)
    # 6: the flip is applied to the finished item (flip_item): it commutes with the moving average
    # 7: moving average over time
    if compat_reference:
        smoothed, _ = moving_average(positions, np.ones_like(in_window), smooth)
    else:
        smoothed, count = moving_average(positions, in_window, smooth)
        if not in_window.all():
            smoothed = hold_edges(smoothed, count > 0)
    # 8: context window, reflect-padded when the sequence is shorter than C
    window = slice(start - lo, stop - lo)
    tracks, vis_out = smoothed[window], visible[window]  # [C or T, N, 2], [C or T, N]
    if pad_before or stop - start < context:
        pad = (pad_before, context - (stop - start) - pad_before)
        tracks = np.pad(tracks, (pad, (0, 0), (0, 0)), mode="reflect")
        vis_out = np.pad(vis_out, (pad, (0, 0)), mode="reflect")
    return {
        "tracks": np.ascontiguousarray(tracks, dtype=np.float32),
        "vis": np.ascontiguousarray(vis_out),
        "loc": loc,
        "t_index": t_index,
        "n_valid": n_valid,
    }


# --------------------------------------------------------------------------- loading


def load_sequence(
    frames: str | os.PathLike,
    flow: str | os.PathLike,
    tracks: str | os.PathLike,
    *,
    input_size: Sequence[int],
    params: DataParams,
    flow_input: bool = False,
) -> SequenceData:
    """Read and resize one sequence's frames and flow into memory; check the tracks index matches.

    flow_input: also encode every frame's flow as the network's input (lrtl.model_inputs.read_input_flow)."""
    group = stores.open_store(frames, "frames")
    name = str(group.attrs.get("sequence", Path(frames).stem))
    full_rgb = group["rgb"][...]  # [T, H, W, 3]
    rgb = resize_rgb(full_rgb, input_size)  # [T, h, w, 3]
    n_frames = rgb.shape[0]
    flow_group = stores.open_flow(flow)
    if flow_group.attrs["n_frames"] != n_frames:
        raise StageError(
            f"{flow}: {flow_group.attrs['n_frames']} frames, but {frames} has {n_frames}; "
            f"rebuild the flow of this sequence"
        )
    missing = [g for g in params.gaps if g not in flow_group.attrs["gaps"]]
    if missing:
        raise StageError(
            f"{flow}: no flow for gaps {missing} (has {flow_group.attrs['gaps']}); add them to "
            f"flow.gaps or remove them from the train run's data.gaps"
        )
    flows, weights, texture = None, None, None
    if params.flow_texture > 0:
        size = loss_size(params, *flow_group[stores.flow_name(1)].shape[1:3])
        texture = textured_fraction(full_rgb, size, params.flow_texture)  # [T, hf, wf]
    del full_rgb
    if params.preload_flow:
        flows, weights = {}, ({} if params.weighs_flow else None)
        for gap in params.gaps:  # both directions of a gap in memory at once: each is the other's check
            fields = {signed: flow_group[stores.flow_name(signed)][...] for signed in (gap, -gap)}  # [T, H, W, 2]
            for signed, field in fields.items():
                stores.check_finite(field, flow, "flow", stores.flow_name(signed))
                flows[signed] = loss_flow(field, params)
            if weights is not None:
                for signed in fields:
                    size = flows[signed].shape[-2:]
                    weights[signed] = (consistency_weights(fields, signed, size) if params.flow_confidence
                                       else np.ones((n_frames, *size), np.float32))
                    if texture is not None:
                        weights[signed] *= texture
    reader = open_tracks(tracks)
    if reader.n_frames != n_frames:
        raise StageError(
            f"{tracks}: {reader.n_frames} frames, but {frames} has {n_frames}; rebuild the tracks"
        )
    shortest = params.pair_offset + max(params.gaps) + 1
    if n_frames < shortest:
        raise StageError(
            f"{frames}: {n_frames} frames are too few for training items (need {shortest} = "
            f"pair_offset + max gap + 1); drop the sequence from training"
        )
    input_flow = None
    if flow_input:
        input_flow = read_input_flow(flow, input_size)  # [T, 2, h, w]
    return SequenceData(name=name, n_frames=n_frames, rgb=rgb, flow_path=Path(flow), flow=flows,
                        tracks_index=Path(tracks), input_flow=input_flow, flow_weight=weights, texture=texture)


def loss_size(params: DataParams, height: int, width: int) -> tuple[int, int]:
    """(hf, wf) of the flow loss for a flow store of height x width: flow_size, or the store's when []."""
    return (int(params.flow_size[0]), int(params.flow_size[1])) if params.flow_size else (int(height), int(width))


def loss_flow(flow: np.ndarray, params: DataParams) -> np.ndarray:
    """Flow store fields float32 [T, H, W, 2] -> [T, 2, hf, wf] at the loss size (flow_size; [] = the store's),
    pixels rescaled to that size (area averaging when shrinking), clamped to ±flow_clamp."""
    n_frames, height, width, _ = flow.shape
    new_h, new_w = loss_size(params, height, width)
    out = np.empty((n_frames, 2, new_h, new_w), np.float32)  # [T, 2, hf, wf]
    for index in range(n_frames):
        out[index] = resize_flow(flow[index], new_h, new_w, interpolation="area").transpose(2, 0, 1)
    return np.clip(out, -params.flow_clamp, params.flow_clamp, out=out)


def open_tracks(index_json: str | os.PathLike) -> SequenceTracks:
    return open_sequence_tracks(index_json)


class TrainItems(torch.utils.data.Dataset):
    """Map-style dataset of training items, keyed by an integer (any key is valid; see module docstring)."""

    def __init__(
        self, sequences: Sequence[SequenceData], params: DataParams, *, seed: int, compat_reference: bool
    ):
        if not sequences:
            raise StageError("no training sequences")
        if params.sampling not in SAMPLINGS:
            raise StageError(f"train.data.sampling must be one of {SAMPLINGS}, not {params.sampling!r}")
        self.sequences = list(sequences)
        self.params = params
        self.seed = seed
        self.compat_reference = compat_reference
        if params.context < 2 * params.pair_offset + 1:
            raise StageError(
                f"data.context {params.context} must be >= 2 * pair_offset + 1 "
                f"({2 * params.pair_offset + 1}) for the temporal loss"
            )
        sizes = set()
        for sequence in self.sequences:
            reader = open_tracks(sequence.tracks_index)
            sizes.add((reader.height, reader.width))
        if len(sizes) != 1:
            raise StageError(
                f"training sequences have tracks at different resolutions {sorted(sizes)}; use one "
                f"frames resolution for the dataset"
            )
        self.track_size = sizes.pop()  # (H, W) of track pixel coordinates
        self._readers: dict[int, Any] = {}
        self._flow_groups: dict[int, Any] = {}  # open flow stores (preload_flow false)
        self._pid = None
        self._query = self._query_cache()

    def _query_cache(self):
        """The tracks of a query frame, (seq, q) -> (tracks, vis, window_start), kept for the last `cache_queries`
        query frames (LRU). Made per instance, so that its size is this dataset's setting."""
        return functools.lru_cache(maxsize=self.params.cache_queries)(self._read_query)

    def __getstate__(self) -> dict[str, Any]:
        # the cache wraps a bound method and does not pickle: a DataLoader worker gets a fresh one
        return {name: value for name, value in self.__dict__.items() if name != "_query"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._query = self._query_cache()

    def __len__(self) -> int:
        return 2**62

    def _own_process(self) -> None:
        """A fresh process (DataLoader worker) opens its own readers and stores and keeps its own cache."""
        if self._pid != os.getpid():
            self._readers, self._flow_groups, self._pid = {}, {}, os.getpid()
            self._query.cache_clear()

    def _read_query(self, seq: int, q: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Tracks float32 [T_w, n, 2], vis bool [T_w, n] and window start of query frame q (through self._query)."""
        if seq not in self._readers:
            self._readers[seq] = open_tracks(self.sequences[seq].tracks_index)
        return self._readers[seq].query(q)

    def _flow(self, seq: int, gap: int, frame: int) -> np.ndarray:
        """Flow frame -> frame + gap at the loss size, float32 [2, hf, wf]."""
        sequence = self.sequences[seq]
        if sequence.flow is not None:
            return sequence.flow[gap][frame]
        if seq not in self._flow_groups:
            self._flow_groups[seq] = stores.open_flow(sequence.flow_path)
        return loss_flow(stores.read_flow(self._flow_groups[seq], gap, frame)[None], self.params)[0]

    def _flow_weight(self, seq: int, gap: int, frame: int, size: Sequence[int]) -> np.ndarray:
        """Forward-backward consistency of flow frame -> frame + gap on the loss grid, float32 [hf, wf]."""
        sequence = self.sequences[seq]
        if sequence.flow_weight is not None:
            return sequence.flow_weight[gap][frame]
        weight = np.ones((int(size[0]), int(size[1])), np.float32)
        if self.params.flow_confidence:
            group = self._flow_groups[seq]  # opened by _flow
            ok = consistent(stores.read_flow(group, gap, frame), stores.read_flow(group, -gap, frame + gap))
            weight = cv2.resize(ok.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA)
        if sequence.texture is not None:
            weight = weight * sequence.texture[frame]
        return weight

    def item_plan(self, key: int) -> tuple[np.random.Generator, int, int, list[int], bool]:
        """(generator, sequence index, gap, 4 frames, flip) of item `key`."""
        rng = np.random.default_rng([self.seed, key])
        lengths = [sequence.n_frames for sequence in self.sequences]
        seq, gap, base = draw_item(rng, lengths, self.params.gaps, self.params.sampling)
        frames = item_frames(lengths[seq], base, gap, self.params.pair_offset)
        flip = bool(rng.random() < self.params.flip)
        return rng, seq, gap, frames, flip

    def __getitem__(self, key: int) -> dict[str, Any]:
        self._own_process()
        rng, seq, gap, frames, flip = self.item_plan(int(key))
        sequence = self.sequences[seq]
        params = self.params
        height, width = self.track_size
        signed_gaps = (gap, -gap, gap, -gap)  # forward, backward, forward, backward (METHOD.md §5)
        flows = [self._flow(seq, g, f) for g, f in zip(signed_gaps, frames, strict=True)]
        per_frame = [
            sample_frame_tracks(
                [self._query(seq, q) for q in query_frames(t, sequence.n_frames)],
                t,
                sequence.n_frames,
                height=height,
                width=width,
                n_tracks=params.n_tracks,
                context=params.context,
                smooth=params.smooth,
                min_visibility=params.min_visibility,
                rng=rng,
                compat_reference=self.compat_reference,
            )
            for t in frames
        ]
        item = {
            "rgb": sequence.rgb[frames],  # [4, h, w, 3] uint8
            "flow": np.stack(flows),  # [4, 2, hf, wf]
            "tracks": np.stack([p["tracks"] for p in per_frame]),  # [4, C, N, 2]
            "vis": np.stack([p["vis"] for p in per_frame]),  # [4, C, N]
            "loc": np.stack([p["loc"] for p in per_frame]),  # [4, N, 2]
            "t_index": np.array([p["t_index"] for p in per_frame], np.int64),  # [4]
            "frames": np.array(frames, np.int64),  # [4]
            "sequence": np.int64(seq),
            "flip": np.bool_(False),
        }
        if sequence.input_flow is not None:
            item["flow_input"] = sequence.input_flow[frames]  # [4, 2, h, w]
        if params.weighs_flow:
            size = flows[0].shape[-2:]
            item["flow_weight"] = np.stack([
                self._flow_weight(seq, g, f, size) for g, f in zip(signed_gaps, frames, strict=True)
            ])  # [4, hf, wf]
        if flip:
            item = flip_item(item, width, negate_u=not self.compat_reference)
        return item


def flip_item(item: dict[str, Any], width: int, negate_u: bool) -> dict[str, Any]:
    """Mirror an item horizontally (METHOD.md §4 step 6, §5): RGB and flow columns reversed, u negated unless
    `negate_u` is False (the reference keeps u, §11 item 7), track x -> W - 1 - x (W: the tracks' frame
    width),    normalised loc x -> -x. Flipping twice gives the item back."""
    flow = item["flow"][..., ::-1].copy()  # [4, 2, hf, wf]
    if negate_u:
        flow[:, 0] = -flow[:, 0]
    tracks = item["tracks"].copy()  # [4, C, N, 2]
    tracks[..., 0] = (width - 1) - tracks[..., 0]
    loc = item["loc"].copy()  # [4, N, 2]
    loc[..., 0] = -loc[..., 0]
    extra = {}
    if "flow_input" in item:  # the network's flow input: always mirrored with u negated (no reference quirk)
        flow_input = item["flow_input"][..., ::-1].copy()  # [4, 2, h, w]
        flow_input[:, 0] = -flow_input[:, 0]
        extra["flow_input"] = flow_input
    if "flow_weight" in item:
        extra["flow_weight"] = np.ascontiguousarray(item["flow_weight"][..., ::-1])  # [4, hf, wf]
    return {
        **item,
        "rgb": np.ascontiguousarray(item["rgb"][:, :, ::-1]),
        "flow": flow,
        "tracks": tracks,
        "loc": loc,
        "flip": np.bool_(not item["flip"]),
        **extra,
    }


def flatten_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collated items [B, 4, ...] -> frames [4B, ...]; frame 4i + j is position j of item i."""
    out = {}
    for name, value in batch.items():
        out[name] = value.reshape(-1, *value.shape[2:]) if value.ndim >= 2 else value
    return out


def make_loader(
    items: TrainItems, *, batch_items: int, first_item: int, n_items: int
) -> torch.utils.data.DataLoader:
    """Batches of `batch_items` items with keys first_item, first_item + 1, ... (same for any workers)."""
    workers = items.params.workers
    return torch.utils.data.DataLoader(
        items,
        batch_size=batch_items,
        sampler=range(first_item, first_item + n_items),
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        generator=torch.Generator().manual_seed(items.seed),  # leaves the global RNG (dropout) to the model
        worker_init_fn=one_thread_per_worker,
        # Workers start from a fresh server process, not a fork of this one: a fork copies OpenCV's thread pool in
        # whatever state its threads left it, and the worker's first OpenCV call (setNumThreads) could then wait
        # forever on a lock no thread will release (seen in tests after OpenCV work in the parent).
        multiprocessing_context="forkserver" if workers else None,
    )


def one_thread_per_worker(worker_id: int) -> None:
    """A data-loader worker runs one thread (torch, OpenCV, BLAS): its pools would otherwise start a thread per
    core each and fight the training threads for the job's cores."""
    limit_threads(1, torch_too=True)
