"""Benchmark on real video with ground truth: segmentation quality, stage costs and track label consistency.

    snakemake --cores 2 --configfile workflow/overlays/davis2016-dev.yaml      # the pipeline run it reads
    python benchmarks/realvideo.py --dataset davis2016_dev [--frame-rule reference] [--query-every 4]
    python benchmarks/realvideo.py --dataset davis2016_dev_tune davis2016_dev_confirm fbms59_sample --summary

Reads what that run left under results/<dataset>/ and benchmarks/<dataset>/ (nothing is recomputed) and prints:
  * J and F (x100) per sequence and their mean over sequences, for every learned run, the flow baseline
    (`baseline`), the track baseline (`baseline_tracks`) and all-foreground, plus the oracle-merge J of each
    learned run (the best subset of its K masks chosen with the ground truth: a diagnostic, never a result);
  * the margin of the best learned run over the best no-learning row;
  * wall time and peak RSS per stage, summed / maximised over the jobs of Snakemake's benchmark TSVs;
  * track label consistency against the ground-truth masks, per sequence: of the points visible at their query
    frame q that start inside (outside) the object, the fraction still inside (outside) the mask on the later
    annotated frames of their window where they are visible. A tracker that drifts off objects or leaks onto
    them lowers these; 1.0 is perfect.
With several datasets (the halves of the development split, workflow/overlays/davis2016-dev-split.yaml, and the
FBMS59 sample), it first prints their mean J / F side by side, one column per dataset, and what each learned run
gains over flow_only and over the best no-learning row in each; `--summary` prints only that.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from runcosts import stage_costs  # benchmarks/runcosts.py

from lrtl.stores import read_ground_truth
from lrtl.tracks import open_sequence_tracks

NO_LEARNING = ("baseline", "baseline_tracks")
RULES = {"reference": "scored_reference", "official": "scored_official", "annotated": "scored_annotated"}


def read_metrics(results: Path, dataset: str) -> pd.DataFrame:
    tables = [pd.read_csv(path, sep="\t") for path in sorted((results / dataset / "metrics").glob("*/*.tsv"))]
    if not tables:
        raise SystemExit(f"no metrics under {results / dataset / 'metrics'}; run the pipeline first")
    return pd.concat(tables, ignore_index=True)


def quality(metrics: pd.DataFrame, frame_rule: str) -> pd.DataFrame:
    """Per (run, sequence) mean J, F and oracle-merge J over the scored frames, x100; all-foreground as a run."""
    scored = metrics[metrics[RULES[frame_rule]].astype(bool)]
    rows = scored.groupby(["run", "sequence"]).agg(
        J=("j", "mean"), F=("f", "mean"), oracle_J=("oracle_merge_do_not_use", "mean")
    )
    first_run = scored[scored["run"] == scored["run"].iloc[0]]
    fg = first_run.groupby("sequence").agg(J=("j_all_foreground", "mean"))
    fg["F"], fg["oracle_J"] = np.nan, np.nan
    fg = fg.assign(run="all-foreground").set_index("run", append=True).reorder_levels(["run", "sequence"])
    out = pd.concat([rows, fg]) * 100
    out.loc[out.index.get_level_values(0).isin(NO_LEARNING), "oracle_J"] = np.nan  # K = 2: nothing to merge
    return out


def label_consistency(results: Path, dataset: str, sequence: str, query_every: int) -> dict[str, float]:
    """Fractions of visible track points that stay inside / outside the ground-truth mask (module docstring)."""
    frames = results / dataset / "frames" / f"{sequence}.zarr"
    gt, gt_index = read_ground_truth(frames)  # [A, Hg, Wg], frame index of each annotation
    annotated = {int(t): row for row, t in enumerate(gt_index.tolist())}
    reader = open_sequence_tracks(results / dataset / "tracks" / sequence / "index.json")
    scale = np.array([gt.shape[2] / reader.width, gt.shape[1] / reader.height])
    counts = {"in_kept": 0, "in_total": 0, "out_kept": 0, "out_total": 0}

    def inside(mask: np.ndarray, xy: np.ndarray) -> np.ndarray:
        cols = np.clip(np.floor(xy[:, 0] * scale[0]).astype(int), 0, mask.shape[1] - 1)
        rows = np.clip(np.floor(xy[:, 1] * scale[1]).astype(int), 0, mask.shape[0] - 1)
        return mask[rows, cols]

    for q in range(0, reader.n_frames, query_every):
        if q not in annotated:
            continue
        tracks, vis, start = reader.query(q)
        start_inside = inside(gt[annotated[q]].astype(bool), tracks[q - start])  # [N]
        for t in range(q + 1, start + tracks.shape[0]):
            if t not in annotated:
                continue
            seen = vis[t - start]
            now_inside = inside(gt[annotated[t]].astype(bool), tracks[t - start])
            counts["in_total"] += int((seen & start_inside).sum())
            counts["in_kept"] += int((seen & start_inside & now_inside).sum())
            counts["out_total"] += int((seen & ~start_inside).sum())
            counts["out_kept"] += int((seen & ~start_inside & ~now_inside).sum())
    return {
        "stay_inside": counts["in_kept"] / max(counts["in_total"], 1),
        "stay_outside": counts["out_kept"] / max(counts["out_total"], 1),
        "inside_point_frames": counts["in_total"],
    }


def side_by_side(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Mean over sequences of J and F (x100) per run, one column pair per dataset, plus the margins of every
    learned run over flow_only and over the best no-learning row of its dataset."""
    columns = {}
    for dataset, table in tables.items():
        means = table[["J", "F"]].groupby(level=0).mean()
        fixed = [r for r in (*NO_LEARNING, "all-foreground") if r in means.index]
        learned = [r for r in means.index if r not in fixed]
        columns[(dataset, "J")] = means["J"]
        columns[(dataset, "F")] = means["F"]
        best_fixed = means.loc[fixed, "J"].max() if fixed else np.nan
        columns[(dataset, "-best fixed")] = pd.Series({r: means.loc[r, "J"] - best_fixed for r in learned})
        if "flow_only" in means.index:
            columns[(dataset, "-flow_only")] = pd.Series(
                {r: means.loc[r, "J"] - means.loc["flow_only", "J"] for r in learned if r != "flow_only"}
            )
    wide = pd.DataFrame(columns)
    order = [r for r in wide.index if r not in (*NO_LEARNING, "all-foreground")]
    order += [r for r in (*NO_LEARNING, "all-foreground") if r in wide.index]
    return wide.loc[order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, nargs="+",
                        help="dataset name(s) under results/ (e.g. davis2016_dev_tune davis2016_dev_confirm)")
    parser.add_argument("--summary", action="store_true", help="only the side-by-side means of the datasets")
    parser.add_argument("--frame-rule", default="reference", choices=sorted(RULES), help="frames scored")
    parser.add_argument("--query-every", type=int, default=4, help="query frames checked for label consistency")
    parser.add_argument("--results", default="results", type=Path)
    parser.add_argument("--benchmarks", default="benchmarks", type=Path)
    args = parser.parse_args()
    pd.set_option("display.width", 200)

    tables = {d: quality(read_metrics(args.results, d), args.frame_rule) for d in args.dataset}
    if len(tables) > 1 or args.summary:
        print(f"== mean J / F x100 over sequences ({args.frame_rule} frames); -best fixed, -flow_only: J margins")
        print(side_by_side(tables).round(1).to_string(na_rep=""))
    if not args.summary:
        for dataset, table in tables.items():
            report(args, dataset, table)


def report(args: argparse.Namespace, dataset: str, table: pd.DataFrame) -> None:
    """The full report of one dataset (module docstring)."""
    runs = list(dict.fromkeys(table.index.get_level_values(0)))
    learned = [r for r in runs if r not in (*NO_LEARNING, "all-foreground")]
    print(f"\n== {dataset}: J / F x100 per sequence ({args.frame_rule} frames)")
    wide = table[["J", "F"]].unstack(0)
    wide.columns = [f"{run} {measure}" for measure, run in wide.columns]
    ordered = [f"{run} {m}" for run in learned + [*NO_LEARNING, "all-foreground"] for m in ("J", "F")]
    wide = wide[[c for c in ordered if c in wide.columns]].dropna(axis=1, how="all")
    wide.loc["mean"] = wide.mean()
    print(wide.round(1).to_string())
    means = wide.loc["mean"]
    print("\n== oracle-merge J (K masks merged with the ground truth: a diagnostic, never a result)")
    for run in learned:
        print(f"{run}: {table.loc[run, 'oracle_J'].mean():.1f}")
    best_learned = max(learned, key=lambda r: means[f"{r} J"]) if learned else None
    no_learning = [r for r in (*NO_LEARNING, "all-foreground") if f"{r} J" in means]
    best_fixed = max(no_learning, key=lambda r: means[f"{r} J"]) if no_learning else None
    if best_learned and best_fixed:
        margin = means[f"{best_learned} J"] - means[f"{best_fixed} J"]
        print(f"\nbest learned {best_learned} {means[f'{best_learned} J']:.1f} J vs best no-learning {best_fixed} "
              f"{means[f'{best_fixed} J']:.1f} J: margin {margin:+.1f}")

    costs = stage_costs(args.benchmarks, dataset)
    print("\n== wall time, CPU time and peak RSS per stage (Snakemake benchmark TSVs)")
    if len(costs):
        costs.loc["total"] = [costs["jobs"].sum(), costs["wall_s"].sum(), costs["cpu_s"].sum(),
                              costs["peak_rss_mb"].max()]  # fmt: skip
    print(costs.round(1).to_string())

    print("\n== track label consistency against the ground-truth masks")
    sequences = sorted(table.index.get_level_values(1).unique())
    consistency = pd.DataFrame(
        {s: label_consistency(args.results, dataset, s, args.query_every) for s in sequences}
    ).T
    consistency.loc["mean"] = consistency.mean()
    print(consistency.round(3).to_string())


if __name__ == "__main__":
    main()
