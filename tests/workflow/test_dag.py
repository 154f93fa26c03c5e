"""The workflow as Snakemake sees it: config validation, lint, formatting, and job counts of dry runs."""

from __future__ import annotations

import json
import math
import re
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
    assert counts["track_baseline_masks"] == len(plan)
    assert counts["evaluate_sequence"] == (n_runs + 2) * len(plan)  # the runs, the flow and the track baselines
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
    assert counts["evaluate_sequence"] == 3 * len(val)  # full, baseline, baseline_tracks
    assert "make_synthetic" not in counts


def _sheet_rows(name: str) -> list[list[str]]:
    sheet = REPO / "workflow" / "resources" / "sequences" / f"{name}.tsv"
    return [line.split("\t") for line in sheet.read_text().splitlines()[1:]]


def test_paper_target_dry_run_covers_the_three_table1_datasets(workdir: Path) -> None:
    """Empty frame files in the layouts users download; sheet counts left empty are counted from them."""
    import resource

    data = workdir / "data"
    for name, _, _ in _sheet_rows("davis2016"):
        (data / "DAVIS2016" / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (data / "DAVIS2016" / "JPEGImages" / "480p" / name / "00000.jpg").touch()
        (data / "DAVIS2016" / "Annotations" / "480p" / name).mkdir(parents=True)
    stv2 = _sheet_rows("segtrackv2")
    for i, (name, _, _) in enumerate(stv2):
        (data / "SegTrackv2" / "JPEGImages" / name).mkdir(parents=True)
        for k in range(10 + i):
            (data / "SegTrackv2" / "JPEGImages" / name / f"{k:05d}.png").touch()
        (data / "SegTrackv2" / "GroundTruth" / name).mkdir(parents=True)
    fbms = _sheet_rows("fbms59")
    for i, (name, split, _) in enumerate(fbms):
        folder = data / "FBMS59" / ("Testset" if split == "test" else "Trainingset") / name
        (folder / "GroundTruth").mkdir(parents=True)
        for k in range(1, 21 + i):
            (folder / f"{name}_{k:04d}.jpg").touch()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = snakemake(workdir, "-n", "paper", "--configfile", str(REPO / "config.paper.yaml"))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)  # not wall: tests share cores
    counts = job_counts(proc.stdout)
    paper = yaml.safe_load((REPO / "config.paper.yaml").read_text())
    n_runs = len(paper["targets"]["runs"])
    n_eval = 20 + len(stv2) + sum(split == "test" for _, split, _ in fbms)
    assert n_eval == 20 + 14 + 30
    assert counts["prepare_frames"] == 50 + 14 + 59
    assert counts["train_model"] == 3 * n_runs
    assert counts["evaluate_sequence"] == (n_runs + 2) * n_eval
    chunk_size = paper.get("tracks", {}).get("chunk_size") or yaml.safe_load(
        (REPO / "config.yaml").read_text())["tracks"]["chunk_size"]
    fbms_chunks = sum(math.ceil((20 + i) / chunk_size) for i in range(len(fbms)))
    stv2_chunks = sum(math.ceil((10 + i) / chunk_size) for i in range(len(stv2)))
    davis_chunks = sum(math.ceil(int(n) / chunk_size) for _, _, n in _sheet_rows("davis2016"))
    assert counts["track_chunk"] == davis_chunks + stv2_chunks + fbms_chunks
    assert counts["make_tables"] == 1
    assert cpu_s < 20, f"paper dry run took {cpu_s:.1f} s of CPU"

    # FBMS59 flows and trains on its own gaps (datasets.fbms59.gaps: 3, 6), the others on the global 1, 2.
    targets = [f"results/{d}/train/full/model.pt" for d in ("davis2016", "fbms59")]
    proc = snakemake(workdir, "-n", "-p", *targets, "--configfile", str(REPO / "config.paper.yaml"))
    commands = re.findall(r"python -m lrtl\.(flow|train) (.*?)>logs/(\w+)/", proc.stdout, flags=re.S)
    seen = set()
    for stage, args, dataset in commands:
        params = json.loads(re.search(r"--params '(\{.*?\})'", args).group(1))
        gaps = params["gaps"] if stage == "flow" else params["data"]["gaps"]
        assert gaps == ([3, 6] if dataset == "fbms59" else [1, 2]), (stage, dataset, gaps)
        seen.add((stage, dataset))
    assert seen == {(s, d) for s in ("flow", "train") for d in ("davis2016", "fbms59")}


def test_empty_sheet_counts_without_the_data_name_the_sheet_and_the_fix(workdir: Path) -> None:
    overlay = workdir / "stv2.yaml"
    overlay.write_text("targets: {datasets: [segtrackv2], runs: [full]}\n")
    proc = snakemake(workdir, "-n", "--configfile", str(overlay), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "segtrackv2.tsv: no frame count for 14 sequences" in text
    assert "python -m lrtl.datasets index --layout segtrackv2 --root data/SegTrackv2" in text


def _tables_outputs(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rule make_tables"))
    output = next(line for line in lines[start:] if line.strip().startswith("output:"))
    return [p.strip() for p in output.split(":", 1)[1].split(",")]


def test_named_target_sets_and_sequence_subsets_write_their_own_table_folders(workdir: Path) -> None:
    """The default run keeps results/tables/; named target sets and only_sequences runs write beside it."""
    default = _tables_outputs(snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG)).stdout)
    assert "results/tables/table1.md" in default
    assert {f"results/tables/ablation-loss.{ext}" for ext in ("md", "csv", "tex")} <= set(default)
    overlay = workdir / "other.yaml"
    base = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]["synthetic"]
    other = {**base, "root": "results/other/raw", "evaluate": {**base["evaluate"], "label": "Other"}}
    overlay.write_text(yaml.safe_dump({"targets": {"name": "other", "datasets": ["other"]},
                                       "datasets": {"other": other}}))
    others = _tables_outputs(snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay)).stdout)
    assert "results/tables/other/table1.md" in others
    only = _tables_outputs(snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), "--config",
                                     "only_sequences=[synth-000]").stdout)
    assert "results/tables/only-synth-000/table1.md" in only
    assert not set(default) & set(others) and not set(default) & set(only)


@pytest.mark.parametrize("overlay", ["config.paper.yaml", "workflow/overlays/davis2016-sample.yaml",
                                     "workflow/overlays/davis2016-dev.yaml", "workflow/overlays/fbms59-sample.yaml",
                                     "workflow/overlays/my-videos.yaml"])
def test_shipped_overlays_name_their_tables_folder(overlay: str) -> None:
    assert yaml.safe_load((REPO / overlay).read_text())["targets"]["name"]


def test_my_videos_template_builds_masks_without_evaluation(workdir: Path) -> None:
    """The README's "segment your own videos" command on a folder holding one image folder (no ground truth)."""
    import numpy as np
    from PIL import Image

    clip = workdir / "videos" / "clip"
    clip.mkdir(parents=True)
    for t in range(12):
        Image.fromarray(np.full((24, 32, 3), 10 * t, np.uint8)).save(clip / f"{t:05d}.jpg")
    proc = snakemake(workdir, "-n", "all_masks", "--configfile", str(REPO / "workflow/overlays/my-videos.yaml"))
    counts = job_counts(proc.stdout)
    assert counts["infer_masks"] == counts["baseline_masks"] == counts["track_baseline_masks"] == 1
    assert "evaluate_sequence" not in counts and "make_tables" not in counts
