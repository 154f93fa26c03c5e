"""`cotracker` track backend: CoTracker v2/v3 (offline) through torch.hub, weights from a local file.

METHOD.md §3 and §12.3: `torch.hub.load(repo_dir, entry, source="local", pretrained=False)` on a local clone
at the pinned commit (or `source: github` at `repo:commit` on machines with internet), then the state dict of
the local checkpoint is loaded into the predictor's model.  The documented steps of the reference predictor
are re-implemented around the model (no private API):
  1. frames and queries are rescaled bilinearly (align_corners=True) to the model resolution;
  2. a forward pass on the window;
  3. a pass on the time-reversed window replaces every frame before the query frame;
  4. visible <=> predicted visibility probability > visibility_threshold;
  5. at the query frame the position is overwritten with the query point and marked visible;
  6. coordinates are mapped back to the frame resolution.
Query points go through the model in batches of `points_per_batch`; every batch carries the optional aux grid
(queried at q ± aux_offset) as shared context, which is never stored.  The job's frames are read and resized
once; GPU memory is set by the window and the batch.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from lrtl import stores
from lrtl.cli import StageError
from lrtl.runtime import file_sha256, resolve_device

log = logging.getLogger(__name__)

FIX = "run `snakemake download_weights` on a machine with internet (or copy the files there by hand)"


def clone_commit(repo_dir: Path) -> str | None:
    """HEAD commit of a git clone, or None when the folder is not a git work tree."""
    try:
        result = subprocess.run(["git", "-C", str(repo_dir), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def checkpoint_path(p: Any, checkpoint: Path | None) -> Path:
    """The checkpoint file (--checkpoint, else tracks.cotracker.checkpoint); a StageError when it is missing."""
    path = Path(checkpoint or p.checkpoint)
    if not path.is_file():
        raise StageError(f"CoTracker checkpoint {path} not found; {FIX}")
    return path


def load_predictor(p: Any, hub_repo: Path | None, checkpoint: Path | None) -> tuple[Any, dict[str, Any]]:
    """(predictor from torch.hub with the checkpoint's weights, provenance attrs)."""
    import torch

    checkpoint = checkpoint_path(p, checkpoint)
    provenance: dict[str, Any] = {"cotracker_entry": p.entry, "cotracker_source": p.source}
    if p.source == "local":
        repo_dir = Path(hub_repo or p.repo_dir)
        if not (repo_dir / "hubconf.py").is_file():
            raise StageError(f"CoTracker hub repository {repo_dir} (no hubconf.py there) not found; {FIX}")
        commit = clone_commit(repo_dir)
        if commit is None:
            log.warning("%s is not a git clone; cannot check it against the pinned commit %s",
                        repo_dir, p.commit)
        elif p.commit and not commit.startswith(p.commit):
            raise StageError(f"{repo_dir} is at commit {commit}, but tracks.cotracker.commit pins "
                             f"{p.commit}; check out the pinned commit or {FIX}")
        provenance["cotracker_commit"] = commit or f"unchecked (pinned {p.commit})"
        predictor = torch.hub.load(str(repo_dir), p.entry, source="local", pretrained=False)
    elif p.source == "github":
        predictor = torch.hub.load(f"{p.repo}:{p.commit}", p.entry, source="github", pretrained=False,
                                   trust_repo=True, skip_validation=True)
        provenance["cotracker_commit"] = p.commit
    else:
        raise StageError(f"tracks.cotracker.source must be local or github, not {p.source!r}")
    model = getattr(predictor, "model", predictor)
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise StageError(f"{checkpoint}: does not fit the {p.entry} model ({str(err)[:300]}); check "
                         f"tracks.cotracker.entry and checkpoint") from err
    provenance["checkpoint_sha256"] = file_sha256(checkpoint)
    return model, provenance


class CoTrackerTracker:
    """CoTracker on the frames [lo, hi) of the job, resized once to the model resolution."""

    name = "cotracker"

    @staticmethod
    def resume_identity(*, params: Any, checkpoint: Path | None) -> dict[str, Any]:
        """What a partial chunk store must share beyond the params to be resumed: the params name the
        checkpoint only by its path, so a different file there must start the chunk afresh."""
        return {"checkpoint_sha256": file_sha256(checkpoint_path(params.cotracker, checkpoint))}

    def __init__(self, *, inputs: Any, params: Any) -> None:
        import torch
        import torch.nn.functional as F

        p = params.cotracker
        self.p = p
        self.points_per_batch = max(1, int(params.points_per_batch))
        self.device = resolve_device(p.device, "tracks.cotracker.device")
        self.model, self.provenance_attrs = load_predictor(p, inputs.hub_repo, inputs.checkpoint)
        self.model.to(self.device).eval()
        self.provenance_attrs["device"] = str(self.device)
        self.height, self.width = inputs.height, inputs.width
        self.lo, hi = inputs.frame_range
        rgb = stores.open_store(inputs.frames, "frames")["rgb"][self.lo:hi]  # [T_l, H, W, 3] uint8
        video = []
        for start in range(0, len(rgb), 16):  # resize in small groups: host memory stays one group
            block = torch.from_numpy(rgb[start:start + 16]).to(self.device).permute(0, 3, 1, 2).float()
            video.append(F.interpolate(block, (p.height, p.width), mode="bilinear", align_corners=True))
        self.video = torch.cat(video)  # [T_l, 3, h, w] float 0-255 at the model resolution
        # frame px -> model px (align_corners=True convention, as the reference predictor)
        self.to_model = np.array([(p.width - 1) / max(1, self.width - 1),
                                  (p.height - 1) / max(1, self.height - 1)], np.float32)
        self.calls = 0

    def _aux(self, query: int, window_len: int) -> np.ndarray:
        """Aux context queries (t, x, y) in model pixels, float32 [A, 3] (paper: 32x32 grid at q ± 7)."""
        g = self.p.aux_grid
        if g <= 0:
            return np.zeros((0, 3), np.float32)
        xs = np.linspace(0, self.p.width - 1, g, dtype=np.float32)
        ys = np.linspace(0, self.p.height - 1, g, dtype=np.float32)
        grid_x, grid_y = np.meshgrid(xs, ys)
        points = np.stack([grid_x.ravel(), grid_y.ravel()], 1)  # [g*g, 2]
        times = {int(np.clip(query + d, 0, window_len - 1)) for d in (-self.p.aux_offset, self.p.aux_offset)}
        times.discard(query)
        return np.concatenate([np.concatenate([np.full((len(points), 1), t, np.float32), points], 1)
                               for t in sorted(times)] or [np.zeros((0, 3), np.float32)])

    def _run(self, video, queries):
        """One model pass: video [1, T, 3, h, w], queries [1, N, 3] -> (tracks [T, N, 2], vis prob [T, N])."""
        self.calls += 1
        out = self.model(video=video, queries=queries, iters=self.p.iterations)
        return out[0][0], out[1][0].reshape(out[1].shape[1], out[1].shape[2])

    def track(self, query_frame: int, query_xy: np.ndarray, window_start: int, window_len: int
              ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        q = query_frame - window_start
        first = window_start - self.lo
        video = self.video[first:first + window_len][None]  # [1, T_w, 3, h, w]
        reversed_video = video.flip(1)
        aux = self._aux(q, window_len)  # [A, 3]
        n = len(query_xy)
        tracks = np.zeros((window_len, n, 2), np.float32)  # [T_w, N, 2]
        vis = np.zeros((window_len, n), bool)  # [T_w, N]
        with torch.inference_mode():
            for start in range(0, n, self.points_per_batch):
                xy = query_xy[start:start + self.points_per_batch] * self.to_model  # [B, 2] model px
                queries = np.concatenate([np.concatenate([np.full((len(xy), 1), q, np.float32), xy], 1), aux])
                queries = torch.from_numpy(queries).to(self.device)[None]  # [1, B + A, 3]
                coords, prob = self._run(video, queries)  # [T_w, B + A, 2], [T_w, B + A]
                if q > 0:  # frames before the query come from the time-reversed pass
                    reversed_queries = queries.clone()
                    reversed_queries[..., 0] = window_len - 1 - reversed_queries[..., 0]
                    coords_r, prob_r = self._run(reversed_video, reversed_queries)
                    coords[:q] = coords_r.flip(0)[:q]
                    prob[:q] = prob_r.flip(0)[:q]
                b = len(xy)
                tracks[:, start:start + b] = coords[:, :b].float().cpu().numpy() / self.to_model
                vis[:, start:start + b] = (prob[:, :b] > self.p.visibility_threshold).cpu().numpy()
        tracks[q] = query_xy
        vis[q] = True
        return tracks, vis

    def provenance(self) -> dict[str, Any]:
        return dict(self.provenance_attrs)
