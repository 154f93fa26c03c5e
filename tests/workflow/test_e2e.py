"""The whole pipeline on a tiny synthetic dataset, as a user runs it: tables, logs, reruns, one-job targets."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr

from tests.workflow.conftest import TEST_CONFIG, job_counts, snakemake

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    snakemake(workdir, "--cores", "2", "--configfile", str(TEST_CONFIG))
    return workdir


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
    for suffix in (".md", ".csv", ".tex"):
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


def test_deleting_one_flow_reruns_only_that_sequence(finished_run: Path) -> None:
    shutil.rmtree(finished_run / "results" / "synthetic" / "flow" / "synth-001.zarr")
    proc = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG))
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
