"""The workflow as Snakemake sees it: config validation, lint, formatting, and job counts of dry runs."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.workflow.conftest import REPO, TEST_CONFIG, job_counts, snakemake


def test_typo_in_config_key_stops_the_run_naming_the_key(workdir: Path) -> None:
    overlay = workdir / "typo.yaml"
    overlay.write_text("tracks:\n  chunk_sise: 4\n")
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay), check=False)
    assert proc.returncode != 0
    assert "chunk_sise" in proc.stdout + proc.stderr


def test_wrong_type_in_config_is_rejected(workdir: Path) -> None:
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), "--config", "only_sequences=7",
                     check=False)
    assert proc.returncode != 0
    assert "only_sequences" in proc.stdout + proc.stderr


def test_lint_reports_nothing_but_conda() -> None:
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s", str(REPO / "Snakefile")],
                          capture_output=True, text=True, cwd=REPO)
    text = proc.stdout + proc.stderr
    findings = [line for line in text.splitlines() if line.strip().startswith("*") and "conda" not in line.lower()]
    assert not findings, text


@pytest.mark.skipif(shutil.which("snakefmt") is None, reason="snakefmt not installed")
def test_snakefmt_check() -> None:
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    proc = subprocess.run(["snakefmt", "--check", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dry_run_counts_one_job_per_sequence_and_chunk(workdir: Path) -> None:
    config = yaml.safe_load(TEST_CONFIG.read_text())
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG))
    counts = job_counts(proc.stdout)
    from lrtl.synthetic import sequence_plan

    base = yaml.safe_load((REPO / "config.yaml").read_text())
    synthetic = {**base["synthetic"], **config.get("synthetic", {})}
    plan = sequence_plan(synthetic)
    chunk_size = config["tracks"]["chunk_size"]
    n_runs = len(config.get("targets", base["targets"])["runs"])
    assert counts["make_synthetic"] == len(plan)
    assert counts["prepare_frames"] == len(plan)
    assert counts["compute_flow"] == len(plan)
    assert counts["track_chunk"] == sum(math.ceil(n / chunk_size) for _, n in plan)
    assert counts["index_tracks"] == len(plan)
    assert counts["train_model"] == n_runs
    assert counts["infer_masks"] == n_runs * len(plan)
    assert counts["baseline_masks"] == len(plan)
    assert counts["evaluate_sequence"] == (n_runs + 1) * len(plan)
    assert counts["make_tables"] == 1


def test_davis_sheet_dry_run_builds_the_paper_dag(workdir: Path) -> None:
    sheet = REPO / "workflow" / "resources" / "sequences" / "davis2016.tsv"
    rows = [line.split("\t") for line in sheet.read_text().splitlines()[1:]]
    assert len(rows) == 50 and sum(int(n) for _, _, n in rows) == 3455
    root = workdir / "DAVIS2016"
    for name, _, _ in rows:
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (root / "JPEGImages" / "480p" / name / "00000.jpg").touch()  # a dry run never reads it
        (root / "Annotations" / "480p" / name).mkdir(parents=True)
    overlay = workdir / "davis.yaml"
    overlay.write_text(
        f"targets: {{datasets: [davis2016], runs: [full]}}\ndatasets: {{davis2016: {{root: {str(root)!r}}}}}\n"
    )
    proc = snakemake(workdir, "-n", "--configfile", str(overlay))
    counts = job_counts(proc.stdout)
    chunk_size = yaml.safe_load((REPO / "config.yaml").read_text())["tracks"]["chunk_size"]
    val = [r for r in rows if r[1] == "val"]
    assert counts["prepare_frames"] == 50
    assert counts["track_chunk"] == sum(math.ceil(int(n) / chunk_size) for _, _, n in rows)
    assert counts["evaluate_sequence"] == 2 * len(val)
    assert "make_synthetic" not in counts
