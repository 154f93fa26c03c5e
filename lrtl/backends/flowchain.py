"""`flowchain` track backend: points carried by chained gap-1 flow (METHOD.md §13, CPU default).

After Brox & Malik (ECCV 2010) and Sundaram, Brox & Keutzer (ECCV 2010, eqs. 5-6).  From query frame q each
seed moves forward to the window end and backward to the window start; one step t -> t+d (d = ±1):
    w = F_{t->t+d}(x) sampled bilinearly, x' = x + w, ŵ = F_{t+d->t}(x');
    stop when |w + ŵ|² >= fb_alpha (|w|² + |ŵ|²) + fb_beta            (forward-backward inconsistency)
    stop when |∇u|² + |∇v|² > boundary_alpha |w|² + boundary_beta at x (motion boundary)
    stop when x' leaves the frame.
After a stop the point is invisible for the rest of that direction; its position is held (`fill: hold`) or
carried on by the flow (`fill: flow`).  Flow frames are streamed from the flow store (the next pair is read
while the current step runs), so memory does not grow with the window or the sequence; all points of a query
frame move together in vectorised numpy.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from lrtl import stores
from lrtl.cli import StageError

FILLS = ("hold", "flow")


def _corners(image: np.ndarray, xy: np.ndarray):
    """Cell corners and fractions of points xy [N, 2] in image [H, W, C] (border replicated)."""
    height, width, channels = image.shape
    flat = image.reshape(-1, channels)  # [H*W, C]
    x = np.clip(xy[:, 0], 0, width - 1)
    y = np.clip(xy[:, 1], 0, height - 1)
    x0 = np.minimum(x.astype(np.int64), max(width - 2, 0))  # x >= 0, so truncation is floor
    y0 = np.minimum(y.astype(np.int64), max(height - 2, 0))
    dx, dy = min(1, width - 1), (width if height > 1 else 0)
    i00 = y0 * width + x0
    fx = (x - x0).astype(np.float32)[:, None]  # [N, 1]
    fy = (y - y0).astype(np.float32)[:, None]
    corners = [np.take(flat, i, axis=0) for i in (i00, i00 + dx, i00 + dy, i00 + dy + dx)]  # 4 x [N, C]
    return fx, fy, corners


def bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample image [H, W, C] at points xy [N, 2] (x, y) bilinearly with border replication -> [N, C]."""
    fx, fy, (v00, v01, v10, v11) = _corners(image, xy)
    top = v00 + fx * (v01 - v00)
    return top + fy * (v10 + fx * (v11 - v10) - top)


def bilinear_with_gradient(image: np.ndarray, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear value [N, C] and its x and y derivatives [N, C] (of the bilinear interpolant) at xy."""
    fx, fy, (v00, v01, v10, v11) = _corners(image, xy)
    top = v00 + fx * (v01 - v00)
    bottom = v10 + fx * (v11 - v10)
    d_x = (v01 - v00) + fy * ((v11 - v10) - (v01 - v00))
    return top + fy * (bottom - top), d_x, bottom - top


class FlowChainTracker:
    """Tracks from the gap-1 flows of a flow store at frame resolution."""

    name = "flowchain"

    def __init__(self, *, inputs: Any, params: Any) -> None:
        if inputs.flow is None:
            raise StageError("tracks.backend flowchain needs --flow FLOW.zarr (the sequence's flow store)")
        p = params.flowchain
        if p.fill not in FILLS:
            raise StageError(f"tracks.flowchain.fill must be one of {FILLS}, not {p.fill!r}")
        self.p = p
        group = stores.open_flow(inputs.flow)
        attrs = group.attrs
        if 1 not in attrs["gaps"]:
            raise StageError(f"{inputs.flow}: flow store lacks gap 1, which flowchain needs; "
                             f"add 1 to flow.gaps")
        shape = (attrs["n_frames"], attrs["height"], attrs["width"])
        if shape != (inputs.n_frames, inputs.height, inputs.width):
            raise StageError(f"{inputs.flow}: flow has {shape[0]} frames of {shape[2]}x{shape[1]}, the "
                             f"frames store {inputs.n_frames} of {inputs.width}x{inputs.height}; "
                             f"rerun the flow stage")
        self.flows = {1: group["forward_1"], -1: group["backward_1"]}
        self.flow_path = inputs.flow
        self.width, self.height = inputs.width, inputs.height
        self.flow_reads = 0
        self._pool = ThreadPoolExecutor(max_workers=1)  # one flow pair read ahead: memory stays 2 pairs

    def _flow_pair(self, frame: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Flow frame -> frame+step and frame+step -> frame, float32 [H, W, 2] each."""
        self.flow_reads += 2
        flow, back = self.flows[step][frame], self.flows[-step][frame + step]  # [H, W, 2] each
        stores.check_finite(flow[None], self.flow_path, "flow", stores.flow_name(step), frame)
        stores.check_finite(back[None], self.flow_path, "flow", stores.flow_name(-step), frame + step)
        return flow, back

    def track(self, query_frame: int, query_xy: np.ndarray, window_start: int, window_len: int
              ) -> tuple[np.ndarray, np.ndarray]:
        n = len(query_xy)
        tracks = np.zeros((window_len, n, 2), np.float32)  # [T_w, N, 2]
        vis = np.zeros((window_len, n), bool)  # [T_w, N]
        q = query_frame - window_start
        tracks[q] = query_xy
        vis[q] = True
        for step in (1, -1):
            frames = [window_start + t for t in range(q, (window_len - 1) if step > 0 else 0, step)]
            x = query_xy.astype(np.float32).copy()  # [N, 2]
            alive = np.ones(n, bool)  # [N]
            pending = self._pool.submit(self._flow_pair, frames[0], step) if frames else None
            for k, frame in enumerate(frames):
                flow, back = pending.result()  # [H, W, 2] each: frame -> frame+step and back
                if k + 1 < len(frames):  # read the next pair while this step runs
                    pending = self._pool.submit(self._flow_pair, frames[k + 1], step)
                x, alive = self._step(flow, back, x, alive)
                t = frame + step - window_start
                tracks[t] = x
                vis[t] = alive
                if self.p.fill == "hold" and not alive.any():  # nothing moves any more: hold the rest
                    if step > 0:
                        tracks[t + 1:] = x
                    else:
                        tracks[:t] = x
                    break
            if pending is not None:
                pending.result()
        return tracks, vis

    def _step(self, flow: np.ndarray, back: np.ndarray, x: np.ndarray, alive: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """One step of all points: new positions [N, 2] and still-alive flags [N]."""
        p = self.p
        moving = alive if p.fill == "hold" else np.ones_like(alive)
        idx = np.flatnonzero(moving)
        pts = x[idx]  # [M, 2]
        w, w_x, w_y = bilinear_with_gradient(flow, pts)  # [M, 2] each: flow and its x, y derivatives
        moved = x[idx] + w  # [M, 2]
        inside = ((moved[:, 0] >= 0) & (moved[:, 0] <= self.width - 1)
                  & (moved[:, 1] >= 0) & (moved[:, 1] <= self.height - 1))
        w_back = bilinear(back, moved)  # [M, 2]
        fb_ok = (np.sum((w + w_back) ** 2, 1)
                 < p.fb_alpha * (np.sum(w**2, 1) + np.sum(w_back**2, 1)) + p.fb_beta)
        grad = np.sum(w_x**2, 1) + np.sum(w_y**2, 1)  # |∇u|² + |∇v|²
        boundary = grad > p.boundary_alpha * np.sum(w**2, 1) + p.boundary_beta
        ok = inside & fb_ok & ~boundary & alive[idx]
        new_x = x.copy()
        new_alive = alive.copy()
        new_alive[idx] = ok
        if p.fill == "hold":
            new_x[idx[ok]] = moved[ok]
        else:
            new_x[idx] = np.stack([np.clip(moved[:, 0], 0, self.width - 1),
                                   np.clip(moved[:, 1], 0, self.height - 1)], 1)
        return new_x, new_alive

    def provenance(self) -> dict[str, Any]:
        return {}
