"""The whole pipeline on a tiny synthetic dataset, as a user runs it: tables, logs, reruns, one-job targets."""

from __future__ import annotations

import math
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr

from tests.workflow.conftest import REPO, TEST_CONFIG, job_counts, snakemake

pytestmark = pytest.mark.e2e


def test_tables_have_a_finite_j_column_for_every_run(finished_run: Path) -> None:
    tables = finished_run / "results" / "tables"
    assert (tables / "summary.md").is_file()
    table1 = pd.read_csv(tables / "table1.csv")
    ours = table1[table1["source"].str.startswith("ours")].set_index("method")
    assert {"full", "baseline"} <= set(ours.index)
    assert ours["Synthetic J"].between(0, 100).all()
    per_sequence = pd.read_csv(tables / "per-sequence-synthetic.csv")
    assert {"sequence", "full J", "baseline J"} <= set(per_sequence.columns)
    assert per_sequence["full J"].notna().all()
    for suffix in (".md", ".csv", ".tex", ".html"):
        assert (tables / f"table1{suffix}").is_file()
        assert (tables / f"ablation-loss{suffix}").is_file()


def test_every_job_left_a_log(finished_run: Path) -> None:
    logs_dir = finished_run / "logs"
    parts = [p.relative_to(logs_dir).parts for p in logs_dir.rglob("*.log")]
    stages = {"raw", "frames", "flow", "tracks", "train", "masks", "metrics"}
    assert stages <= {p[1] for p in parts if len(p) > 2 and p[0] == "synthetic"}
    assert (finished_run / "logs" / "tables.log").is_file()


def test_second_run_has_nothing_to_do(finished_run: Path) -> None:
    proc = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG))
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_editing_an_inactive_backend_reruns_nothing(finished_run: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "inactive.yaml"
    overlay.write_text(
        "flow: {raft: {iterations: 7}}\ntracks: {cotracker: {iterations: 3}}\n"
        "train: {defaults: {model: {backbone: {weights: other.pth, patch_stride: 8}}}}\n"  # DINO keys, small net
    )
    proc = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay))
    assert "Nothing to be done" in proc.stdout + proc.stderr
    overlay.write_text("flow: {dis: {preset: fast}}\n")  # the active backend's keys do rerun its jobs
    counts = job_counts(snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    assert counts["compute_flow"] == 2 and counts["train_model"] == 1


def test_one_chunk_target_is_exactly_one_job_with_its_command(finished_run: Path) -> None:
    target = "results/synthetic/tracks/synth-000/chunk-000.zarr"
    proc = snakemake(finished_run, target, "-n", "-p", "-f", "--configfile", str(TEST_CONFIG))
    assert job_counts(proc.stdout) == {"track_chunk": 1}
    assert "python -m lrtl.tracks chunk" in proc.stdout
    assert "--chunk 000" in proc.stdout


RUN_SETTINGS = {  # each edit changes how jobs run, never what they write: nothing to do
    "train: {defaults: {data: {workers: 0}}}": None,
    "train: {defaults: {data: {cache_queries: 7, preload_flow: false}}}": None,
    "train: {defaults: {device: cpu, checkpoint_every: 1}}": None,
    "train: {runs: {full: {device: cpu}}}": None,
    "infer: {batch_size: 3, device: cpu}": None,
    "flow: {raft: {batch_size: 1, device: cpu}}": None,
    "tracks: {cotracker: {device: cpu}}": None,
}


@pytest.mark.parametrize("edit", list(RUN_SETTINGS))
def test_editing_a_run_setting_plans_no_job(finished_run: Path, tmp_path: Path, edit: str) -> None:
    overlay = tmp_path / "settings.yaml"
    overlay.write_text(edit + "\n")
    proc = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay))
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout


def test_editing_a_picture_setting_redraws_only_the_pictures(finished_run: Path, tmp_path: Path) -> None:
    overlay = tmp_path / "pictures.yaml"
    overlay.write_text("infer: {pictures: {gif_fps: 3.0, alpha: 0.7}}\n")
    counts = job_counts(snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    masks = list((finished_run / "results" / "synthetic" / "masks").glob("*/*.zarr"))
    assert counts == {"draw_pictures": len(masks), "all": 1}


def test_editing_a_result_param_reruns_exactly_its_dependents(finished_run: Path, tmp_path: Path) -> None:
    results = finished_run / "results" / "synthetic"
    baselines = ("baseline", "baseline_tracks")  # masks that do not depend on inference
    learned = len([m for m in (results / "masks").glob("*/*.zarr") if m.parent.name not in baselines])
    overlay = tmp_path / "result.yaml"
    overlay.write_text("infer: {dino_patch_stride: 8}\n")  # a param of every infer_masks job (not a setting)
    counts = job_counts(snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    assert counts == {"infer_masks": learned, "draw_pictures": learned, "evaluate_sequence": learned,
                      "make_tables": 1, "all": 1}
    overlay.write_text("datasets: {synthetic: {train: {iterations: 5}}}\n")  # the synthetic dataset's own steps
    counts = job_counts(snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    assert counts["train_model"] == 1 and counts["infer_masks"] == learned
    assert not {"compute_flow", "track_chunk", "baseline_masks"} & set(counts)
    # nested --config values are typed by the schema
    typed = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), "--config",
                      "datasets={synthetic: {train: {iterations: 5}}}")
    assert job_counts(typed.stdout) == counts


def _readme_rerun_commands() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = readme.split("## Rerunning one piece", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_rerun_examples_plan_the_jobs_they_promise(finished_run: Path) -> None:
    """Every command of the README's "Rerunning one piece" block, as a dry run on a finished run (synth-002 of
    the default config is synth-001 in the test config); the counts are what each comment promises."""
    frames = finished_run / "results" / "synthetic" / "frames" / "synth-000.zarr"
    chunk_size = yaml.safe_load(TEST_CONFIG.read_text())["tracks"]["chunk_size"]
    n_chunks = math.ceil(zarr.open_group(str(frames), mode="r").attrs["n_frames"] / chunk_size)
    expected = [
        {},  # -n -p one chunk: built already
        {},  # one flow store: built already
        {"track_chunk": 1},  # -f: exactly this job
        {"track_chunk": n_chunks, "index_tracks": 1},  # -R track_chunk: every chunk of the sequence
        {},  # all_tracks of a subset: built already
        {},  # --until track_chunk: built already
    ]
    commands = _readme_rerun_commands()
    assert len(commands) == len(expected), commands
    for command, counts in zip(commands, expected, strict=True):
        args = [arg.replace("synth-002", "synth-001") for arg in shlex.split(command)[1:]]
        args = [arg for arg in args if arg not in ("-c2", "-n", "-p")]
        proc = snakemake(finished_run, *args, "-n", "--configfile", str(TEST_CONFIG))
        planned = {rule: n for rule, n in job_counts(proc.stdout).items() if not rule.startswith("all")}
        assert planned == counts, (command, proc.stdout)


def _copy_run(finished_run: Path, dest: Path) -> Path:
    """A copy of the finished run (results, logs, Snakemake's records; time stamps kept) at dest."""
    for name in ("results", "logs", "benchmarks", ".snakemake"):
        shutil.copytree(finished_run / name, dest / name, symlinks=True)
    return dest


@pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp:UserWarning")  # Snakemake's marker in the store
def test_a_deleted_track_chunk_is_rebuilt_alone_with_its_dependents(finished_run: Path, tmp_path: Path) -> None:
    """Issue 22: every store a job reads is one of its inputs, so `snakemake` plans the deleted chunk, exactly what
    reads it, and the rebuilt chunk equals the one deleted."""
    run = _copy_run(finished_run, tmp_path / "run")
    chunk = "results/synthetic/tracks/synth-000/chunk-001.zarr"
    before = zarr.open_group(str(run / chunk), mode="r")
    saved = {name: before[name][...] for name in before.array_keys()}
    shutil.rmtree(run / chunk)
    proc = snakemake(run, "-n", "--configfile", str(TEST_CONFIG))
    learned = len(list((run / "results" / "synthetic" / "masks" / "full").glob("*.zarr")))
    assert job_counts(proc.stdout) == {
        "track_chunk": 1, "index_tracks": 1, "train_model": 1, "track_baseline_masks": 1, "infer_masks": learned,
        "draw_pictures": learned + 1, "evaluate_sequence": learned + 1, "make_tables": 1, "all": 1}, proc.stdout
    outputs = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    assert chunk in outputs and not [o for o in outputs if "/tracks/" in o and o not in (
        chunk, "results/synthetic/tracks/synth-000/index.json")]
    snakemake(run, chunk, "--cores", "1", "--configfile", str(TEST_CONFIG))  # the chunk alone, as before
    after = zarr.open_group(str(run / chunk), mode="r")
    assert sorted(after.array_keys()) == sorted(saved)
    for name, values in saved.items():
        assert (after[name][...] == values).all(), name


def test_a_moved_checkout_reruns_nothing(finished_run: Path, tmp_path: Path) -> None:
    """Issue 22: a checkout holding its results, copied elsewhere, plans no job: no input path names where the
    workflow lives (make_tables' published.tsv was absolute)."""
    checkout = tmp_path / "a" / "lrtl"
    checkout.mkdir(parents=True)
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(REPO / name, checkout / name)
    for name in ("workflow", "profiles"):
        shutil.copytree(REPO / name, checkout / name)
    _copy_run(finished_run, checkout)
    snakemake(checkout, "--cores", "1", "--configfile", str(TEST_CONFIG), snakefile=checkout / "Snakefile")
    moved = tmp_path / "b" / "elsewhere" / "lrtl"
    shutil.copytree(checkout, moved, symlinks=True)
    proc = snakemake(moved, "-n", "--configfile", str(TEST_CONFIG), snakefile=moved / "Snakefile")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout


def _as_another_user(home: Path) -> tuple[list[str], int, int] | None:
    """(command prefix, uid, gid) that runs a command as a non-root user, or None where the machine allows none.

    Not root: the current user. Root (CI): `nobody` through setpriv, keeping only CAP_DAC_READ_SEARCH so that it can
    read the interpreter and the checkout under root's folders; writes are checked as for any user."""
    if os.geteuid() != 0:
        return [], os.getuid(), os.getgid()
    if not shutil.which("setpriv"):
        return None
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        return None
    prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search", "env", f"HOME={home}",
              f"PATH={Path(sys.executable).parent}:{os.environ.get('PATH', '')}"]
    probe = subprocess.run([*prefix, sys.executable, "-c", "import os; print(os.geteuid())"], capture_output=True,
                           text=True)
    if probe.returncode != 0 or probe.stdout.strip() != str(nobody.pw_uid):
        return None
    return prefix, nobody.pw_uid, nobody.pw_gid


def test_a_read_only_results_folder_stops_jobs_naming_the_path_and_keeps_every_store(finished_run: Path,
                                                                                     tmp_path: Path) -> None:
    """As a non-root user (root writes through a-w): an existing output is refused before anything runs, a new
    one fails in one line naming the folder and the fix, nothing built is lost, and the rerun after the fix works."""
    found = _as_another_user(tmp_path / "home")
    if found is None:
        pytest.skip("running as root with no way to drop privileges here (setpriv and a nobody user)")
    prefix, uid, gid = found
    run = _copy_run(finished_run, tmp_path / "run")
    folder = "results/synthetic/tracks/synth-000"
    shutil.rmtree(run / folder / "chunk-001.zarr")
    (tmp_path / "home").mkdir()
    for path in [tmp_path / "home", run, *run.rglob("*")]:
        os.lchown(path, uid, gid)
    kept = sorted(p.relative_to(run) for p in (run / "results").rglob("*"))
    for path in (run / "results").rglob("*"):
        if not path.is_symlink():
            path.chmod(path.stat().st_mode & ~0o222)

    def user_snakemake(*args: str) -> subprocess.CompletedProcess:
        cmd = [*prefix, sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(run), *args,
               "--configfile", str(TEST_CONFIG)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    forced = user_snakemake("--cores", "1", "-f", f"{folder}/chunk-000.zarr")
    assert forced.returncode != 0 and "Write-protected output files for rule track_chunk" in forced.stderr
    new = user_snakemake("--cores", "1", f"{folder}/chunk-001.zarr")
    assert new.returncode != 0
    log = (run / "logs" / "synthetic" / "tracks" / "synth-000" / "chunk-001.log").read_text()
    assert (f"{folder}/chunk-001.zarr.partial: Permission denied for this user (uid {uid}); make {folder} writable "
            f"(e.g. chmod -R u+w {folder}) or run as its owner") in log
    assert "Traceback" not in log
    assert sorted(p.relative_to(run) for p in (run / "results").rglob("*")) == kept  # nothing built is lost
    subprocess.run([*prefix, "chmod", "-R", "u+w", str(run / "results")], check=True)  # the fix, as that user
    rerun = user_snakemake("--cores", "1", f"{folder}/chunk-001.zarr")
    assert rerun.returncode == 0, rerun.stderr
    assert (run / folder / "chunk-001.zarr" / "zarr.json").is_file()


# Last: it deletes a flow store of the shared finished run.
def test_deleting_one_flow_reruns_only_that_sequence(finished_run: Path) -> None:
    flow = finished_run / "results" / "synthetic" / "flow" / "synth-001.zarr"
    aside = finished_run / "flow-synth-001.zarr.aside"
    flow.rename(aside)  # as if deleted; put back as it was (same inode, same times) for the tests sharing the run
    try:
        proc = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG))
    finally:
        aside.rename(flow)
    counts = job_counts(proc.stdout)
    chunk_size = yaml.safe_load(TEST_CONFIG.read_text())["tracks"]["chunk_size"]
    frames = finished_run / "results" / "synthetic" / "frames" / "synth-001.zarr"
    n_frames = zarr.open_group(str(frames), mode="r").attrs["n_frames"]
    assert counts["compute_flow"] == 1
    assert counts["track_chunk"] == math.ceil(n_frames / chunk_size)
    assert counts["index_tracks"] == 1
    assert counts["train_model"] == 1
    assert "prepare_frames" not in counts and "make_synthetic" not in counts
    outputs = [line for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    assert not [line for line in outputs if "/flow/synth-000" in line or "/tracks/synth-000/" in line]
