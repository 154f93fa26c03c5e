"""The whole pipeline on a tiny synthetic dataset, as a user runs it: tables, logs, reruns, one-job targets."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pandas as pd
import pytest
import yaml
import zarr

from tests.workflow.conftest import TEST_CONFIG, job_counts, snakemake

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
    overlay.write_text("train: {defaults: {iterations: 5}}\n")
    counts = job_counts(snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    assert counts["train_model"] == 1 and counts["infer_masks"] == learned
    assert not {"compute_flow", "track_chunk", "baseline_masks"} & set(counts)
    typed = snakemake(finished_run, "-n", "--configfile", str(TEST_CONFIG), "--config",
                      "train={defaults: {iterations: 5}}")  # nested --config values are typed by the schema
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
