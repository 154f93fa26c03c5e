"""The README's first command, timed by stage: job-seconds per rule and wall time, beside the time the README states.

    python benchmarks/firstrun.py --run --workdir /tmp/first      # run `snakemake --cores 2` there, timed
    python benchmarks/firstrun.py --workdir DIR [--wall-s 793]    # read a run that has finished in DIR

--run runs the workflow into --workdir (an empty folder for a first run; the README's command, with
`-s <repo>/Snakefile -d <workdir>`; arguments after `--` go to snakemake, e.g. `-- --configfile x.yaml`) and
times it. Otherwise the run already in --workdir is read: its wall time is --wall-s if given, else the span of
its Snakemake log (the newest one with finished jobs, or --log), which leaves out parsing and DAG building.

Prints, from what Snakemake left in the working directory (nothing is recomputed):
  * wall time, job count and the README's "about N minutes" and "N jobs", with measured / stated ratios;
  * job-seconds per rule from the run log (every rule; 1-second time stamps), each rule's share, and
    job-seconds / wall (how many jobs ran at once on average);
  * wall s, CPU s and peak RSS per stage from the benchmark TSVs of the rules that have a `benchmark:`.
No assertion on time: it reports.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from runcosts import log_jobs, stage_costs

REPO = Path(__file__).resolve().parents[1]
README_MINUTES = re.compile(r"about (\d+(?:\.\d+)?) minutes")
README_JOBS = re.compile(r"\((\d+) jobs\b")


def readme_claims(readme: Path) -> tuple[float | None, int | None]:
    """The first command's stated time (s, from "about N minutes") and job count ("(N jobs") in the README's
    first paragraphs (before the first section heading)."""
    head = readme.read_text().split("\n## ", 1)[0]
    minutes = README_MINUTES.search(head)
    jobs = README_JOBS.search(head)
    return (60 * float(minutes.group(1)) if minutes else None, int(jobs.group(1)) if jobs else None)


def run_first_command(workdir: Path, extra: list[str]) -> tuple[float, Path]:
    """Run the workflow into workdir as the README's first command does; (wall s, its Snakemake log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / "results").exists():
        print(f"note: {workdir}/results exists: this is not a first run (only missing jobs run)")
    logs = set((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--cores", "2",
           *extra]  # fmt: skip
    print("running:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed ({proc.returncode}) after {wall:.0f} s:\n{proc.stderr[-4000:]}")
    new = sorted(set((workdir / ".snakemake" / "log").glob("*.snakemake.log")) - logs)
    if not new:
        raise SystemExit("snakemake wrote no log")
    return wall, new[-1]


def newest_log_with_jobs(workdir: Path) -> Path:
    for log in sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), reverse=True):
        if "Finished jobid" in log.read_text():
            return log
    raise SystemExit(f"no Snakemake log with finished jobs under {workdir}/.snakemake/log; run the pipeline first")


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{round(seconds % 60):02d}"


def ratio(measured: float, stated: float | None) -> str:
    return f"{measured / stated:.2f}" if stated else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("."), help="the run's working directory")
    parser.add_argument("--run", action="store_true", help="run `snakemake --cores 2` into --workdir first, timed")
    parser.add_argument("--wall-s", type=float, help="wall time of a run made elsewhere (s)")
    parser.add_argument("--log", type=Path, help="the run's Snakemake log (default: the newest with finished jobs)")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="where the stated time is read")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if extra and not args.run:
        parser.error(f"unknown arguments {extra} (snakemake arguments go after -- with --run)")
    pd.set_option("display.width", 200)

    if args.run:
        wall, log = run_first_command(args.workdir, extra)
        how = "measured around snakemake"
    else:
        log = args.log or newest_log_with_jobs(args.workdir)
        wall = args.wall_s
        how = "given"
    jobs = log_jobs(log)
    if wall is None:
        wall = (jobs["end"].max() - jobs["start"].min()).total_seconds() if len(jobs) else 0.0
        how = "first job start to last job end in the log"
    stated_s, stated_jobs = readme_claims(args.readme)

    print(f"== first command in {args.workdir.resolve()} (log {log.name})")
    print(f"wall     {minutes(wall)} ({wall:.0f} s, {how})"
          f"   README: {'about ' + minutes(stated_s) if stated_s else 'no time stated'}"
          f"   measured / stated {ratio(wall, stated_s)}")  # fmt: skip
    print(f"jobs     {len(jobs)}   README: {stated_jobs or 'no count stated'}   measured / stated "
          f"{ratio(len(jobs), stated_jobs)}")  # fmt: skip
    total = jobs["s"].sum()
    print(f"job-s    {total:.0f} (sum over jobs of end - start), {total / wall:.2f} jobs at once on average"
          if wall else f"job-s    {total:.0f}")  # fmt: skip

    print("\n== job-seconds per rule (run log; 1-second time stamps)")
    per_rule = jobs.groupby("rule")["s"].agg(jobs="size", job_s="sum", mean_s="mean", max_s="max")
    per_rule["share"] = per_rule["job_s"] / total if total else 0.0
    per_rule["of_wall"] = per_rule["job_s"] / wall if wall else 0.0
    per_rule = per_rule.sort_values("job_s", ascending=False)
    print(per_rule.round({"job_s": 0, "mean_s": 1, "max_s": 0, "share": 3, "of_wall": 3}).to_string())

    benchmarks = args.workdir / "benchmarks"
    for dataset in sorted(p.name for p in benchmarks.iterdir() if p.is_dir()) if benchmarks.is_dir() else []:
        costs = stage_costs(benchmarks, dataset)
        if not len(costs):
            continue
        costs["cpu_per_wall"] = costs["cpu_s"] / costs["wall_s"]
        print(f"\n== benchmark TSVs of benchmarks/{dataset}/: wall s, CPU s (summed over jobs), peak RSS per stage")
        print(costs.round({"wall_s": 1, "cpu_s": 1, "peak_rss_mb": 0, "cpu_per_wall": 2}).to_string())


if __name__ == "__main__":
    main()
