"""The workflow as Snakemake sees it: config validation, lint, formatting, and job counts of dry runs."""

from __future__ import annotations

import json
import math
import re
import shlex
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


def generated_frame_counts(synthetic: dict, root: Path) -> list[int]:
    """Frames per sequence as the synthetic generator writes them (JPEGs on disk), one sequence per index."""
    from lrtl.synthetic import SyntheticParams, run_synthetic

    params = SyntheticParams.from_mapping(synthetic)
    counts = []
    for index in range(params.n_sequences):
        name = f"seq-{index}"
        images = root / "images" / name
        run_synthetic(sequence_index=index, name=name, images=images, annotations=root / "annotations" / name,
                      ground_truth=root / "ground_truth" / f"{name}.zarr", params=params)
        counts.append(len(list(images.glob("*.jpg"))))
    return counts


def test_dry_run_counts_one_job_per_sequence_and_chunk(workdir: Path, tmp_path_factory) -> None:
    config = yaml.safe_load(TEST_CONFIG.read_text())
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG))
    counts = job_counts(proc.stdout)
    # expected counts from the generator's files, not from sequence_plan, the function the DAG is built from
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    synthetic = {**base["synthetic"], **config.get("synthetic", {})}
    frames = generated_frame_counts(synthetic, tmp_path_factory.mktemp("generated"))
    chunk_size = config["tracks"]["chunk_size"]
    n_runs = len(config.get("targets", base["targets"])["runs"])
    assert counts["make_synthetic"] == len(frames)
    assert counts["prepare_frames"] == len(frames)
    assert counts["compute_flow"] == len(frames)
    assert counts["track_chunk"] == sum(math.ceil(n / chunk_size) for n in frames)
    assert counts["index_tracks"] == len(frames)
    assert counts["train_model"] == n_runs
    assert counts["infer_masks"] == n_runs * len(frames)
    assert counts["baseline_masks"] == len(frames)
    assert counts["track_baseline_masks"] == len(frames)
    assert counts["evaluate_sequence"] == (n_runs + 2) * len(frames)  # the runs, the flow and the track baselines
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
        (root / "Annotations" / "480p" / name / "00000.png").touch()  # its mask: DAVIS annotates every frame
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


def train_command_params(output: str) -> dict:
    """The --params of the one `python -m lrtl.train` command a dry run with -p prints."""
    (params,) = re.findall(r"python -m lrtl\.train .*?--params '(\{.*?\})'", output, flags=re.S)
    return json.loads(params)


def test_a_dataset_with_more_training_sequences_than_the_iterations_were_set_for_trains_longer(
    workdir: Path,
) -> None:
    """The tiny config's 6 steps were set for up to 4 sequences by default: its 2 sequences keep them; said to be
    for 1 sequence, the job trains 12 steps (the same items per sequence), and it reruns with them."""
    target = "results/synthetic/train/full/model.pt"
    config = yaml.safe_load(TEST_CONFIG.read_text())
    n_sequences = config["synthetic"]["n_sequences"]
    iterations = config["datasets"]["synthetic"]["train"]["iterations"]
    proc = snakemake(workdir, "-n", "-p", target, "--configfile", str(TEST_CONFIG))
    assert train_command_params(proc.stdout)["iterations"] == iterations
    overlay = workdir / "per_sequence.yaml"
    overlay.write_text("train: {iterations_for_sequences: 1}\n")
    proc = snakemake(workdir, "-n", "-p", target, "--configfile", str(TEST_CONFIG), str(overlay))
    assert train_command_params(proc.stdout)["iterations"] == iterations * n_sequences
    assert "iterations_for_sequences" not in proc.stdout  # resolved at planning time; the job gets its steps


def _sheet_rows(name: str) -> list[list[str]]:
    sheet = REPO / "workflow" / "resources" / "sequences" / f"{name}.tsv"
    return [line.split("\t") for line in sheet.read_text().splitlines()[1:]]


def _paper_layouts(workdir: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Empty frame files of DAVIS2016, SegTrackv2 and FBMS59 in the layouts users download, under workdir/data
    (SegTrackv2 sequence i has 10 + i frames, FBMS59 sequence i 20 + i); returns the STv2 and FBMS59 sheet rows."""
    data = workdir / "data"
    for name, _, _ in _sheet_rows("davis2016"):
        (data / "DAVIS2016" / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (data / "DAVIS2016" / "JPEGImages" / "480p" / name / "00000.jpg").touch()
        (data / "DAVIS2016" / "Annotations" / "480p" / name).mkdir(parents=True)
        (data / "DAVIS2016" / "Annotations" / "480p" / name / "00000.png").touch()
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
    return stv2, fbms


def test_paper_target_dry_run_covers_the_three_table1_datasets(workdir: Path) -> None:
    """Empty frame files in the layouts users download; sheet counts left empty are counted from them."""
    stv2, fbms = _paper_layouts(workdir)
    proc = snakemake(workdir, "-n", "paper", "--configfile", str(REPO / "config.paper.yaml"))
    counts = job_counts(proc.stdout)
    paper = yaml.safe_load((REPO / "config.paper.yaml").read_text())
    n_runs = len(paper["targets"]["runs"])
    n_eval = 20 + len(stv2) + sum(split == "test" for _, split, _ in fbms)
    assert n_eval == 20 + 14 + 30
    assert counts["prepare_frames"] == 50 + 14 + 59
    assert counts["train_model"] == 3 * n_runs
    assert {"full", "full_fixed"} <= set(paper["targets"]["runs"]) and paper["targets"]["released"]
    assert counts["convert_checkpoint"] == 3  # the released checkpoints' row beside ours
    assert counts["infer_masks"] == (n_runs + 1) * n_eval
    assert counts["track_baseline_masks"] == n_eval
    assert counts["evaluate_sequence"] == (n_runs + 3) * n_eval  # + released and the two no-learning baselines
    chunk_size = paper.get("tracks", {}).get("chunk_size") or yaml.safe_load(
        (REPO / "config.yaml").read_text())["tracks"]["chunk_size"]
    fbms_chunks = sum(math.ceil((20 + i) / chunk_size) for i in range(len(fbms)))
    stv2_chunks = sum(math.ceil((10 + i) / chunk_size) for i in range(len(stv2)))
    davis_chunks = sum(math.ceil(int(n) / chunk_size) for _, _, n in _sheet_rows("davis2016"))
    assert counts["track_chunk"] == davis_chunks + stv2_chunks + fbms_chunks
    assert counts["make_tables"] == 1
    # how long planning this DAG takes is measured by benchmarks/dag.py, not asserted here

    # FBMS59 flows and trains on its own gaps (datasets.fbms59.gaps: 3, 6), the others on the global 1, 2.
    targets = [f"results/{d}/train/full/model.pt" for d in ("davis2016", "fbms59")]
    proc = snakemake(workdir, "-n", "-p", *targets, "--configfile", str(REPO / "config.paper.yaml"))
    commands = re.findall(r"python -m lrtl\.(flow|train) (.*?)>logs/(\w+)/", proc.stdout, flags=re.S)
    seen = set()
    for stage, args, dataset in commands:
        params = json.loads(re.search(r"--params '(\{.*?\})'", args).group(1))
        gaps = params["gaps"] if stage == "flow" else params["data"]["gaps"]
        assert gaps == ([3, 6] if dataset == "fbms59" else [1, 2]), (stage, dataset, gaps)
        if stage == "train":  # the paper regime: the reference's compat mode and frame-uniform items
            assert params["compat"] == "reference" and params["data"]["sampling"] == "frame_uniform"
            assert params["iterations"] == 20000  # whatever the number of sequences (59 FBMS59, 50 DAVIS)
        seen.add((stage, dataset))
    assert seen == {(s, d) for s in ("flow", "train") for d in ("davis2016", "fbms59")}
    proc = snakemake(workdir, "-n", "-p", "results/davis2016/train/full_fixed/model.pt", "--configfile",
                     str(REPO / "config.paper.yaml"))
    params = json.loads(re.search(r"python -m lrtl\.train .*?--params '(\{.*?\})'", proc.stdout, re.S).group(1))
    assert params["compat"] == "fixed"  # lrtl's fixes, the named run beside full


def test_released_target_downloads_converts_infers_evaluates_and_tabulates(workdir: Path) -> None:
    """snakemake released: the authors' three checkpoints, each scored on its own dataset, nothing trained."""
    stv2, fbms = _paper_layouts(workdir)
    paper = str(REPO / "config.paper.yaml")
    proc = snakemake(workdir, "-n", "-p", "released", "--configfile", paper)
    counts = job_counts(proc.stdout)
    n_eval = {"davis2016": 20, "segtrackv2": len(stv2), "fbms59": sum(s == "test" for _, s, _ in fbms)}
    assert counts == {
        "download_weights": 1,
        "convert_checkpoint": 3,
        "prepare_frames": sum(n_eval.values()),  # only the evaluated sequences: nothing is trained
        "infer_masks": sum(n_eval.values()),
        "evaluate_sequence": sum(n_eval.values()),
        "make_released_tables": 1,
        "released": 1,
    }
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    checkpoints = {"davis2016": "davis_alt_best", "segtrackv2": "stv2_best", "fbms59": "fbms_best"}
    for dataset, name in checkpoints.items():
        spec = config["weights"]["released"][dataset]
        assert spec["url"] == f"https://www.robots.ox.ac.uk/~vgg/research/lrtl/checkpoints/{name}.pth"
        pair = f"{shlex.quote(spec['url'])} {shlex.quote(spec['path'])}"
        assert pair in proc.stdout  # download_weights: set -- URL PATH ...; curl -o PATH URL for each pair
        convert = re.search(rf"python -m lrtl\.convert\s+--reference (\S+)\s+--model '(\{{[^']*\}})'\s+"
                            rf"--out results/{dataset}/train/released/model\.pt", proc.stdout, re.S)
        assert convert and convert.group(1) == spec["path"], dataset
        model = json.loads(convert.group(2))
        assert model["backbone"]["name"] == "dino_vitb8" and model["hidden"] == 256 and model["k"] == 4
        assert f"--model results/{dataset}/train/released/model.pt" in proc.stdout
        assert f"results/{dataset}/metrics/released/" in proc.stdout
    tables = re.search(r"python -m lrtl\.tables\s+--metrics ([^']*?)\s+--params '(\{[^']*\})'\s+--out-dir "
                       r"\"\$\(dirname results/tables/paper/released/summary\.md\)\"", proc.stdout, re.S)
    assert tables, proc.stdout[-3000:]
    assert len(tables.group(1).split()) == sum(n_eval.values())
    assert set(json.loads(tables.group(2))["datasets"]) == set(checkpoints)
    # the paper Table 1 scores them beside our runs; the default (CPU) config has none to score
    assert config["targets"]["released"] is False
    proc = snakemake(workdir, "-n", "released", check=False)
    assert proc.returncode != 0 and "--configfile config.paper.yaml" in proc.stdout + proc.stderr


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


def _folder_dataset(workdir: Path, names: list[str], n_frames: int = 3) -> Path:
    """A `folder` layout dataset of tiny PNG sequences and an overlay that targets it."""
    import numpy as np
    from PIL import Image

    root = workdir / "videos"
    for name in names:
        (root / name).mkdir(parents=True)
        for t in range(n_frames):
            Image.fromarray(np.full((16, 24, 3), 40 * t, np.uint8)).save(root / name / f"{t:05d}.png")
    base = yaml.safe_load((REPO / "config.yaml").read_text())["datasets"]["synthetic"]
    spec = {**base, "layout": "folder", "root": str(root), "resolution": "",
            "evaluate": {**base["evaluate"], "label": "Mine"}}
    overlay = workdir / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"targets": {"name": "mine", "datasets": ["mine"]}, "datasets": {"mine": spec},
                                       "frames": {"height": 16, "width": 24}}))
    return overlay


def test_unknown_only_sequences_and_empty_sequence_folders_stop_the_run_naming_them(workdir: Path) -> None:
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), "--config", "only_sequences=[synth-0001]",
                     check=False)
    assert proc.returncode != 0 and "only_sequences: synth-0001 not among the sequences" in proc.stdout + proc.stderr
    overlay = _folder_dataset(workdir, ["walk", "run"])
    (workdir / "videos" / "empty").mkdir()
    proc = snakemake(workdir, "-n", "--configfile", str(overlay), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "videos/empty: sequence folder(s) with no image files" in text


def test_replacing_one_raw_frame_rebuilds_that_sequence_only(workdir: Path) -> None:
    import os

    overlay = _folder_dataset(workdir, ["walk", "run"])
    targets = ["results/mine/frames/walk.zarr", "results/mine/frames/run.zarr"]
    snakemake(workdir, *targets, "--cores", "1", "--configfile", str(overlay))
    assert "Nothing to be done" in snakemake(workdir, *targets, "-n", "--configfile", str(overlay)).stdout
    import numpy as np
    from PIL import Image

    folder_time = (workdir / "videos" / "walk").stat().st_mtime_ns
    frame = workdir / "videos" / "walk" / "00001.png"
    store_time = (workdir / targets[0] / "zarr.json").stat().st_mtime_ns
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(frame)  # a frame fixed in place
    later = max(frame.stat().st_mtime_ns, store_time + 10**9)
    os.utime(frame, ns=(later, later))  # newer than the store even on a coarse-clock file system
    assert (workdir / "videos" / "walk").stat().st_mtime_ns == folder_time  # the folder looks unchanged
    proc = snakemake(workdir, *targets, "-n", "--configfile", str(overlay))
    assert job_counts(proc.stdout) == {"prepare_frames": 1}
    outputs = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.strip().startswith("output:")]
    assert outputs == ["results/mine/frames/walk.zarr"]


def test_a_training_run_is_checked_by_the_one_train_schema(workdir: Path) -> None:
    """train.runs.<run> overrides are typed by $defs/train, the schema of train.defaults (no second copy)."""
    overlay = workdir / "runs.yaml"
    overlay.write_text("train: {runs: {full: {loss: {w_trj: 1.0}}}}\n")
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay), check=False)
    assert proc.returncode != 0 and "train.runs.full.loss.w_trj: unknown config key" in proc.stdout + proc.stderr
    overlay.write_text("train: {runs: {full: {batch_items: two}}}\n")
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay), check=False)
    assert proc.returncode != 0 and "'two' is not of type 'integer'" in proc.stdout + proc.stderr
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    train = schema["properties"]["train"]["properties"]
    assert train["runs"]["additionalProperties"] == {"$ref": "#/$defs/train"}
    assert {"$ref": "#/$defs/train"} in train["defaults"]["allOf"]
def test_my_videos_template_builds_masks_without_evaluation(workdir: Path) -> None:
    """The README's "segment your own videos" command on a folder holding one image folder (no ground truth)."""
    import numpy as np
    from PIL import Image

    clip = workdir / "videos" / "clip"
    clip.mkdir(parents=True)
    for t in range(12):
        Image.fromarray(np.full((24, 32, 3), 10 * t, np.uint8)).save(clip / f"{t:05d}.jpg")
    proc = snakemake(workdir, "-n", "--configfile", str(REPO / "workflow/overlays/my-videos.yaml"))
    counts = job_counts(proc.stdout)
    assert counts["infer_masks"] == counts["baseline_masks"] == counts["track_baseline_masks"] == 1
    assert counts["draw_pictures"] == 3  # the learned run and both baselines
    assert "evaluate_sequence" not in counts and "make_tables" not in counts  # evaluate: null
    assert "--flow" in proc.stdout.split("rule infer_masks:")[1].split("rule ")[0]  # the motion merge reads it
