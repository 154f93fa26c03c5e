"""The local SLURM cluster itself: sbatch reaches both partitions and accepts a GPU request."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.slurm

FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL"}


def _wait_done(cluster, job_ids, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = cluster.jobs()
        if all(jobs.get(i, {}).get("JobState") in FINAL_STATES for i in job_ids):
            return jobs
        time.sleep(0.5)
    raise AssertionError(f"jobs {job_ids} did not finish: {cluster.jobs()}\n{cluster.logs()}")


def test_sbatch_reaches_cpu_and_gpu_partitions(slurm_cluster, tmp_path):
    run = slurm_cluster.run
    cpu = run(
        "sbatch", "--parsable", "-D", str(tmp_path), "-o", "cpu.out", "--wrap", "echo $SLURM_JOB_PARTITION"
    )
    gpu = run(
        "sbatch",
        "--parsable",
        "-p",
        "gpu",
        "--gpus=1",
        "--cpus-per-gpu=1",
        "-D",
        str(tmp_path),
        "-o",
        "gpu.out",
        "--wrap",
        "echo $SLURM_JOB_PARTITION $SLURM_JOB_GPUS",
    )
    ids = [cpu.stdout.strip(), gpu.stdout.strip()]
    jobs = _wait_done(slurm_cluster, ids)
    assert [jobs[i]["JobState"] for i in ids] == ["COMPLETED", "COMPLETED"], jobs
    assert (tmp_path / "cpu.out").read_text().strip() == "cpu"  # the default partition
    assert (tmp_path / "gpu.out").read_text().strip() == "gpu 0"  # the /dev/null GPU was allocated
    assert jobs[ids[1]]["TresPerJob"] == "gres:gpu:1", jobs[ids[1]]
    assert jobs[ids[0]].get("TresPerJob") is None, jobs[ids[0]]
    assert set(ids) <= slurm_cluster.submitted_job_ids()
    assert {r["JobId"] for r in slurm_cluster.completed()} >= set(ids)
