"""How long Snakemake takes to plan the paper DAG (DAVIS2016, SegTrackv2, FBMS59 with empty frame files in the
layouts users download): CPU seconds of `snakemake -n paper --configfile config.paper.yaml`, per job and against
the dry run of the default synthetic DAG measured in the same run.

    python benchmarks/dag.py

CPU time (user + system of the snakemake process), not wall time: it is steadier on a shared machine.
"""

from __future__ import annotations

import resource
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.workflow.conftest import job_counts, snakemake  # noqa: E402
from tests.workflow.test_dag import _paper_layouts  # noqa: E402


def dry_run_cpu(workdir: Path, *args: str) -> tuple[float, int]:
    """(CPU seconds, planned jobs) of one dry run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = snakemake(workdir, "-n", *args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, sum(job_counts(proc.stdout).values())


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        base_s, base_jobs = dry_run_cpu(workdir)
        _paper_layouts(workdir)
        paper_s, paper_jobs = dry_run_cpu(workdir, "paper", "--configfile", str(REPO / "config.paper.yaml"))
    print(f"default DAG  {base_jobs:6d} jobs {base_s:7.1f} s CPU  {1000 * base_s / base_jobs:6.1f} ms/job")
    print(f"paper DAG    {paper_jobs:6d} jobs {paper_s:7.1f} s CPU  {1000 * paper_s / paper_jobs:6.1f} ms/job")
    print(f"ratio        {paper_s / base_s:6.1f}x CPU for {paper_jobs / base_jobs:.1f}x the jobs")


if __name__ == "__main__":
    main()
