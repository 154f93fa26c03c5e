"""Benchmark of the CPU track backends on synthetic sequences with exact ground truth (issue 3).

    python benchmarks/tracks.py [--work DIR] [--png PATH] [--sequences 3] [--lengths 50 150]

Prints, in one run:
  * quality: TAP-Vid metrics of every CPU backend against the generator's exact tracks - position accuracy
    delta_avg (fraction of visible points within 1, 2, 4, 8, 16 px, averaged), occlusion accuracy and average
    Jaccard - on synthetic sequences at 240x432 (flowchain on DIS flow = the CPU default, flowchain on exact
    flow, and the oracle backend as a sanity check); points are evaluated on every frame of their window but
    the query frame itself;
  * speed and memory: a tracking job (`python -m lrtl.tracks chunk`, a subprocess, peak RSS from wait4's
    ru_maxrss) on a 480x854 synthetic sequence at the paper's stride-4 grid and 101-frame window, for sequence
    lengths 50 and 150, with throughput in point-frames per second;
  * disk: bytes per point-frame of the chunk store (float32 and fixed16) against the reference's float16 .pt
    files (about 14 MB per query frame of 25.6k points x 101 frames), and float16's rounding error at 854 px;
  * a PNG of tracks over frames (flowchain vs exact) a person can look at.
Targets: delta_avg >= 0.80 and occlusion accuracy >= 0.85 for flowchain; peak RSS at 150 frames <= 1.3x at 50.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from lrtl import stores
from lrtl.flow import FlowParams, run_flow
from lrtl.synthetic import SyntheticParams, generate_scene
from lrtl.tracks import TracksParams, n_chunks, open_sequence_tracks, run_chunk, run_index

THRESHOLDS = (1, 2, 4, 8, 16)
REFERENCE_BYTES_PER_QUERY_FRAME = 14e6  # karazijal/lrtl fp16 .pt, 120 x 213.5 grid x 101 frames (+ aux)
REFERENCE_POINT_FRAMES = 120 * 213.5 * 101

# Config defaults (config.yaml, the one place they live) plus this benchmark's own settings.
CONFIG = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
SYNTHETIC = {
    **CONFIG["synthetic"],
    "n_sequences": 8,
    "object_area": [0.04, 0.15],
    "object_speed": [1.0, 4.0],
    "jpeg_quality": 90,
    "seed": 1,
}
FLOW = {**CONFIG["flow"], "backend": "dis", "gaps": [1]}
TRACKS = {
    **CONFIG["tracks"],
    "backend": "flowchain",
    "chunk_size": 8,
    "stride": 4,
    "window": 101,
    "points_per_batch": 50000,
    "storage": "float32",
}


# --------------------------------------------------------------------------- metrics


def tapvid_metrics(pred, pred_vis, gt, gt_vis, evaluate):
    """TAP-Vid metrics over the points/frames selected by `evaluate` (bool, same shape as vis)."""
    occlusion_accuracy = float((pred_vis == gt_vis)[evaluate].mean())
    dist = np.linalg.norm(pred - gt, axis=-1)
    deltas, jaccards = [], []
    for threshold in THRESHOLDS:
        within = dist < threshold
        visible = gt_vis & evaluate
        deltas.append(float(within[visible].mean()))
        tp = (within & pred_vis & gt_vis & evaluate).sum()
        fp = ((pred_vis & ~gt_vis) | (pred_vis & gt_vis & ~within)) & evaluate
        jaccards.append(float(tp / (visible.sum() + fp.sum())))
    return {
        "delta_avg": float(np.mean(deltas)),
        "occlusion_accuracy": occlusion_accuracy,
        "average_jaccard": float(np.mean(jaccards)),
        **{f"delta_{t}": d for t, d in zip(THRESHOLDS, deltas, strict=True)},
    }


# --------------------------------------------------------------------------- data


def write_sequence(root: Path, params: dict, index: int):
    """Render synthetic sequence `index` into a frames store; return (scene, frames path)."""
    scene = generate_scene(SyntheticParams.from_mapping(params), index)
    rgb = np.stack([scene.render(t)[0] for t in range(scene.n_frames)])  # [T, H, W, 3]
    frames = root / f"frames-{index}.zarr"
    stores.write_frames(
        frames,
        rgb,
        np.zeros((0, scene.height, scene.width), bool),
        np.zeros(0, np.int32),
        dataset="bench",
        sequence=f"seq-{index}",
    )
    return scene, frames


def track_all(root: Path, name: str, frames: Path, params: dict, **inputs) -> Path:
    p = TracksParams.from_mapping(params)
    n_frames = stores.open_store(frames, "frames").attrs["n_frames"]
    chunks = []
    for c in range(n_chunks(n_frames, p.chunk_size)):
        chunks.append(root / name / f"chunk-{c:03d}.zarr")
        run_chunk(frames=frames, chunk=c, params=p, dataset="bench", sequence=name, out=chunks[-1], **inputs)
    run_index(frames=frames, chunks=chunks, params=p, out=root / name / "index.json")
    return root / name / "index.json"


def quality(work: Path, n_sequences: int, png: Path) -> dict:
    results: dict[str, list] = {"flowchain (DIS flow)": [], "flowchain (exact flow)": [], "oracle": []}
    for index in range(n_sequences):
        scene, frames = write_sequence(work, SYNTHETIC, index)
        gt_path = work / f"gt-{index}.zarr"  # the oracle backends read the scene from a ground-truth store
        with stores.atomic_path(gt_path) as tmp:
            stores.create_group(tmp, "synthetic_gt", scene=scene.description)
        flows = {}
        for backend in ("dis", "oracle"):
            flows[backend] = work / f"flow-{backend}-{index}.zarr"
            run_flow(
                frames=frames,
                out=flows[backend],
                params=FlowParams.from_mapping({**FLOW, "backend": backend}),
                ground_truth=gt_path,
            )
        indexes = {
            "flowchain (DIS flow)": track_all(work, f"fc-dis-{index}", frames, TRACKS, flow=flows["dis"]),
            "flowchain (exact flow)": track_all(
                work, f"fc-exact-{index}", frames, TRACKS, flow=flows["oracle"]
            ),
            "oracle": track_all(
                work, f"oracle-{index}", frames, {**TRACKS, "backend": "oracle"}, ground_truth=gt_path
            ),
        }
        exact = {}
        for name, index_json in indexes.items():
            seq = open_sequence_tracks(index_json)
            for q in range(0, seq.n_frames, 2):
                pred, pred_vis, start = seq.query(q)
                if q not in exact:
                    exact[q] = scene.track(seq.query_xy(q), q, np.arange(start, start + len(pred)))
                gt, gt_vis = exact[q]
                evaluate = np.ones_like(gt_vis)
                evaluate[q - start] = False
                results[name].append((pred, pred_vis, gt, gt_vis, evaluate))
        if index == 0:
            picture(png, frames, scene, open_sequence_tracks(indexes["flowchain (DIS flow)"]))
    summary = {}
    for name, rows in results.items():
        summary[name] = tapvid_metrics(
            *(np.concatenate([r[i].reshape(-1, *r[i].shape[2:]) for r in rows]) for i in range(5))
        )
    return summary


def picture(png: Path, frames: Path, scene, seq) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q = seq.n_frames // 2
    pred, vis, start = seq.query(q)
    gt, gt_vis = scene.track(seq.query_xy(q), q, np.arange(start, start + len(pred)))
    rgb = stores.read_rgb(frames)
    pick = np.arange(0, pred.shape[1], 37)
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for ax, (title, xy, v) in zip(
        axes[:2], (("flowchain on DIS flow", pred, vis), ("exact", gt, gt_vis)), strict=True
    ):
        ax.imshow(rgb[q])
        for n in pick:
            ax.plot(xy[:, n, 0], xy[:, n, 1], "-", color="white", lw=0.5, alpha=0.5)
            shown = v[:, n]
            ax.scatter(
                xy[shown, n, 0],
                xy[shown, n, 1],
                s=1.5,
                c=np.arange(len(xy))[shown],
                cmap="viridis",
                vmin=0,
                vmax=len(xy) - 1,
            )
        ax.set_title(f"{title}, query frame {q}")
        ax.set_xlim(-0.5, rgb.shape[2] - 0.5)
        ax.set_ylim(rgb.shape[1] - 0.5, -0.5)
        ax.set_axis_off()
    err = np.where(vis & gt_vis, np.linalg.norm(pred - gt, axis=-1), np.nan)
    axes[2].plot(np.arange(start, start + len(pred)), np.nanmedian(err, 1), label="median error, px")
    axes[2].plot(np.arange(start, start + len(pred)), vis.mean(1), label="visible fraction (flowchain)")
    axes[2].plot(np.arange(start, start + len(pred)), gt_vis.mean(1), "--", label="visible fraction (exact)")
    axes[2].set_xlabel("frame")
    axes[2].legend()
    axes[2].set_title("flowchain vs exact over the window")
    fig.suptitle("tracks of every 37th grid point over the window; visible positions coloured by frame")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- speed, memory, disk


# The job runs as `lrtl.tracks.main(argv)` in a fresh interpreter that reports its own peak RSS (VmHWM of its
# address space) at exit.  The child's ru_maxrss from wait4 is not usable here: Linux carries the high-water
# of the forked pre-exec image (this benchmark process, hundreds of MB) over the exec into ru_maxrss.
JOB = """
import sys
from lrtl.tracks import main
main(sys.argv[1:])
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")][0].split()[1]
sys.stdout.write(f"PEAK_RSS_KB {hwm}\\n")
"""


def run_job(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, log) of a `python -m lrtl.tracks chunk ...` job in its own process."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", JOB, *argv], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"tracking job failed:\n{proc.stderr}")
    peak_kb = int(proc.stdout.split("PEAK_RSS_KB")[1].split()[0])
    return wall, peak_kb * 1024, proc.stderr


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def speed_and_memory(work: Path, lengths: list[int], chunk_size: int) -> dict:
    out = {}
    for length in lengths:
        params = {
            **SYNTHETIC,
            "height": 480,
            "width": 854,
            "n_frames": [length, length],
            "n_objects": [2, 2],
            "n_sequences": 1,
            "seed": 7,
        }
        root = work / f"speed-{length}"
        root.mkdir(parents=True, exist_ok=True)
        _, frames = write_sequence(root, params, 0)
        flow = root / "flow.zarr"
        run_flow(frames=frames, out=flow, params=FlowParams.from_mapping(FLOW))
        chunk = n_chunks(length, chunk_size) // 2  # a chunk in the middle: the full window
        row = {}
        for storage in ("float32", "fixed16"):
            tracks = {**TRACKS, "chunk_size": chunk_size, "storage": storage}
            store = root / f"chunk-{storage}.zarr"
            wall, rss, log = run_job(
                [
                    "chunk",
                    "--frames",
                    str(frames),
                    "--flow",
                    str(flow),
                    "--chunk",
                    str(chunk),
                    "--params",
                    json.dumps(tracks),
                    "--dataset",
                    "bench",
                    "--sequence",
                    "s",
                    "--out",
                    str(store),
                ]
            )
            group = stores.open_store(store, "tracks")
            point_frames = int(group["n_points"][...].sum()) * group["vis"].shape[1]
            row[storage] = {
                "wall_s": wall,
                "peak_rss_mb": rss / 2**20,
                "point_frames": point_frames,
                "point_frames_per_s": point_frames / wall,
                "bytes": du(store),
                "bytes_per_point_frame": du(store) / point_frames,
                "window": group["vis"].shape[1],
            }
            if storage == "float32":
                xy = group["tracks"][...]
                vis = group["vis"][...]
                row["float16_max_error_px"] = float(
                    np.abs(xy.astype(np.float16).astype(np.float32) - xy)[vis].max()
                )
                row["fixed16_max_error_px"] = float(np.abs(np.rint(xy * 16) / 16 - xy)[vis].max())
        out[length] = row
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--png", type=Path, default=Path("results/benchmarks/tracks/synthetic.png"))
    parser.add_argument("--json", type=Path, default=Path("results/benchmarks/tracks/tracks.json"))
    parser.add_argument("--sequences", type=int, default=3, help="synthetic sequences for the quality part")
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 150])
    parser.add_argument("--chunk-size", type=int, default=4, help="query frames of the timed job")
    parser.add_argument("--parts", nargs="+", default=["quality", "speed"], choices=["quality", "speed"])
    args = parser.parse_args(argv)
    summary, speed, checks = {}, {}, {}
    reference = REFERENCE_BYTES_PER_QUERY_FRAME / REFERENCE_POINT_FRAMES
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        work = Path(scratch)
        if "quality" in args.parts:
            t0 = time.perf_counter()
            summary = quality(work, args.sequences, args.png)
            print_quality(summary, args.sequences, time.perf_counter() - t0)
            fc = summary["flowchain (DIS flow)"]
            checks["flowchain delta_avg >= 0.80"] = fc["delta_avg"] >= 0.80
            checks["flowchain occlusion_accuracy >= 0.85"] = fc["occlusion_accuracy"] >= 0.85
        if "speed" in args.parts:
            t0 = time.perf_counter()
            speed = speed_and_memory(work, args.lengths, args.chunk_size)
            print_speed(speed, args.chunk_size, time.perf_counter() - t0)
            print(f"reference float16 .pt: {reference:.2f} B/point-frame")
            lo, hi = min(speed), max(speed)
            for storage in ("float32", "fixed16"):
                ratio = speed[hi][storage]["peak_rss_mb"] / speed[lo][storage]["peak_rss_mb"]
                checks[f"{storage}: peak RSS T={hi} / T={lo} = {ratio:.2f} <= 1.3"] = ratio <= 1.3
                checks[f"{storage}: bytes per point-frame <= reference"] = all(
                    r[storage]["bytes_per_point_frame"] <= reference for r in speed.values()
                )
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "quality": summary,
        "speed": speed,
        "reference_bytes_per_point_frame": reference,
        "checks": checks,
    }
    args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"picture: {args.png}; figures: {args.json}")


def print_quality(summary: dict, n_sequences: int, seconds: float) -> None:
    print(
        f"== quality on {n_sequences} synthetic sequences at 240x432 (stride 4, window 101), {seconds:.0f} s"
    )
    print(
        f"{'backend':26s} {'delta_avg':>9s} {'occ_acc':>8s} {'AJ':>6s}  "
        + " ".join(f"d<{t:<3d}" for t in THRESHOLDS)
    )
    for name, m in summary.items():
        print(
            f"{name:26s} {m['delta_avg']:9.3f} {m['occlusion_accuracy']:8.3f} {m['average_jaccard']:6.3f}  "
            + " ".join(f"{m[f'delta_{t}']:.3f}" for t in THRESHOLDS)
        )


def print_speed(speed: dict, chunk_size: int, seconds: float) -> None:
    print(
        f"== tracking job (flowchain, 480x854, stride 4, window 101, {chunk_size} query frames), "
        f"{seconds:.0f} s"
    )
    for length, row in speed.items():
        for storage in ("float32", "fixed16"):
            r = row[storage]
            print(
                f"T={length:4d} {storage:8s} window {r['window']:3d}: {r['wall_s']:6.1f} s, "
                f"{r['point_frames_per_s'] / 1e6:6.2f} M point-frames/s (incl. start-up), "
                f"peak RSS {r['peak_rss_mb']:7.1f} MB, {r['bytes_per_point_frame']:.2f} B/point-frame"
            )
        print(
            f"T={length:4d} max rounding error on visible points: "
            f"float16 {row['float16_max_error_px']:.3f} px, "
            f"fixed16 {row['fixed16_max_error_px']:.4f} px"
        )


if __name__ == "__main__":
    main()
