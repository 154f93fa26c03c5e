"""Synthetic scenes with parallax (`synthetic.scene: parallax`): a rigid 3D scene under a moving perspective camera.

World axes follow OpenCV (x right, y down, z forward; units are metre-like). A pinhole camera (focal f px,
principal point at the image centre, pixel centres at integer coordinates), at the origin at the middle frame,
translates mostly sideways and pans to keep a static point in view, as a hand-held camera following something does,
so that near and far parts of the static scene move differently, even in opposite directions. Frame t's pixel p sees the
ray c_t + s R_t^T K^-1 [p, 1] (R_t world -> camera, c_t the camera centre, s > 0 the camera depth).

Surfaces, each a plane patch X(a, b) = O + a U + b V (U, V orthonormal, (a, b) in world units) with a support and
a texture (lrtl.synthetic's textures, in (a, b) at `ppu` texture px per unit):
- the ground, y = camera height, unbounded;
- the far hillside, a vertical plane at the far depth up to a smooth silhouette b <= top(a);
- 1-2 near vertical slabs (rocks, hedges): 0 <= a <= width, 0 <= b <= top(a);
- the sky, at infinity, where no plane is hit: one flat colour with a faint gradient in elevation, no texture;
- the objects: vertical billboards standing on the ground, a body with thin parts (legs, a tail) in a canonical
  mask, each with its own pose per frame (it walks along the ground and turns about the vertical axis).
Every pixel shows the surface hit at the smallest positive depth inside its support (a z-buffer); textures are
sampled bilinearly from a mip pyramid at the pixel's footprint, so far surfaces do not alias.

Ground truth follows from the geometry: a pixel's surface point (its plane coordinates, or its direction on the
sky) is carried to frame t+g by its surface's pose at t+g and projected with the camera at t+g. The static scene
(sky, ground, hillside, slabs) is background, id 0, whatever its depth; object k (1-based) is id k. A tracked
point is visible when it projects inside the frame and its surface is the nearest one there, as in the layers
scene. The description (JSON-able: camera poses, planes, objects with per-frame poses) rebuilds the scene exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from lrtl.synthetic import (
    PATTERNS,
    SHAPES,
    SceneFrames,
    _shape_vertices,
    background_texture,
    object_texture,
)

if TYPE_CHECKING:
    from lrtl.synthetic import ParallaxParams, SyntheticParams

PARALLAX_VERSION = 1
SKY = 0  # surface index of the sky; planes follow, then the objects
DOWN = np.array([0.0, 1.0, 0.0])  # world down (y)
MIN_DEPTH = 1e-3  # camera depth below which a point counts as behind the camera


# --------------------------------------------------------------------------- camera and planes


def _look_at(centre: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """World -> camera rotation [3, 3] of a camera at `centre` looking at `target`, rolled by `roll` (rad)."""
    forward = target - centre
    forward = forward / np.linalg.norm(forward)
    right = np.cross(DOWN, forward)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = math.cos(roll), math.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, forward])


def _profile(spec: dict[str, Any], a: np.ndarray) -> np.ndarray:
    """Height of a silhouette at plane coordinate a [...]: a base height plus a few smooth waves."""
    top = np.full(np.shape(a), float(spec["height"]))
    for amp, period, phase in spec["waves"]:
        top = top + amp * np.sin(2 * np.pi * a / period + phase)
    return top


def _pyramid(texture: np.ndarray) -> list[np.ndarray]:
    """Mip levels float32 [h_l, w_l, 3] of a texture, halving down to a few pixels."""
    levels = [texture.astype(np.float32)]
    while min(levels[-1].shape[:2]) >= 8:
        levels.append(cv2.pyrDown(levels[-1]))
    return levels


def _sample(levels: list[np.ndarray], tx: np.ndarray, ty: np.ndarray, footprint: np.ndarray,
            sel: np.ndarray) -> np.ndarray:
    """Trilinear texture samples float32 [n, 3] at level-0 texture coordinates tx, ty [H, W] of the pixels `sel`
    [H, W] (bool), the mip level from footprint [H, W] (texture px per image px). Textures repeat (wrap)."""
    level = np.clip(np.log2(np.maximum(footprint[sel], 1e-6)), 0, len(levels) - 1)  # [n]
    base = np.minimum(np.floor(level).astype(np.int64), len(levels) - 1)
    frac = (level - base).astype(np.float32)[:, None]
    out = np.zeros((int(sel.sum()), 3), np.float32)
    for lvl in np.unique(base):
        pick = base == lvl
        rows = []
        for k in (int(lvl), min(int(lvl) + 1, len(levels) - 1)):
            img = levels[k]
            scale = 2.0 ** -k
            h, w = img.shape[:2]
            mx = np.mod((tx + 0.5) * scale - 0.5, w).astype(np.float32)
            my = np.mod((ty + 0.5) * scale - 0.5, h).astype(np.float32)
            rows.append(cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)[sel][pick])
        out[pick] = (1 - frac[pick]) * rows[0] + frac[pick] * rows[1]
    return out


# --------------------------------------------------------------------------- the scene


class ParallaxScene(SceneFrames):
    """A rendered-on-demand parallax sequence with exact flow, tracks and object ids (the API of synthetic.Scene)."""

    def __init__(self, description: dict[str, Any]):
        super().__init__(description, PARALLAX_VERSION, "parallax")
        cam = description["camera"]
        self.focal = float(cam["focal"])
        self._principal = np.array([(self.width - 1) / 2, (self.height - 1) / 2])
        self._rotations = np.asarray(cam["rotations"], np.float64)  # [T, 3, 3] world -> camera
        self._centres = np.asarray(cam["centres"], np.float64)  # [T, 3]
        # surfaces 1..: static planes (one pose), then objects (a pose per frame); poses [T, 3, 3] rows O, U, V
        self._surfaces: list[dict[str, Any]] = [*description["planes"], *description["objects"]]
        self._poses = [None]
        for surface in self._surfaces:
            pose = np.stack([surface["origin"], surface["u"], surface["v"]], axis=-2).astype(np.float64)
            self._poses.append(np.broadcast_to(pose, (self.n_frames, 3, 3)) if pose.ndim == 2 else pose)
        self._first_object = 1 + len(description["planes"])
        self._masks: dict[int, np.ndarray] = {}
        for k, obj in enumerate(description["objects"]):
            h, w = obj["canvas"]
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(np.asarray(obj["vertices"]) * 16).astype(np.int32)], 1,
                         lineType=cv2.LINE_8, shift=4)
            for x0, y0, x1, y1, width in obj["bars"]:
                cv2.line(mask, (round(x0 * 16), round(y0 * 16)), (round(x1 * 16), round(y1 * 16)), 1,
                         thickness=max(1, round(width)), lineType=cv2.LINE_8, shift=4)
            self._masks[self._first_object + k] = mask.astype(bool)
        self._levels: list[list[np.ndarray] | None] | None = None
        self._hit_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def object_of(self, surface: np.ndarray) -> np.ndarray:
        """Object id uint8 [...] of surface indices [...]: 0 for the sky and the static planes."""
        return np.where(surface >= self._first_object, surface - self._first_object + 1, 0).astype(np.uint8)

    # ------------------------------------------------------------------ geometry

    def _rays(self, frame: int, xy: np.ndarray) -> np.ndarray:
        """World directions [..., 3] of pixels xy [..., 2] of `frame`, scaled to unit camera depth."""
        cam = np.concatenate([(xy - self._principal) / self.focal, np.ones(xy.shape[:-1] + (1,))], axis=-1)
        return cam @ self._rotations[frame]  # R^T applied to row vectors

    def _project(self, frame: int, points: np.ndarray, at_infinity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [..., 2], camera depth [...]) of world points [..., 3] in `frame`; where at_infinity [...],
        `points` are directions (their depth is that of the unit direction, > 0 in front of the camera)."""
        rel = np.where(at_infinity[..., None], points, points - self._centres[frame])
        cam = rel @ self._rotations[frame].T  # [..., 3]
        depth = np.maximum(cam[..., 2:], MIN_DEPTH)  # behind the camera: far outside the frame
        return cam[..., :2] / depth * self.focal + self._principal, cam[..., 2]

    def _plane_coords(self, surface: int, frame: int, centre: np.ndarray, rays: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(depth [...], a [...], b [...]) where the rays [..., 3] from `centre` meet the surface's plane."""
        origin, u, v = self._poses[surface][frame]
        normal = np.cross(u, v)
        denom = rays @ normal
        with np.errstate(divide="ignore", invalid="ignore"):
            depth = np.where(np.abs(denom) > 1e-12, (origin - centre) @ normal / denom, -1.0)
        rel = centre + depth[..., None] * rays - origin
        return depth, rel @ u, rel @ v

    def _supported(self, surface: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether plane coordinates (a, b) [...] lie on the surface."""
        spec = self._surfaces[surface - 1]
        if surface in self._masks:
            mask = self._masks[surface]
            cx, cy = self._canvas_xy(spec, a, b)
            ix, iy = np.rint(cx).astype(np.int64), np.rint(cy).astype(np.int64)
            inside = (ix >= 0) & (ix < mask.shape[1]) & (iy >= 0) & (iy < mask.shape[0])
            hit = np.zeros(np.shape(a), bool)
            hit[inside] = mask[iy[inside], ix[inside]]
            return hit
        ok = np.ones(np.shape(a), bool)
        if spec["extent"] is not None:
            ok &= (a >= spec["extent"][0]) & (a <= spec["extent"][1])
        if spec["top"] is not None:
            ok &= (b >= 0) & (b <= _profile(spec["top"], a))
        return ok

    @staticmethod
    def _canvas_xy(spec: dict[str, Any], a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Texture (canvas) pixel coordinates of plane coordinates: x along a, y down from b = tex_origin."""
        ppu = spec["ppu"]
        return (a - spec["tex_origin"][0]) * ppu, (spec["tex_origin"][1] - b) * ppu

    def _hits(self, frame: int, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(surface uint8 [...], local float64 [..., 3]) seen at pixels xy [..., 2]: the nearest supported plane
        hit, or the sky; local = (a, b, 0) on a plane, the world direction (unit) on the sky."""
        self._check_frame(frame)
        xy = np.asarray(xy, dtype=np.float64)
        rays = self._rays(frame, xy)  # [..., 3]
        centre = self._centres[frame]
        best = np.full(xy.shape[:-1], np.inf)
        surface = np.zeros(xy.shape[:-1], np.uint8)
        local = rays / np.linalg.norm(rays, axis=-1, keepdims=True)  # the sky's directions
        for k in range(1, len(self._poses)):
            depth, a, b = self._plane_coords(k, frame, centre, rays)
            hit = (depth > MIN_DEPTH) & (depth < best)
            hit[hit] = self._supported(k, a[hit], b[hit])
            best[hit] = depth[hit]
            surface[hit] = k
            local[hit] = np.stack([a[hit], b[hit], np.zeros(int(hit.sum()))], axis=-1)
        return surface, local

    def _grid_hits(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        if frame not in self._hit_cache:
            self._hit_cache[frame] = self._hits(frame, self._grid)
        return self._hit_cache[frame]

    def _carry(self, surface: np.ndarray, local: np.ndarray, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(pixels [N, 2], camera depth [N]) in `frame` of the surface points (surface [N], local [N, 3])."""
        world = local.copy()  # sky directions stay as they are
        for k in np.unique(surface):
            if k == SKY:
                continue
            sel = surface == k
            origin, u, v = self._poses[k][frame]
            world[sel] = origin + local[sel, :1] * u + local[sel, 1:2] * v
        return self._project(frame, world, surface == SKY)

    def surface_at(self, frame: int, xy: np.ndarray) -> np.ndarray:
        """Nearest surface index uint8 [...] at points xy [..., 2] of `frame` (0 = sky, then planes, objects)."""
        return self._hits(frame, xy)[0]

    def surface_map(self, frame: int) -> np.ndarray:
        """Surface index per pixel uint8 [H, W] (0 = sky, then the planes, then the objects)."""
        return self._grid_hits(frame)[0]

    def surface_name(self, surface: int) -> str:
        """sky, ground, hillside, slab or object."""
        return "sky" if surface == SKY else self._surfaces[surface - 1].get("name", "object")

    def canvas_mask(self, object_id: int) -> np.ndarray:
        """Canonical mask bool [h, w] of object `object_id` (1-based) on its canvas."""
        return self._masks[self._first_object + object_id - 1]

    def object_ids(self, frame: int) -> np.ndarray:
        """Object id per pixel uint8 [H, W] (0 = the static scene)."""
        return self.object_of(self._grid_hits(frame)[0])

    # ------------------------------------------------------------------ rendering and ground truth

    def textures(self) -> list[list[np.ndarray] | None]:
        """Mip pyramids per surface index (None for the sky)."""
        if self._levels is None:
            self._levels = [None]
            for surface in self._surfaces:
                spec = surface["texture"]
                if "pattern" in spec:
                    texture = object_texture(spec, int(spec["size"]))
                else:
                    texture = background_texture(spec)
                self._levels.append(_pyramid(texture))
        return self._levels

    def _sky(self, directions: np.ndarray) -> np.ndarray:
        """Sky colour float32 [N, 3] of world directions [N, 3]: horizon colour to zenith colour by elevation."""
        sky = self.description["sky"]
        up = np.clip(-directions[:, 1] / np.linalg.norm(directions, axis=-1), 0, 1)[:, None]
        mix = np.sqrt(up)
        return ((1 - mix) * np.asarray(sky["horizon"]) + mix * np.asarray(sky["zenith"])).astype(np.float32)

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 [H, W, 3], object_ids uint8 [H, W]) of `frame`."""
        surface, local = self._grid_hits(frame)
        levels = self.textures()
        rgb = np.zeros((self.height, self.width, 3), np.float32)
        sel = surface == SKY
        rgb[sel] = self._sky(local[sel])
        rays = self._rays(frame, self._grid)  # [H, W, 3]
        for k in range(1, len(self._poses)):
            sel = surface == k
            if not sel.any():
                continue
            spec = self._surfaces[k - 1]
            _, a, b = self._plane_coords(k, frame, self._centres[frame], rays)  # the whole plane, for footprints
            tx, ty = self._canvas_xy(spec, a, b)
            dxx, dxy = np.gradient(tx, axis=1), np.gradient(ty, axis=1)
            dyx, dyy = np.gradient(tx, axis=0), np.gradient(ty, axis=0)
            footprint = np.maximum(np.hypot(dxx, dxy), np.hypot(dyx, dyy))  # [H, W] texture px per image px
            rgb[sel] = _sample(levels[k], tx, ty, footprint, sel)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8), self.object_of(surface)

    def flow(self, frame: int, gap: int) -> np.ndarray:
        """Exact flow frame -> frame+gap, float32 [H, W, 2] (u, v) in pixels; gap may be negative."""
        self._check_frame(frame)
        self._check_frame(frame + gap)
        surface, local = self._grid_hits(frame)
        target, _ = self._carry(surface.reshape(-1), local.reshape(-1, 3), frame + gap)
        return (target.reshape(self.height, self.width, 2) - self._grid).astype(np.float32)

    def track(self, query_xy: np.ndarray, query_frame: int, frames: Sequence[int] | np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
        """Exact positions of the surface points under query_xy [N, 2] (x, y) at query_frame.

        Returns tracks float32 [T_w, N, 2] and vis bool [T_w, N] for the frames [T_w]: visible when the point
        lies in the frame (-0.5 <= x < W - 0.5, same for y) and its surface is the nearest one there.
        """
        query_xy = np.asarray(query_xy, dtype=np.float64).reshape(-1, 2)
        frames = np.asarray(frames, dtype=np.int64).reshape(-1)
        surface, local = self._hits(query_frame, query_xy)  # [N], [N, 3]
        tracks = np.zeros((len(frames), len(query_xy), 2), np.float64)
        vis = np.zeros((len(frames), len(query_xy)), bool)
        for i, t in enumerate(frames):
            t = int(t)
            self._check_frame(t)
            if t == query_frame:
                tracks[i], in_front = query_xy, True
            else:
                tracks[i], depth = self._carry(surface, local, t)
                in_front = depth > MIN_DEPTH
            pos = tracks[i]
            in_frame = self._in_frame(pos) & in_front
            vis[i] = in_frame if t == query_frame else in_frame & (self.surface_at(t, pos) == surface)
        return tracks.astype(np.float32), vis


# --------------------------------------------------------------------------- scene generation


def _ground_row(rotation: np.ndarray, centre: np.ndarray, focal: float, principal: np.ndarray, x: float,
                depth: float, ground_y: float) -> float:
    """Image row at column x where the ground (y = ground_y) lies at camera depth `depth`."""
    # ray_y(row) = R[0,1] (x - cx)/f + R[1,1] (row - cy)/f + R[2,1] must equal (ground_y - c_y) / depth
    need = (ground_y - centre[1]) / depth - rotation[0, 1] * (x - principal[0]) / focal - rotation[2, 1]
    return float(principal[1] + focal * need / rotation[1, 1])


def _ground_hit(rotation: np.ndarray, centre: np.ndarray, focal: float, principal: np.ndarray, xy: np.ndarray,
                ground_y: float) -> np.ndarray:
    """World point [3] of the ground (y = ground_y) seen at pixel xy [2]."""
    ray = np.append((xy - principal) / focal, 1.0) @ rotation
    return centre + (ground_y - centre[1]) / ray[1] * ray


def _hsv(rng: np.random.Generator, hue: tuple[float, float], sat: tuple[float, float],
         val: tuple[float, float]) -> list[float]:
    """One random colour, RGB floats in [0, 255]."""
    from lrtl.synthetic import _hsv_to_rgb

    one = _hsv_to_rgb(np.array([[rng.uniform(*hue)]]), np.array([[rng.uniform(*sat)]]),
                      np.array([[rng.uniform(*val)]]))
    return [float(c) for c in one[0, 0]]


def _waves(rng: np.random.Generator, height: float, span: float) -> dict[str, Any]:
    """A silhouette: `height` plus three smooth waves of periods about span/4 .. span."""
    waves = [[float(rng.uniform(0.05, 0.2) * height), float(rng.uniform(0.25, 1.0) * span),
              float(rng.uniform(0, 2 * np.pi))] for _ in range(3)]
    return {"height": float(height), "waves": waves}


def _plane_texture(rng: np.random.Generator, size: int, hue: float, saturation: tuple[float, float]
                   ) -> dict[str, Any]:
    return {"texture_seed": int(rng.integers(2**31)), "canvas": [size, size], "hue": float(hue % 360),
            "saturation": float(rng.uniform(*saturation))}


def _camera(rng: np.random.Generator, p: ParallaxParams, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(rotations [T] 3x3 world -> camera, centres [T] 3) of a camera that travels mostly sideways, its speed
    and height swaying (camera_shake), and keeps looking at a (slowly drifting) point ahead, rolling slightly; it
    is at 0 at the middle frame. The sway makes its path non-linear in time: tracks of a rigid scene then span
    more than the 4 dimensions every constant-velocity motion shares, and objects moving otherwise stand out."""
    speed = rng.uniform(*p.camera_speed)
    side = 1.0 if rng.uniform() < 0.5 else -1.0
    heading = math.radians(rng.uniform(-1, 1) * p.camera_heading)
    velocity = speed * np.array([side * math.cos(heading), 0.0, math.sin(heading)])
    pitch = math.radians(rng.uniform(*p.camera_pitch))
    fix = rng.uniform(*p.fixation_depth)
    target = np.array([0.0, fix * math.tan(pitch), fix])
    drift = speed * np.array([rng.uniform(-0.3, 0.3), 0.0, 0.0])  # the followed point moves a little
    roll_rate = math.radians(rng.uniform(-1, 1) * p.camera_roll)
    mid = (n - 1) / 2
    omega = 2 * np.pi / rng.uniform(15, 40, 2)  # [2] rad/frame of the speed and height sways
    phase = rng.uniform(0, 2 * np.pi, 2)
    sway = p.camera_shake * speed / omega  # [2] amplitudes (units): speed varies by +-camera_shake
    centres = [velocity * (t - mid) + sway[0] * math.sin(omega[0] * (t - mid) + phase[0]) * velocity / speed
               + np.array([0.0, sway[1] * math.sin(omega[1] * (t - mid) + phase[1]), 0.0]) for t in range(n)]
    centres = [c - centres[int(mid)] for c in centres]
    rotations = [_look_at(centres[t], target + drift * (t - mid), roll_rate * (t - mid)) for t in range(n)]
    return rotations, centres


def _object(rng: np.random.Generator, params: SyntheticParams, k: int, n_obj: int, hue0: float,
            rotations: list[np.ndarray], centres: list[np.ndarray], focal: float, principal: np.ndarray
            ) -> dict[str, Any]:
    """One object: a textured body with thin parts on a vertical billboard that stands on the ground and walks."""
    p = params.parallax
    h, w, n = params.height, params.width, len(rotations)
    mid = (n - 1) // 2
    depth = rng.uniform(*p.object_depth)
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    area = rng.uniform(*params.object_area) * h * w
    verts = _shape_vertices(rng, shape, 0.75 * area)  # [V, 2] the body, centred at 0
    stretch = rng.uniform(1.0, 1.6)  # bodies are wider than tall (area kept)
    verts = verts * np.array([stretch, 1 / stretch])
    n_thin = int(rng.integers(p.thin_parts[0], p.thin_parts[1] + 1))
    n_tail = 1 if n_thin >= 3 else 0
    n_legs = n_thin - n_tail
    body_h = float(verts[:, 1].max() - verts[:, 1].min())
    half_w = float(np.abs(verts[:, 0]).max())
    legs = rng.uniform(0.3, 0.7) * body_h if n_legs else rng.uniform(0.1, 0.3) * body_h  # no legs: it hovers
    tail = rng.uniform(0.4, 0.8) * half_w if n_tail else 0.0
    margin = 4.0
    canvas_w = int(math.ceil(2 * (half_w + tail + margin)))
    canvas_h = int(math.ceil(body_h + legs + 2 * margin))
    centre = np.array([(canvas_w - 1) / 2, canvas_h - 1 - legs - verts[:, 1].max()])
    bars = []
    for x in np.linspace(-0.6, 0.6, n_legs) * half_w if n_legs > 1 else [0.0] * n_legs:
        width = rng.uniform(*p.thin_width)
        lean = rng.uniform(-0.3, 0.3) * legs
        bars.append([float(centre[0] + x), float(centre[1]), float(centre[0] + x + lean), float(canvas_h - 1),
                     float(width)])
    if n_tail:
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        end = centre + np.array([side * (half_w + tail), -rng.uniform(0.2, 0.8) * body_h])
        bars.append([float(centre[0]), float(centre[1]), float(end[0]), float(end[1]),
                     float(rng.uniform(*p.thin_width))])
    # the foot point's path in the image: inside the frame, or entering / leaving it sideways
    speed = rng.uniform(*params.object_speed)
    mode = "inside"
    if rng.uniform() < params.enter_leave:
        mode = "enter" if rng.uniform() < 0.5 else "leave"
    ground_y = params.parallax.camera_height
    if mode == "inside":
        x0, anchor = rng.uniform(0.25, 0.75) * w, mid
        heading = (0.0 if rng.uniform() < 0.5 else np.pi) + rng.uniform(-0.35, 0.35)
    else:
        left = rng.uniform() < 0.5
        radius = canvas_w / 2  # its centre starts (or ends) just inside the edge: partly in the frame
        x0 = 0.2 * radius if left else w - 1 - 0.2 * radius
        speed = max(speed, 2.2 * radius / max(n - 1, 1))
        heading = (0.0 if left else np.pi) + rng.uniform(-0.2, 0.2)
        anchor = 0 if mode == "enter" else n - 1
        if mode == "leave":
            heading += np.pi  # leaves through the same side
    y0 = _ground_row(rotations[mid], centres[mid], focal, principal, x0, depth, ground_y)
    rows = [_ground_row(rotations[mid], centres[mid], focal, principal, x0, d, ground_y)
            for d in (p.object_depth[1], p.object_depth[0])]  # the rows of the depth range, far to near
    # canvas px per unit: a canvas px is an image px at the middle frame, less if the object would not fit under
    # the top of the frame
    shrink = min(1.0, max(0.5, (y0 - 0.08 * h) / canvas_h))
    ppu = focal / depth / shrink
    turn = rng.uniform(-0.03, 0.03) if mode == "inside" else 0.0  # rad/frame: the path in the image curves
    steps = [speed * np.array([math.cos(heading + turn * t), 0.5 * math.sin(heading + turn * t)]) for t in range(n)]
    path = np.cumsum([np.zeros(2)] + steps[:-1], axis=0)  # [T, 2] foot displacement from frame 0
    path = path - path[int(anchor)] + np.array([x0, y0])
    hop = rng.uniform(0, p.object_hop) * canvas_h / ppu  # units: it hops (a smooth lift off the ground)
    hop_omega, hop_phase = 2 * np.pi / rng.uniform(8, 20), rng.uniform(0, 2 * np.pi)
    spin = math.radians(rng.uniform(-1, 1) * params.object_rotation)
    yaw0 = math.atan2(rotations[mid][0, 2], rotations[mid][0, 0]) + rng.uniform(-0.5, 0.5)  # about the view's right
    limit = math.radians(50)
    origins, us = [], []
    for t in range(n):
        foot = path[t].copy()
        foot[1] = np.clip(foot[1], min(rows), max(rows))
        lift = hop * math.sin(hop_omega * t + hop_phase) ** 2
        origins.append((_ground_hit(rotations[t], centres[t], focal, principal, foot, ground_y)
                        - lift * DOWN).tolist())
        yaw = yaw0 + float(np.clip(spin * (t - mid), -limit, limit))
        us.append([math.cos(yaw), 0.0, math.sin(yaw)])
    return {
        "shape": shape,
        "mode": mode,
        "canvas": [canvas_h, canvas_w],
        "vertices": (verts + centre).tolist(),
        "bars": bars,
        "ppu": float(ppu),
        "tex_origin": [float(-(canvas_w - 1) / 2 / ppu), float((canvas_h - 1) / ppu)],
        "extent": None,
        "top": None,
        "texture": {
            "texture_seed": int(rng.integers(2**31)),
            "size": max(canvas_h, canvas_w),
            "pattern": PATTERNS[int(rng.integers(len(PATTERNS)))],
            "hue": float((hue0 + k * 360 / n_obj + rng.uniform(-30, 30)) % 360),
            "saturation": float(rng.uniform(0.65, 0.95)),
            "period": float(rng.uniform(6, 14)),
            "angle": float(rng.uniform(0, np.pi)),
        },
        "origin": origins,
        "u": us,
        "v": [[0.0, -1.0, 0.0]] * n,
    }


def generate_parallax_scene(params: SyntheticParams, index: int, rng: np.random.Generator, n: int
                            ) -> ParallaxScene:
    """The parallax scene number `index` with `n` frames, drawn from `rng` (lrtl.synthetic.generate_scene's)."""
    p = params.parallax
    h, w = params.height, params.width
    n_obj = int(rng.integers(params.n_objects[0], params.n_objects[1] + 1))
    focal = p.focal * w
    principal = np.array([(w - 1) / 2, (h - 1) / 2])
    rotations, centres = _camera(rng, p, n)
    mid = (n - 1) // 2
    ground_y = p.camera_height
    hue = rng.uniform(0, 360)
    planes = []
    # textures repeat; their sizes (powers of 2) follow the frame width
    tile = 2 ** math.ceil(math.log2(2 * w))
    # the ground: y = camera height, texture in (x, z), one texture px is about one image px at depth 5, the
    # texture centred on the middle frame's view
    ppu = focal / 5
    planes.append({"name": "ground", "origin": [0.0, ground_y, 0.0], "u": [1.0, 0.0, 0.0], "v": [0.0, 0.0, 1.0],
                   "extent": None, "top": None, "ppu": ppu, "tex_origin": [-tile / 2 / ppu, tile / 2 / ppu + 4.0],
                   "texture": _plane_texture(rng, tile, hue, (0.15, 0.35))})
    # the far hillside: a vertical plane up to a silhouette, the sky above it
    far = rng.uniform(*p.far_depth)
    hill = rng.uniform(*p.hill_height)
    span = far * w / focal  # the width it shows, units
    planes.append({"name": "hillside", "origin": [0.0, ground_y, far], "u": [1.0, 0.0, 0.0],
                   "v": [0.0, -1.0, 0.0], "extent": None, "top": _waves(rng, hill, span),
                   "ppu": focal / far, "tex_origin": [-tile / 4 * far / focal, 0.0],
                   "texture": _plane_texture(rng, tile // 2, hue + rng.uniform(40, 100), (0.1, 0.3))})
    # near slabs: vertical planes standing on the ground, facing the camera of the middle frame, turned a little
    for _ in range(int(rng.integers(p.n_slabs[0], p.n_slabs[1] + 1))):
        depth = rng.uniform(*p.slab_depth)
        width = rng.uniform(*p.slab_width) * w * depth / focal
        x = rng.uniform(0.1, 0.9) * w
        row = _ground_row(rotations[mid], centres[mid], focal, principal, x, depth, ground_y)
        foot = _ground_hit(rotations[mid], centres[mid], focal, principal, np.array([x, row]), ground_y)
        yaw = math.atan2(rotations[mid][0, 2], rotations[mid][0, 0]) + rng.uniform(-0.4, 0.4)
        u = np.array([math.cos(yaw), 0.0, math.sin(yaw)])
        top = _waves(rng, rng.uniform(0.5, 1.3) * ground_y, 3 * width)
        planes.append({"name": "slab", "origin": (foot - width / 2 * u).tolist(), "u": u.tolist(),
                       "v": [0.0, -1.0, 0.0], "extent": [0.0, float(width)], "top": top,
                       "ppu": focal / depth, "tex_origin": [0.0, 0.0],
                       "texture": _plane_texture(rng, tile // 4, hue + rng.uniform(-60, 60), (0.05, 0.25))})
    sky = {"horizon": _hsv(rng, (190, 230), (0.05, 0.15), (0.85, 0.95)),
           "zenith": _hsv(rng, (200, 230), (0.25, 0.45), (0.75, 0.9))}
    hue0 = rng.uniform(0, 360)
    objects = [_object(rng, params, k, n_obj, hue0, rotations, centres, focal, principal) for k in range(n_obj)]
    description = {"kind": "parallax", "version": PARALLAX_VERSION, "height": h, "width": w, "n_frames": n,
                   "seed": params.seed, "index": index,
                   "camera": {"focal": focal, "rotations": [r.tolist() for r in rotations],
                              "centres": [c.tolist() for c in centres]},
                   "sky": sky, "planes": planes, "objects": objects}
    return ParallaxScene(description)
