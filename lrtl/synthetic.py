"""Synthetic videos with exact ground truth: textured objects over a textured background under camera motion.

Two scene kinds (params.scene): `layers` (this module, the default) and `parallax` (lrtl.parallax: a rigid 3D
scene under a perspective camera, whose static parts move by depth). Both share the textures, the sequence plan,
the stage and its outputs below; a scene's description says which kind rebuilds it (scene_from_description).

In a layers scene every layer (the background and 1-3 foreground objects) is a texture in its own canonical
pixel frame, mapped into frame t by an affine matrix A_t (canonical -> frame, pixel centres at integer
coordinates, the OpenCV convention). Objects are drawn back to front (list order = depth order, object id = index + 1,
0 = background), so they occlude each other; they rotate, scale and translate smoothly, and some enter or
leave the frame.

Ground truth follows from the transforms alone:
- object ids: for every pixel the top-most layer whose canonical mask contains the pixel's pre-image;
- flow t -> t+g: each pixel is carried by its top-most layer, p' = A_{t+g} A_t^-1 p (exact, no interpolation);
- tracks: a query point keeps its layer; it is visible at t when it lies in the frame and its layer is the
  top-most one there.

The scene description (a JSON-able dict: sizes, texture seeds, per-frame matrices) is stored in the
ground-truth store's attrs, and `load_scene` rebuilds the identical scene from it.

CLI (one sequence):
    python -m lrtl.synthetic --params '<json of config synthetic>' --sequence-index 3 --name synth-003 \
        --images DIR --annotations DIR --ground-truth GT.zarr
writes DIR/00000.jpg ... (RGB JPEG), DIR/00000.png ... (0/255 union of the objects) and a zarr store of kind
"synthetic_gt": forward_{g}/backward_{g} float32 [T, H, W, 2] for g in params.gaps (rows without a target
frame are zero), object_ids uint8 [T, H, W]; attrs: scene, params, name, sequence_index.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from lrtl import stores
from lrtl.cli import StageError, json_params, run_stage
from lrtl.params import Params, ParamsError

log = logging.getLogger(__name__)

SCENE_VERSION = 1
SHAPES = ("ellipse", "polygon", "blob")
PATTERNS = ("stripes", "checker", "spots", "rings")


SCENES = ("layers", "parallax")


@dataclasses.dataclass(frozen=True)
class ParallaxParams(Params):
    """The 3D scene of `scene: parallax` (lrtl.parallax); world units are metres-like, depths along the view."""

    focal: float                          # focal length, fraction of the frame width
    camera_height: float                  # camera height above the ground plane, units
    camera_speed: tuple[float, float]     # [min, max] camera translation, units/frame
    camera_heading: float                 # max |angle| of the travel direction from sideways, deg (0 = sideways)
    camera_pitch: tuple[float, float]     # [min, max] downward pitch of the view, deg
    camera_roll: float                    # max |roll rate| of the camera, deg/frame
    camera_shake: float                   # the camera's speed and height sway by this fraction of its speed
    fixation_depth: tuple[float, float]   # [min, max] depth of the static point the camera pans to keep in view
    far_depth: tuple[float, float]        # [min, max] depth of the far hillside, units
    hill_height: tuple[float, float]      # [min, max] height of the hillside above the ground, units
    n_slabs: tuple[int, int]              # [min, max] near vertical planes (rocks, hedges), inclusive
    slab_depth: tuple[float, float]       # [min, max] depth of a near plane, units
    slab_width: tuple[float, float]       # [min, max] width of a near plane, fraction of the frame width
    object_depth: tuple[float, float]     # [min, max] depth of an object at the middle frame, units
    thin_parts: tuple[int, int]           # [min, max] thin parts (legs, a tail) per object, inclusive
    thin_width: tuple[float, float]       # [min, max] width of a thin part at the middle frame, px
    object_hop: float                     # max height an object hops to, fraction of its height


@dataclasses.dataclass(frozen=True)
class SyntheticParams(Params):
    n_sequences: int                      # sequences in the dataset (index < n_sequences)
    height: int                           # frame height, px
    width: int                            # frame width, px
    n_frames: tuple[int, int]             # [min, max] frames per sequence (inclusive)
    n_objects: tuple[int, int]            # [min, max] foreground objects per sequence (inclusive)
    object_area: tuple[float, float]      # [min, max] object area at scale 1, fraction of the frame area
    object_speed: tuple[float, float]     # [min, max] object speed relative to the background, px/frame
    object_rotation: float                # max |angular velocity| of an object, deg/frame
    object_scale: float                   # max |log-scale change| of an object, per frame
    camera_speed: float                   # max camera translation speed, px/frame
    camera_zoom: float                    # max |log-zoom change| of the camera, per frame
    enter_leave: float                    # probability that an object enters or leaves the frame
    gaps: tuple[int, ...]                 # flow gaps stored in the ground-truth store (1 always added)
    jpeg_quality: int                     # JPEG quality of the written frames (0-100)
    seed: int                             # dataset seed; (seed, sequence index) determines a sequence
    # The two keys below came with the parallax scene. A layers scene's job params leave them out (job_params),
    # so that the datasets generated before them keep their params and rerun nothing: hence the defaults.
    scene: str = "layers"                 # layers (2D affine layers, this module) | parallax (lrtl.parallax)
    parallax: ParallaxParams | None = None   # the parallax scene's own keys (needed for scene: parallax)

    def __post_init__(self) -> None:
        if self.scene not in SCENES:
            raise ParamsError(f"synthetic.scene: {self.scene!r} is not one of {', '.join(SCENES)}")
        if self.scene == "parallax" and self.parallax is None:
            raise ParamsError("synthetic.parallax: expected a mapping of keys for scene: parallax, got null")


# --------------------------------------------------------------------------- geometry helpers


def _to3(a: Sequence[Sequence[float]]) -> np.ndarray:
    """2x3 affine (nested lists) -> 3x3 float64."""
    m = np.eye(3)
    m[:2] = np.asarray(a, dtype=np.float64)
    return m


def _apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to points xy [..., 2] (float64)."""
    return xy @ m[:2, :2].T + m[:2, 2]


def _similarity(center: np.ndarray, angle: float, scale: float, origin: np.ndarray) -> np.ndarray:
    """3x3 matrix mapping canonical point `origin` to `center`, rotated by `angle` (rad) and scaled."""
    c, s = math.cos(angle) * scale, math.sin(angle) * scale
    lin = np.array([[c, -s], [s, c]])
    m = np.eye(3)
    m[:2, :2] = lin
    m[:2, 2] = center - lin @ origin
    return m


def _polygon_area(v: np.ndarray) -> float:
    x, y = v[:, 0], v[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shape_vertices(rng: np.random.Generator, shape: str, area: float) -> np.ndarray:
    """Vertices [V, 2] of a shape centred at 0 with the given area (px^2)."""
    if shape == "ellipse":
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        aspect = rng.uniform(0.45, 1.0)
        v = np.stack([np.cos(theta), aspect * np.sin(theta)], axis=1)
    elif shape == "polygon":
        n = int(rng.integers(3, 9))
        # jittered regular polygon: corners stay well spread, so no sliver shapes
        theta = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.3, 0.3, n) * (2 * np.pi / n)
        r = rng.uniform(0.7, 1.0, n)
        v = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
        if _polygon_area(v) < 0.6:  # degenerate draw: fall back to a regular polygon
            theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
            v = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    else:  # blob: smooth star-shaped curve
        theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        r = np.ones_like(theta)
        for k in (2, 3, 4):
            r += rng.uniform(0, 0.35 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        v = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return v * math.sqrt(area / _polygon_area(v))


# --------------------------------------------------------------------------- textures


def _noise(rng: np.random.Generator, h: int, w: int, octaves: Sequence[tuple[int, float]]) -> np.ndarray:
    """Multi-octave value noise float32 [h, w], roughly unit variance."""
    out = np.zeros((h, w), np.float32)
    for cell, amp in octaves:
        gh, gw = h // cell + 3, w // cell + 3
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        up = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
        out += amp * up[cell:cell + h, cell:cell + w]
    return out / math.sqrt(sum(a * a for _, a in octaves))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float HSV (h degrees, s and v in [0, 1]) -> uint8 RGB [H, W, 3]."""
    hsv = np.stack([np.mod(h, 360.0), np.clip(s, 0, 1), np.clip(v, 0, 1)], axis=-1).astype(np.float32)
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)  # float32 in [0, 1]
    return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)


def background_texture(spec: dict[str, Any]) -> np.ndarray:
    """Desaturated natural-looking texture uint8 [h, w, 3]: noise at several scales plus soft pebbles."""
    rng = np.random.default_rng(spec["texture_seed"])
    h, w = spec["canvas"]
    lum = _noise(rng, h, w, [(48, 1.0), (16, 0.7), (6, 0.5), (2, 0.3)])
    tint = _noise(rng, h, w, [(64, 1.0)])
    value = 0.5 + 0.14 * lum
    hue = spec["hue"] + 25.0 * tint
    sat = spec["saturation"] + 0.05 * tint
    # pebbles: soft darker/lighter ellipses give the background structure at the object scale
    pebbles = np.zeros((h, w), np.float32)
    for _ in range(int(h * w / 1500)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        axes = (int(rng.uniform(2, 12)), int(rng.uniform(2, 12)))
        cv2.ellipse(pebbles, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360,
                    float(rng.uniform(-0.2, 0.2)), -1)
    value = value + cv2.GaussianBlur(pebbles, (0, 0), 1.2)
    rgb = _hsv_to_rgb(hue, sat, value)
    return cv2.GaussianBlur(rgb, (0, 0), 0.7)


def object_texture(spec: dict[str, Any], size: int) -> np.ndarray:
    """Saturated patterned texture uint8 [size, size, 3]: stripes, checker, spots or rings plus fine noise."""
    rng = np.random.default_rng(spec["texture_seed"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period, angle = spec["period"], spec["angle"]
    u = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    v = (-xx * math.sin(angle) + yy * math.cos(angle)) / period
    pattern = spec["pattern"]
    if pattern == "stripes":
        p = np.sin(2 * np.pi * u)
    elif pattern == "checker":
        p = np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v) * 2.0
    elif pattern == "spots":
        p = np.cos(2 * np.pi * u) + np.cos(2 * np.pi * v)
    else:  # rings
        c = (size - 1) / 2
        p = np.sin(2 * np.pi * np.hypot(xx - c, yy - c) / period)
    p = np.tanh(1.5 * p).astype(np.float32)
    fine = _noise(rng, size, size, [(8, 1.0), (3, 0.6)])
    hue = spec["hue"] + 30.0 * p
    sat = spec["saturation"] - 0.15 * (p > 0.5) + 0.03 * fine
    value = 0.72 + 0.2 * p + 0.06 * fine
    rgb = _hsv_to_rgb(hue, sat, value)
    return cv2.GaussianBlur(rgb, (0, 0), 0.7)


# --------------------------------------------------------------------------- the scene


class SceneFrames:
    """What every scene kind shares (Scene, lrtl.parallax.ParallaxScene): its description's version check, frame
    count and size, the pixel grid, and the frame and in-frame checks."""

    def __init__(self, description: dict[str, Any], version: int, kind: str):
        if description.get("version") != version:
            raise StageError(f"{kind} scene version {description.get('version')} != {version}; "
                             "regenerate the synthetic dataset")
        self.description = description
        self.n_frames = int(description["n_frames"])
        self.height = int(description["height"])
        self.width = int(description["width"])
        yy, xx = np.mgrid[0:self.height, 0:self.width]
        self._grid = np.stack([xx, yy], axis=-1).astype(np.float64)  # [H, W, 2] (x, y)

    @property
    def n_objects(self) -> int:
        return len(self.description["objects"])

    def _check_frame(self, frame: int) -> None:
        if not 0 <= frame < self.n_frames:
            raise ValueError(f"frame {frame} outside 0..{self.n_frames - 1}")

    def _in_frame(self, pos: np.ndarray) -> np.ndarray:
        """Positions [N, 2] (x, y) inside the frame (-0.5 <= x < W - 0.5, same for y) -> bool [N]."""
        return ((pos[:, 0] >= -0.5) & (pos[:, 0] < self.width - 0.5)
                & (pos[:, 1] >= -0.5) & (pos[:, 1] < self.height - 0.5))


class Scene(SceneFrames):
    """A rendered-on-demand synthetic sequence with exact flow, tracks and object ids."""

    def __init__(self, description: dict[str, Any]):
        super().__init__(description, SCENE_VERSION, "synthetic")
        bg = description["background"]
        # layers: 0 = background, k = object k (depth order back -> front); transforms [L][T] 3x3 float64
        self._transforms = [np.stack([_to3(a) for a in bg["transforms"]])]
        self._masks: list[np.ndarray | None] = [None]
        for obj in description["objects"]:
            self._transforms.append(np.stack([_to3(a) for a in obj["transforms"]]))
            size = int(obj["canvas"])
            mask = np.zeros((size, size), np.uint8)
            pts = np.round(np.asarray(obj["vertices"]) * 16).astype(np.int32)
            cv2.fillPoly(mask, [pts], 1, lineType=cv2.LINE_8, shift=4)
            self._masks.append(mask.astype(bool))
        self._inverse = [np.linalg.inv(t) for t in self._transforms]
        self._textures: list[np.ndarray] | None = None
        self._ids_cache: dict[int, np.ndarray] = {}

    def textures(self) -> list[np.ndarray]:
        if self._textures is None:
            self._textures = [background_texture(self.description["background"])]
            for obj in self.description["objects"]:
                self._textures.append(object_texture(obj["texture"], int(obj["canvas"])))
        return self._textures

    def surface_at(self, frame: int, xy: np.ndarray) -> np.ndarray:
        """Top-most layer id uint8 [...] at points xy [..., 2] of `frame` (0 = background)."""
        self._check_frame(frame)
        xy = np.asarray(xy, dtype=np.float64)
        ids = np.zeros(xy.shape[:-1], np.uint8)
        for layer in range(self.n_objects, 0, -1):  # front first
            mask = self._masks[layer]
            c = np.rint(_apply(self._inverse[layer][frame], xy)).astype(np.int64)
            size = mask.shape[0]
            inside = (c[..., 0] >= 0) & (c[..., 0] < size) & (c[..., 1] >= 0) & (c[..., 1] < size)
            hit = np.zeros_like(inside)
            hit[inside] = mask[c[..., 1][inside], c[..., 0][inside]]
            ids[hit & (ids == 0)] = layer
        return ids

    def object_ids(self, frame: int) -> np.ndarray:
        """Object id per pixel uint8 [H, W] (0 = background)."""
        if frame not in self._ids_cache:
            self._ids_cache[frame] = self.surface_at(frame, self._grid)
        return self._ids_cache[frame]

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [H, W, 3], object_ids uint8 [H, W]) of `frame`."""
        ids = self.object_ids(frame)
        textures = self.textures()
        size = (self.width, self.height)
        rgb = cv2.warpAffine(textures[0], self._transforms[0][frame][:2], size, flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        for layer in range(1, self.n_objects + 1):
            sel = ids == layer
            if sel.any():
                drawn = cv2.warpAffine(textures[layer], self._transforms[layer][frame][:2], size,
                                       flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                rgb[sel] = drawn[sel]
        return rgb, ids

    def flow(self, frame: int, gap: int) -> np.ndarray:
        """Exact flow frame -> frame+gap, float32 [H, W, 2] (u, v) in pixels; gap may be negative."""
        self._check_frame(frame)
        self._check_frame(frame + gap)
        ids = self.object_ids(frame)
        out = np.zeros((self.height, self.width, 2), np.float32)
        for layer in range(self.n_objects + 1):
            sel = ids == layer
            if sel.any():
                m = self._transforms[layer][frame + gap] @ self._inverse[layer][frame]
                p = self._grid[sel]
                out[sel] = _apply(m, p) - p
        return out

    def track(self, query_xy: np.ndarray, query_frame: int, frames: Sequence[int] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Exact positions of the surface points under query_xy [N, 2] (x, y) at query_frame.

        Returns tracks float32 [T_w, N, 2] and vis bool [T_w, N] for the frames [T_w]: visible when the point
        lies in the frame (-0.5 <= x < W - 0.5, same for y) and its layer is the top-most one there.
        """
        self._check_frame(query_frame)
        query_xy = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        layer_of = self.surface_at(query_frame, query_xy)  # [N]
        tracks = np.zeros((len(frames), len(query_xy), 2), np.float64)
        vis = np.zeros((len(frames), len(query_xy)), bool)
        for i, t in enumerate(frames):
            t = int(t)
            self._check_frame(t)
            if t == query_frame:
                tracks[i] = query_xy
            else:
                for layer in np.unique(layer_of):
                    sel = layer_of == layer
                    m = self._transforms[layer][t] @ self._inverse[layer][query_frame]
                    tracks[i, sel] = _apply(m, query_xy[sel])
            pos = tracks[i]
            in_frame = self._in_frame(pos)
            vis[i] = in_frame if t == query_frame else in_frame & (self.surface_at(t, pos) == layer_of)
        return tracks.astype(np.float32), vis


# --------------------------------------------------------------------------- scene generation


def _camera(rng: np.random.Generator, params: SyntheticParams, n: int) -> list[np.ndarray]:
    """Background transforms [T] 3x3 (world -> frame) for a smoothly moving, slightly zooming camera."""
    speed = rng.uniform(0.3, 1.0) * params.camera_speed
    heading = rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-0.04, 0.04)
    zoom_rate = rng.uniform(-1, 1) * params.camera_zoom
    centre = np.array([(params.width - 1) / 2, (params.height - 1) / 2])
    pos = np.zeros(2)
    out = []
    for t in range(n):
        zoom = math.exp(zoom_rate * (t - (n - 1) / 2))
        m = np.eye(3)
        m[:2, :2] *= zoom
        m[:2, 2] = centre - zoom * pos
        out.append(m)
        a = heading + turn * t
        pos = pos + speed * np.array([math.cos(a), math.sin(a)])
    return out


def _object_path(rng: np.random.Generator, params: SyntheticParams, n: int, radius: float,
                 bg_velocity: np.ndarray) -> tuple[list[np.ndarray], str]:
    """Centres [T] 2 (frame px) of one object and its mode: 'inside', 'enter' or 'leave'."""
    w, h = params.width, params.height
    mode = "inside"
    if rng.uniform() < params.enter_leave:
        mode = "enter" if rng.uniform() < 0.5 else "leave"
    speed = rng.uniform(*params.object_speed)
    heading = rng.uniform(0, 2 * np.pi)
    turn = rng.uniform(-0.03, 0.03)
    if mode == "inside":
        mid = np.array([rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h])
        anchor_t = (n - 1) / 2
    else:
        # a point just outside an edge; the relative velocity points across the frame
        edge = int(rng.integers(4))
        along = rng.uniform(0.3, 0.7)
        out = 0.4 * radius
        mid = [np.array([-out, along * h]), np.array([w - 1 + out, along * h]),
               np.array([along * w, -out]), np.array([along * w, h - 1 + out])][edge]
        inward = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]][edge], dtype=np.float64)
        speed = max(speed, 1.6 * radius / max(n - 1, 1))
        heading = math.atan2(inward[1], inward[0]) + rng.uniform(-0.4, 0.4)
        turn = 0.0
        anchor_t = 0 if mode == "enter" else n - 1
        if mode == "leave":
            heading += np.pi  # leaves through the same edge
    velocities = [bg_velocity + speed * np.array([math.cos(heading + turn * t), math.sin(heading + turn * t)])
                  for t in range(n)]
    pos = np.cumsum([np.zeros(2)] + velocities[:-1], axis=0)  # [T, 2] displacement from frame 0
    pos = pos - pos[int(round(anchor_t))] + mid
    return list(pos), mode


def sequence_name(index: int, scene: str = "layers") -> str:
    """Name of the synthetic sequence number `index`: synth-000, synth-001, ... (parallax-000, ... for parallax)."""
    return f"{'synth' if scene == 'layers' else scene}-{index:03d}"


def _as_params(params: SyntheticParams | Mapping[str, Any]) -> SyntheticParams:
    if isinstance(params, SyntheticParams):
        return params
    return SyntheticParams.from_mapping(params, "synthetic")


def job_params(section: Mapping[str, Any]) -> dict[str, Any]:
    """A synthetic section as a make_synthetic job (and the ground-truth attrs) records it: a layers scene
    leaves out `scene` and `parallax`, so that its params stay those of before the parallax scene existed."""
    if section.get("scene", "layers") == "layers":
        return {k: v for k, v in section.items() if k not in ("scene", "parallax")}
    return dict(section)


def sequence_plan(params: SyntheticParams | Mapping[str, Any]) -> list[tuple[str, int]]:
    """(name, n_frames) of every synthetic sequence, without rendering (for the workflow at parse time)."""
    params = _as_params(params)
    plan = []
    for index in range(params.n_sequences):
        rng = np.random.default_rng([params.seed, index])  # the first draw of generate_scene
        plan.append((sequence_name(index, params.scene),
                     int(rng.integers(params.n_frames[0], params.n_frames[1] + 1))))
    return plan


def generate_scene(params: SyntheticParams, index: int) -> Any:
    """The deterministic scene number `index` of the dataset defined by `params`."""
    if not 0 <= index < params.n_sequences:
        raise StageError(f"--sequence-index {index} outside 0..{params.n_sequences - 1} "
                         "(config synthetic.n_sequences)")
    rng = np.random.default_rng([params.seed, index])
    n = int(rng.integers(params.n_frames[0], params.n_frames[1] + 1))  # the first draw (sequence_plan)
    if params.scene == "parallax":
        from lrtl.parallax import generate_parallax_scene

        return generate_parallax_scene(params, index, rng, n)
    n_obj = int(rng.integers(params.n_objects[0], params.n_objects[1] + 1))
    h, w = params.height, params.width

    cam = _camera(rng, params, n)
    # world bounding box seen by the camera -> background canvas with a margin
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    seen = np.concatenate([_apply(np.linalg.inv(m), corners) for m in cam])
    lo = np.floor(seen.min(0)) - 8
    hi = np.ceil(seen.max(0)) + 8
    shift = np.eye(3)
    shift[:2, 2] = lo  # canvas -> world
    bg_transforms = [m @ shift for m in cam]
    bg_velocity = _apply(cam[min(1, n - 1)], np.zeros(2)) - _apply(cam[0], np.zeros(2))  # world origin motion
    background = {
        "texture_seed": int(rng.integers(2**31)),
        "canvas": [int(hi[1] - lo[1] + 1), int(hi[0] - lo[0] + 1)],
        "hue": float(rng.uniform(0, 360)),
        "saturation": float(rng.uniform(0.05, 0.2)),
        "transforms": [m[:2].tolist() for m in bg_transforms],
    }

    objects = []
    hue0 = rng.uniform(0, 360)
    for k in range(n_obj):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        area = rng.uniform(*params.object_area) * h * w
        verts = _shape_vertices(rng, shape, area)
        radius = float(np.hypot(verts[:, 0], verts[:, 1]).max())
        scale_rate = rng.uniform(-1, 1) * params.object_scale
        size = int(math.ceil(2 * radius + 8))
        origin = np.array([(size - 1) / 2, (size - 1) / 2])
        centres, mode = _object_path(rng, params, n, radius, bg_velocity)
        angle0 = rng.uniform(0, 2 * np.pi)
        spin = math.radians(rng.uniform(-1, 1) * params.object_rotation)
        transforms = []
        for t in range(n):
            scale = math.exp(scale_rate * (t - (n - 1) / 2))  # 1 at the middle frame
            transforms.append(_similarity(centres[t], angle0 + spin * t, scale, origin)[:2].tolist())
        objects.append({
            "shape": shape,
            "mode": mode,
            "canvas": size,
            "vertices": (verts + origin).tolist(),
            "texture": {
                "texture_seed": int(rng.integers(2**31)),
                "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))],
                "hue": float((hue0 + k * 360 / n_obj + rng.uniform(-30, 30)) % 360),
                "saturation": float(rng.uniform(0.65, 0.95)),
                "period": float(rng.uniform(10, 20)),
                "angle": float(rng.uniform(0, np.pi)),
            },
            "transforms": transforms,
        })
    description = {"version": SCENE_VERSION, "height": h, "width": w, "n_frames": n, "seed": params.seed,
                   "index": index, "background": background, "objects": objects}
    return Scene(description)


def scene_from_description(description: dict[str, Any]) -> Any:
    """The scene (Scene, or lrtl.parallax.ParallaxScene for kind parallax) a description rebuilds exactly."""
    if description.get("kind", "layers") == "parallax":
        from lrtl.parallax import ParallaxScene

        return ParallaxScene(description)
    return Scene(description)


def load_scene(gt_store_path: str | os.PathLike) -> Any:
    """Rebuild the exact scene from a ground-truth store written by `run_synthetic`."""
    group = stores.open_store(gt_store_path, "synthetic_gt")
    return scene_from_description(dict(group.attrs)["scene"])


# --------------------------------------------------------------------------- the stage


def run_synthetic(*, sequence_index: int, name: str, images: str | os.PathLike,
                  annotations: str | os.PathLike, ground_truth: str | os.PathLike,
                  params: SyntheticParams) -> None:
    """Generate one sequence: JPEG frames, PNG union masks and the ground-truth store, each atomically."""
    scene = generate_scene(params, sequence_index)
    gaps = sorted({1, *(int(abs(g)) for g in params.gaps)})
    log.info("%s: %d frames, %d objects (%s), gaps %s", name, scene.n_frames, scene.n_objects,
             ", ".join(f"{o['shape']}/{o['mode']}" for o in scene.description["objects"]), gaps)
    t_n, h, w = scene.n_frames, scene.height, scene.width
    ids = np.zeros((t_n, h, w), np.uint8)
    with stores.atomic_path(images) as img_tmp, stores.atomic_path(annotations) as ann_tmp:
        img_tmp.mkdir()
        ann_tmp.mkdir()
        for t in tqdm(range(t_n), desc=f"render {name}", disable=None):
            rgb, ids[t] = scene.render(t)
            ok = cv2.imwrite(str(img_tmp / f"{t:05d}.jpg"), rgb[..., ::-1],
                             [cv2.IMWRITE_JPEG_QUALITY, int(params.jpeg_quality)])
            ok &= cv2.imwrite(str(ann_tmp / f"{t:05d}.png"), np.where(ids[t] > 0, 255, 0).astype(np.uint8))
            if not ok:
                raise StageError(f"could not write frame {t} under {images} / {annotations}")
        with stores.atomic_path(ground_truth) as gt_tmp:
            group = stores.create_group(gt_tmp, "synthetic_gt", scene=scene.description,
                                        params=job_params(params.to_dict()), name=name,
                                        sequence_index=sequence_index, gaps=gaps,
                                        n_frames=t_n, height=h, width=w)
            stores.create_array(group, "object_ids", ids)
            for g in gaps:
                for sign in (1, -1):
                    flow = np.zeros((t_n, h, w, 2), np.float32)
                    for t in range(t_n):
                        if 0 <= t + sign * g < t_n:
                            flow[t] = scene.flow(t, sign * g)
                    stores.create_array(group, stores.flow_name(sign * g), flow)
    log.info("%s: wrote %s, %s, %s", name, images, annotations, ground_truth)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=json_params, required=True,
                        help="JSON of the config section synthetic")
    parser.add_argument("--sequence-index", type=int, required=True,
                        help="index of the sequence in the dataset")
    parser.add_argument("--name", required=True, help="sequence name (for logs and attrs)")
    parser.add_argument("--images", type=Path, required=True, help="output folder of JPEG frames")
    parser.add_argument("--annotations", type=Path, required=True, help="output folder of PNG masks")
    parser.add_argument("--ground-truth", type=Path, required=True, help="output ground-truth zarr store")

    def body(args: argparse.Namespace) -> None:
        params = _as_params(args.params)
        run_synthetic(sequence_index=args.sequence_index, name=args.name, images=args.images,
                      annotations=args.annotations, ground_truth=args.ground_truth, params=params)

    run_stage("synthetic", body, parser, argv)


if __name__ == "__main__":
    main()
