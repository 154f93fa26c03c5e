"""The synthetic pipeline through a real SLURM cluster with the shipped profiles (`pytest -m slurm`).

One module-scoped run drives everything: `snakemake --profile profiles/slurm --profile profiles/slurm-noacct
--profile tests/slurm/profile --configfile tests/config.test.yaml tests/slurm/config.yaml` on the cluster of
conftest.py (Snakemake adds the workflow profile profiles/default, as for any user), while the same workflow
runs locally (`-c2`, at low CPU priority) next to it for comparison. A test-only fault switch fails the first
`python -m lrtl.baseline` once: a `python` shim first on PATH, which jobs inherit through `sbatch --export=ALL`,
so neither lrtl nor the workflow knows about it. (baseline_masks is off the run's critical path, so its retry
costs no time; tests/slurm/profile leaves it out of the `score` group so that its retry is its own job.)
The tests then read the controller's record of every job (`scontrol show job`, the job-completion log, the
controller log) and compare the two result trees.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "Snakefile"
TEST_CONFIGS = [REPO / "tests" / "config.test.yaml", Path(__file__).parent / "config.yaml"]
CONFIG_ARGS = ["--configfile", *map(str, TEST_CONFIGS)]
PROFILES = [
    REPO / "profiles" / "slurm",
    REPO / "profiles" / "slurm-noacct",
    Path(__file__).parent / "profile",
]
GPU_RULES = {"compute_flow", "track_chunk", "train_model", "infer_masks"}
FAULT_RULE, FAULT_MODULE = "baseline_masks", "lrtl.baseline"
RUN_TIMEOUT_S = 540


def _snakemake(
    workdir: Path,
    *args: str,
    env: dict[str, str],
    profiles: bool = True,
    timeout: int = RUN_TIMEOUT_S,
    background: bool = False,
):
    """Run Snakemake on the repo's Snakefile in `workdir` (cwd too, so relative log dirs land there).

    `background`: start it at the lowest CPU priority, so that it only takes what the cluster jobs leave,
    and return the process and its open log (`<workdir>.snakemake.txt`)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    if profiles:
        cmd += [arg for profile in PROFILES for arg in ("--profile", str(profile))]
    cmd += list(args)
    if background:
        log = open(workdir.parent / f"{workdir.name}.snakemake.txt", "w")  # noqa: SIM115 - closed by the caller
        proc = subprocess.Popen(
            ["nice", "-n", "19", *cmd], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        return proc, log
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)


def _require_plugin() -> None:
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install 'lrtl[slurm]')")


def _local_rules() -> set[str]:
    """Rules that run on the submit host: the workflow's `localrules:` plus `all` (no shell, never submitted)."""
    text = "\n".join(p.read_text() for p in [SNAKEFILE, *(REPO / "workflow" / "rules").glob("*.smk")])
    names = {"all"}
    for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", text, flags=re.M):
        names.update(re.findall(r"\w+", block))
    return names


def _jobs_in_dry_run(output: str) -> dict[str, int]:
    """{rule: jobs} of the submitted (non-local) rules, from the job blocks of a dry run."""
    local = _local_rules()
    counts: dict[str, int] = {}
    for line in output.splitlines():
        if (match := re.match(r"^\s*rule (\w+):$", line)) and match.group(1) not in local:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _submissions_in_dry_run(output: str) -> int:
    """sbatch submissions a dry run plans: one per group job plus one per ungrouped, non-local job."""
    local = _local_rules()
    groups = sum(1 for line in output.splitlines() if re.match(r"^\[.*\] Group job \w+", line))
    singles = sum(1 for m in re.finditer(r"^rule (\w+):$", output, flags=re.M) if m.group(1) not in local)
    return groups + singles


def _rules_of(comment: str, rules: set[str]) -> set[str]:
    """The rules a job ran, from the plugin's --comment (rule_<rule>_wildcards_<..>, rule_<group>_<rules>)."""
    body = comment.removeprefix("rule_").split("_wildcards_")[0]
    return {rule for rule in rules if re.search(rf"(^|_){re.escape(rule)}(_|$)", body)}


@dataclass
class ClusterRun:
    cluster: object
    workdir: Path
    localdir: Path
    proc: subprocess.CompletedProcess
    local_rc: int
    local_output: str
    submitted_rules: dict[str, int]  # rule -> jobs, from the dry run with the same profiles
    jobs: dict[str, dict[str, str]]  # SLURM job id -> scontrol record, jobs of this run only
    fault_dir: Path
    wall_s: float


@pytest.fixture(scope="module")
def cluster_run(slurm_cluster, tmp_path_factory, davis_dry_runs) -> ClusterRun:
    # davis_dry_runs: asked for only to start those dry runs first, so that they run alongside this one
    _require_plugin()
    if not TEST_CONFIGS[0].exists():
        pytest.skip(f"{TEST_CONFIGS[0]} is missing")
    base = tmp_path_factory.mktemp("slurm-run")
    workdir, localdir, drydir, fault_dir, shim_dir = (
        base / n for n in ("cluster", "local", "dry", "fault", "bin")
    )
    for d in (workdir, localdir, drydir, fault_dir, shim_dir):
        d.mkdir()
    # Test-only fault switch: the first `python -m lrtl.baseline` of the run fails, once (mkdir is atomic).
    shim = shim_dir / "python"
    shim.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "-m" ] && [ "$2" = "{FAULT_MODULE}" ] \\\n'
        f'  && mkdir "$LRTL_TEST_FAULT_DIR/{FAULT_RULE}" 2>/dev/null\n'
        f'then echo "tests/slurm: injected fault in {FAULT_MODULE}" >&2; exit 3; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    shim.chmod(0o755)
    env = dict(
        slurm_cluster.env,
        LRTL_TEST_FAULT_DIR=str(fault_dir),
        PATH=f"{shim_dir}{os.pathsep}{slurm_cluster.env['PATH']}",
    )
    local_env = {k: v for k, v in slurm_cluster.env.items() if not k.startswith("SLURM")}

    # The dry run (what the cluster run will submit) and the local reference run go alongside the cluster run.
    dry, dry_log = _snakemake(drydir, "-n", *CONFIG_ARGS, env=env, background=True)
    local, local_log = _snakemake(localdir, "-c2", *CONFIG_ARGS, env=local_env, profiles=False, background=True)
    start = time.monotonic()
    try:
        proc = _snakemake(workdir, *CONFIG_ARGS, env=env)
    except subprocess.TimeoutExpired as error:
        out = (error.stdout or b"").decode(errors="replace") + (error.stderr or b"").decode(errors="replace")
        pytest.fail(f"SLURM run timed out after {RUN_TIMEOUT_S} s:\n{out[-8000:]}\n{slurm_cluster.logs()}")
    finally:
        wall = time.monotonic() - start
        local_rc = local.wait(timeout=RUN_TIMEOUT_S)
        local_log.close()
        dry_rc = dry.wait(timeout=RUN_TIMEOUT_S)
        dry_log.close()
    dry_output = (base / "dry.snakemake.txt").read_text()
    assert dry_rc == 0, dry_output
    submitted_rules = _jobs_in_dry_run(dry_output)
    (base / "cluster.snakemake.txt").write_text(proc.stdout + proc.stderr)
    run_ids = set(re.findall(r"SLURM run ID: ([\w-]+)", proc.stdout + proc.stderr))
    jobs = {i: j for i, j in slurm_cluster.jobs().items() if j.get("JobName") in run_ids}
    return ClusterRun(
        cluster=slurm_cluster,
        workdir=workdir,
        localdir=localdir,
        proc=proc,
        local_rc=local_rc,
        local_output=(base / "local.snakemake.txt").read_text(),
        submitted_rules=submitted_rules,
        jobs=jobs,
        fault_dir=fault_dir,
        wall_s=wall,
    )


def _explain(run: ClusterRun) -> str:
    return f"{run.proc.stdout[-6000:]}\n{run.proc.stderr[-6000:]}\n{run.cluster.logs()}"


def test_pipeline_completes_through_sbatch(cluster_run: ClusterRun) -> None:
    run = cluster_run
    assert run.proc.returncode == 0, _explain(run)
    assert (run.workdir / "results" / "tables" / "summary.md").exists()
    # as for a user's `snakemake --profile profiles/slurm`, the workflow profile was applied on top
    assert re.search(r"workflow specific profile \S*profiles/default\b", run.proc.stderr), run.proc.stderr[:2000]
    assert run.jobs, "no SLURM job of this run is known to the controller\n" + _explain(run)
    sbatched = run.cluster.submitted_job_ids()
    completed = {r["JobId"] for r in run.cluster.completed()}
    for job_id, job in run.jobs.items():
        # array tasks carry their own id; the controller logs the array's id when it is submitted
        assert job_id in sbatched or job.get("ArrayJobId") in sbatched, (job_id, job)
        assert job_id in completed, f"job {job_id} missing from the job-completion log"
    ran = {}
    for job in run.jobs.values():
        for rule in _rules_of(job["Comment"], set(run.submitted_rules)):
            ran.setdefault(rule, []).append(job)
    missing = set(run.submitted_rules) - set(ran)
    assert not missing, (
        f"rules never seen by SLURM: {missing}; comments: {[j['Comment'] for j in run.jobs.values()]}"
    )
    print(
        f"\nSLURM run: {len(run.jobs)} SLURM jobs for {sum(run.submitted_rules.values())} Snakemake jobs "
        f"in {run.wall_s:.0f} s"
    )


def test_gpu_rules_land_in_gpu_partition_with_a_gpu(cluster_run: ClusterRun) -> None:
    run = cluster_run
    assert GPU_RULES <= set(run.submitted_rules), run.submitted_rules
    for job_id, job in run.jobs.items():
        rules = _rules_of(job["Comment"], set(run.submitted_rules))
        if rules & GPU_RULES:
            assert rules <= GPU_RULES, f"GPU and CPU rules share job {job_id}: {rules}"
            assert job["Partition"] == "gpu", (job_id, rules, job["Partition"])
            assert job.get("TresPerJob") == "gres:gpu:1", (job_id, rules, job.get("TresPerJob"))
        else:
            assert job["Partition"] == "cpu", (job_id, rules, job["Partition"])
            assert job.get("TresPerJob") is None, (job_id, rules, job.get("TresPerJob"))


def test_small_cpu_jobs_are_grouped(cluster_run: ClusterRun) -> None:
    run = cluster_run
    comments = [job["Comment"] for job in run.jobs.values()]
    assert any(c.startswith("rule_frames_") for c in comments), comments
    assert any(c.startswith("rule_score_") for c in comments), comments
    assert len(run.jobs) < sum(run.submitted_rules.values()), (len(run.jobs), run.submitted_rules)


def test_failed_job_is_retried_and_its_log_kept(cluster_run: ClusterRun) -> None:
    run = cluster_run
    assert (run.fault_dir / FAULT_RULE).is_dir(), "the fault switch never fired"
    states = {}
    for job in run.jobs.values():
        if FAULT_RULE in job["Comment"]:
            states.setdefault(job["Comment"], []).append(job["JobState"])
    retried = [c for c, s in states.items() if sorted(s) == ["COMPLETED", "FAILED"]]
    assert len(retried) == 1, states
    failed_id = next(
        i for i, j in run.jobs.items() if j["Comment"] == retried[0] and j["JobState"] == "FAILED"
    )
    slurm_logs = list((run.workdir / "logs" / "slurm").rglob(f"{failed_id}.log"))
    assert slurm_logs, f"SLURM log of failed job {failed_id} not kept under logs/slurm"
    assert run.proc.returncode == 0, _explain(run)


def _arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix):
        for name, array in group.arrays():
            out[prefix + name] = array[...]
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    with warnings.catch_warnings():  # Snakemake's .snakemake_timestamp inside directory outputs
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        walk(zarr.open_group(str(store), mode="r"), "")
    return out


def test_outputs_equal_a_local_run(cluster_run: ClusterRun) -> None:
    run = cluster_run
    assert run.local_rc == 0, run.local_output[-6000:]
    results = run.workdir / "results"
    stores = sorted(p.relative_to(results) for p in results.rglob("*.zarr") if "/raw/" not in f"/{p}/")
    assert stores
    for rel in stores:
        exact = rel.parts[1] in ("frames", "flow", "tracks")  # upstream of training: bitwise equal
        mine, theirs = _arrays(results / rel), _arrays(run.localdir / "results" / rel)
        assert mine.keys() == theirs.keys(), rel
        for name, value in mine.items():
            if exact:
                assert np.array_equal(value, theirs[name]), f"{rel}:{name} differs from the local run"
            else:
                assert np.allclose(value, theirs[name], atol=1e-5, equal_nan=True), f"{rel}:{name} differs"
    for table in sorted((results / "tables").glob("*.csv")) + sorted(results.rglob("metrics/**/*.tsv")):
        rel = table.relative_to(results)
        assert _numbers(table) == pytest.approx(_numbers(run.localdir / "results" / rel), abs=1e-6), rel


def _numbers(path: Path) -> list:
    """Every cell of a table, numbers as floats, so tables compare with a tolerance."""
    cells = []
    for line in path.read_text().splitlines():
        for cell in re.split(r"[,\t]", line):
            try:
                cells.append(float(cell))
            except ValueError:
                cells.append(cell)
    return cells


def test_rerun_one_flow_through_slurm(cluster_run: ClusterRun) -> None:
    run = cluster_run
    assert run.proc.returncode == 0, _explain(run)
    flows = sorted((run.workdir / "results" / "synthetic" / "flow").glob("*.zarr"))
    assert flows
    target = flows[0].relative_to(run.workdir)
    before = _arrays(flows[0])
    env = {k: v for k, v in run.cluster.env.items()}
    proc = _snakemake(run.workdir, str(target), "-f", *CONFIG_ARGS, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_ids = set(re.findall(r"SLURM run ID: ([\w-]+)", proc.stdout + proc.stderr))
    jobs = [j for j in run.cluster.jobs().values() if j.get("JobName") in run_ids]
    assert [(_rules_of(j["Comment"], GPU_RULES), j["Partition"], j["JobState"]) for j in jobs] == [
        ({"compute_flow"}, "gpu", "COMPLETED")
    ], jobs
    after = _arrays(flows[0])
    assert before.keys() == after.keys() and all(np.array_equal(before[k], after[k]) for k in before)


@pytest.fixture(scope="module")
def davis_dry_runs(tmp_path_factory):
    """`snakemake --profile profiles/slurm -n` on the DAVIS 2016 layout, grouped and `--groups none=none`.

    Both start at once, at the lowest CPU priority, when the fixture is set up (cluster_run asks for it first,
    so they run alongside the cluster run); the fixture gives a function that waits for their outputs."""
    _require_plugin()
    workdir = tmp_path_factory.mktemp("davis-dry-run")
    sheet = REPO / "workflow" / "resources" / "sequences" / "davis2016.tsv"
    rows = [line.split("\t") for line in sheet.read_text().splitlines()[1:] if line.strip()]
    root = workdir / "DAVIS2016"
    for name, _, _ in rows:  # a placeholder frame each: sequences are listed by their image files
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "JPEGImages" / "480p" / name / "00000.jpg").touch()
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
        (root / "Annotations" / "480p" / name / "00000.png").touch()  # its mask: DAVIS annotates every frame
    overlay = workdir / "davis.yaml"
    overlay.write_text(
        "targets: {datasets: [davis2016], runs: [full]}\n"
        f"datasets: {{davis2016: {{root: {str(root)!r}}}}}\n"
    )
    cmd = ["nice", "-n", "19", sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir)]
    cmd += ["-n", "--profile", str(REPO / "profiles" / "slurm"), "--configfile", str(overlay)]
    runs = {}
    for name, extra in (("grouped", []), ("ungrouped", ["--groups", "none=none"])):  # dry runs only read workdir
        with open(workdir / f"{name}.out", "w") as out, open(workdir / f"{name}.err", "w") as err:
            runs[name] = subprocess.Popen(cmd + extra, cwd=workdir, env=dict(os.environ), stdout=out, stderr=err)

    def outputs() -> dict[str, tuple[str, str]]:
        """{'grouped': (stdout, stderr), 'ungrouped': (stdout, stderr)} of the two runs, once they have ended."""
        for name, proc in runs.items():
            rc = proc.wait(timeout=300)
            assert rc == 0, f"{name} dry run failed ({rc}):\n" + "\n".join(
                (workdir / f"{name}.{ext}").read_text()[-4000:] for ext in ("out", "err")
            )
        return {name: tuple((workdir / f"{name}.{ext}").read_text() for ext in ("out", "err")) for name in runs}

    yield outputs
    for proc in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_davis_dry_run_groups_small_jobs(davis_dry_runs) -> None:
    """`snakemake --profile profiles/slurm -n` on the DAVIS 2016 layout: GPU rules get GPUs, CPU jobs group"""
    out = davis_dry_runs()
    (grouped, grouped_err), (ungrouped, _) = out["grouped"], out["ungrouped"]
    assert not re.search(r"Provided resources:.*\bgpu=", grouped + grouped_err), (
        "a global gpu cap (`resources: gpu=1` in profiles/default) runs one GPU job at a time on the cluster"
    )
    jobs, local = _jobs_in_dry_run(grouped), _local_rules()
    before, after = _submissions_in_dry_run(ungrouped), _submissions_in_dry_run(grouped)
    assert before == sum(jobs.values())
    grouped_rules = set(yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())["groups"])
    small = sum(n for rule, n in jobs.items() if rule in grouped_rules)
    group_jobs = len(re.findall(r"^\[.*\] Group job \w+", grouped, flags=re.M))
    assert after == before - small + group_jobs, (before, after, small, group_jobs)
    assert group_jobs * 5 <= small, (small, group_jobs)
    assert {"index_tracks", "make_tables"} <= local
    gpu_blocks = re.findall(r"^\s*rule (\w+):\n(?:.*\n)*?\s*resources: (.*)$", grouped, flags=re.M)
    for rule, resources in gpu_blocks:
        is_gpu = "slurm_partition=gpu" in resources
        assert is_gpu == (rule in GPU_RULES), (rule, resources)
        if is_gpu:
            assert re.search(r"\bgpu=1\b", resources) and "cpus_per_gpu=" in resources, (rule, resources)
    print(
        f"\nDAVIS 2016 on SLURM: {before} jobs to submit ungrouped ({jobs}, local {sorted(local)}); "
        f"grouped: {after} ({small} small CPU jobs in {group_jobs} group jobs)"
    )
