"""What a finished pipeline run cost, from what Snakemake left in its working directory (shared by the benchmarks).

    stage_costs(benchmarks, dataset)   the benchmark TSVs of the rules that have a `benchmark:` (benchmarks/<dataset>/
                                       <stage>/...): jobs, wall s summed, CPU s summed and peak RSS MB per stage
    log_jobs(log)                      every job of a Snakemake run log (.snakemake/log/*.snakemake.log): rule, jobid,
                                       start and end (the log's 1-second time stamps), for the rules without one
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pandas as pd


def stage_costs(benchmarks: Path, dataset: str) -> pd.DataFrame:
    """Wall time and CPU time (s, summed over jobs) and peak RSS (MB, max over jobs) per stage folder of the
    benchmark TSVs: flow, tracks, train/<run>, masks/<run>."""
    rows = []
    for path in sorted((benchmarks / dataset).rglob("*.tsv")):
        parts = path.relative_to(benchmarks / dataset).parts
        stage = "/".join(parts[:2]) if parts[0] in ("masks", "train") else parts[0]
        if parts[0] == "train":
            stage = f"train/{path.stem}"
        table = pd.read_csv(path, sep="\t")
        rows.append({"stage": stage, "s": float(table["s"].iloc[-1]), "cpu_s": float(table["cpu_time"].iloc[-1]),
                     "max_rss": float(table["max_rss"].iloc[-1])})  # fmt: skip
    if not rows:
        return pd.DataFrame(columns=["jobs", "wall_s", "cpu_s", "peak_rss_mb"])
    frame = pd.DataFrame(rows)
    return frame.groupby("stage").agg(
        jobs=("s", "size"), wall_s=("s", "sum"), cpu_s=("cpu_s", "sum"), peak_rss_mb=("max_rss", "max")
    )


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")  # [Fri Dec  4 17:13:33 2026]
STARTED = re.compile(r"^(?:local)?rule (\w+):$")
JOBID = re.compile(r"^\s+jobid: (\d+)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)$")


def log_jobs(log: Path) -> pd.DataFrame:
    """One row per finished job of a Snakemake log (the target rule `all` included, as Snakemake counts jobs):
    rule, jobid, start, end (datetimes), s (end - start)."""
    stamp, started, pending, rows = None, {}, None, []
    for line in log.read_text().splitlines():
        if match := STAMP.match(line):
            stamp = datetime.datetime.strptime(" ".join(match.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif match := STARTED.match(line):
            pending = (match.group(1), stamp)
        elif (match := JOBID.match(line)) and pending:
            started[int(match.group(1))] = pending
            pending = None
        elif match := FINISHED.match(line):
            jobid, rule = int(match.group(1)), match.group(2)
            if jobid in started:
                start = started.pop(jobid)[1]
                rows.append({"rule": rule, "jobid": jobid, "start": start, "end": stamp,
                             "s": (stamp - start).total_seconds()})  # fmt: skip
    return pd.DataFrame(rows, columns=["rule", "jobid", "start", "end", "s"])
