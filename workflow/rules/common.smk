# Config validation, sequence sheets, wildcard constraints, and every function the rules call.
import copy
import hashlib
import json
import math
import shlex

import pandas as pd

from snakemake.utils import validate

import lrtl.datasets
from lrtl.cli import StageError
import lrtl.stores
import lrtl.synthetic

validate(config, "../schemas/config.schema.yaml")

PIPELINE_RUNS = list(config["train"]["runs"])
BASELINE_RUN = "baseline"
TRACK_BASELINE_RUN = "baseline_tracks"


def check_targets():
    """Targets must name configured datasets and runs; synthetic datasets live where make_synthetic writes."""
    for name in config["targets"]["datasets"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"targets.datasets: {name!r} is not under datasets: ({', '.join(config['datasets'])})"
            )
        spec = config["datasets"][name]
        if spec["layout"] == "synthetic" and spec["root"] != f"results/{name}/raw":
            raise ValueError(
                f"datasets.{name}.root must be results/{name}/raw (where make_synthetic writes)"
            )
    for run in config["targets"]["runs"]:
        if run not in PIPELINE_RUNS:
            raise ValueError(
                f"targets.runs: {run!r} is not under train.runs: ({', '.join(PIPELINE_RUNS)})"
            )


check_targets()


def deep_merge(base, override):
    """A copy of `base` with `override` merged in recursively (override wins)."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_sheet(path):
    """Rows of a sequence sheet (tsv: sequence, split, n_frames), each validated by its schema.

    n_frames may be left empty (None): dataset_rows then counts the frames in the dataset root.
    """
    sheet = lrtl.datasets.read_sheet(path)
    rows = [
        {
            "sequence": row.sequence,
            "split": row.split,
            "n_frames": None if pd.isna(row.n_frames) else int(row.n_frames),
        }
        for row in sheet.itertuples(index=False)
    ]
    for row in rows:
        validate(row, "../schemas/sequences.schema.yaml")
    return rows


def count_missing_frames(name, sheet, rows):
    """Fill n_frames left empty in a sheet by counting the files in the dataset root (no image is decoded)."""
    spec = config["datasets"][name]
    missing = [r["sequence"] for r in rows if r["n_frames"] is None]
    if not missing:
        return rows
    fix = (
        f"put the dataset at {spec['root']} or fill the counts once with: python -m lrtl.datasets index "
        f"--layout {spec['layout']} --root {spec['root']} --resolution {spec['resolution']!r} "
        f"--splits-from {sheet} --out {sheet}"
    )
    try:
        counts = dict(
            lrtl.datasets.list_sequences(
                spec["root"], spec["layout"], spec["resolution"]
            )
        )
    except StageError as err:
        raise ValueError(
            f"{sheet}: no frame count for {len(missing)} sequences and {err}; {fix}"
        ) from err
    absent = [s for s in missing if not counts.get(s)]
    if absent:
        raise ValueError(
            f"{sheet}: no frame count for {', '.join(absent)} and no frames for them under "
            f"{spec['root']}; {fix}"
        )
    return [
        {**r, "n_frames": counts[r["sequence"]]} if r["n_frames"] is None else r
        for r in rows
    ]


def dataset_rows(name):
    """The sequences of a dataset: from the synthetic plan, the sheet, or a listing of its root."""
    spec = config["datasets"][name]
    if spec["layout"] == "synthetic":
        plan = lrtl.synthetic.sequence_plan(config["synthetic"])
        return [{"sequence": s, "split": "all", "n_frames": n} for s, n in plan]
    if spec["sheet"]:
        sheet = os.path.join(workflow.basedir, spec["sheet"])
        return count_missing_frames(name, spec["sheet"], read_sheet(sheet))
    listing = lrtl.datasets.list_sequences(
        spec["root"], spec["layout"], spec["resolution"]
    )
    return [{"sequence": s, "split": "all", "n_frames": n} for s, n in listing]


def check_splits(name, rows):
    """train_splits / eval_splits must name splits of the sheet (or all), and select at least one sequence."""
    spec = config["datasets"][name]
    found = {r["split"] for r in rows}
    for key in ("train_splits", "eval_splits"):
        unknown = [s for s in spec[key] if s != "all" and s not in found]
        if unknown:
            raise ValueError(
                f"datasets.{name}.{key}: {unknown} not among the splits of its sequences "
                f"({', '.join(sorted(found))}); use those or all"
            )


def load_sequences():
    """dataset -> {sequence: row}, restricted to `only_sequences` when it is not empty."""
    only = set(config["only_sequences"])
    sequences = {}
    for name in config["targets"]["datasets"]:
        rows = dataset_rows(name)
        check_splits(name, rows)
        sequences[name] = {
            r["sequence"]: r for r in rows if not only or r["sequence"] in only
        }
    return sequences


SEQUENCES = load_sequences()


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    run="|".join(PIPELINE_RUNS + [BASELINE_RUN, TRACK_BASELINE_RUN]),
    sequence="[^/]+",
    chunk=r"\d{3}",
    resolution=r"[^/]+",


# ----------------------------------------------------------------------------- sequences and chunks


def sequences_of(dataset, splits_key=None):
    """Sequence names of a dataset, optionally only those whose split is in datasets.<d>.<splits_key>."""
    rows = SEQUENCES[dataset].values()
    if splits_key:
        splits = set(config["datasets"][dataset][splits_key])
        rows = [r for r in rows if r["split"] in splits or "all" in splits]
    return [r["sequence"] for r in rows]


def n_chunks(dataset, sequence):
    n_frames = SEQUENCES[dataset][sequence]["n_frames"]
    return math.ceil(n_frames / config["tracks"]["chunk_size"])


def chunk_paths(wildcards):
    return [
        f"results/{wildcards.dataset}/tracks/{wildcards.sequence}/chunk-{c:03d}.zarr"
        for c in range(n_chunks(wildcards.dataset, wildcards.sequence))
    ]


# Backbone keys each backbone reads; the others are passed as null, so that editing them retrains nothing.
BACKBONE_KEYS = {
    "small": {"name", "channels", "inputs"},
    "dino_vitb8": {"name", "weights", "layers", "patch_stride"},
}


def dataset_gaps(dataset):
    """datasets.<d>.gaps (paper FBMS [3, 6]): the flow gaps of this dataset's training items, or None."""
    return config["datasets"][dataset]["gaps"]


def run_params(wildcards):
    """The merged hyperparameters of one training run: train.defaults, then the dataset's own gaps (if any),
    then train.runs.<run>."""
    gaps = dataset_gaps(wildcards.dataset)
    per_dataset = {} if gaps is None else {"data": {"gaps": gaps}}
    params = deep_merge(
        deep_merge(config["train"]["defaults"], per_dataset),
        config["train"]["runs"][wildcards.run],
    )
    backbone = params["model"]["backbone"]
    used = BACKBONE_KEYS[backbone["name"]]
    params["model"]["backbone"] = {
        key: value if key in used else None for key, value in backbone.items()
    }
    return params


# ----------------------------------------------------------------------------- rule inputs


def raw_inputs(wildcards):
    """The raw image folder (or video) and annotation folder of one sequence, as lrtl.datasets names them."""
    spec = config["datasets"][wildcards.dataset]
    sources = lrtl.datasets.sequence_sources(
        spec["root"], spec["layout"], spec["resolution"], wildcards.sequence
    )
    return {name: str(path) for name, path in sources.items() if path is not None}


def ground_truth_store(wildcards):
    """The exact ground truth of a synthetic sequence (make_synthetic writes it beside the frames)."""
    resolution = config["datasets"][wildcards.dataset]["resolution"]
    return f"results/{wildcards.dataset}/raw/GroundTruth/{resolution}/{wildcards.sequence}.zarr"


def flow_inputs(wildcards):
    inputs = {"frames": f"results/{wildcards.dataset}/frames/{wildcards.sequence}.zarr"}
    backend = config["flow"]["backend"]
    if backend == "raft":
        inputs["weights"] = config["flow"]["raft"]["weights"]
    elif backend == "oracle":
        inputs["ground_truth"] = ground_truth_store(wildcards)
    elif backend == "flo":
        inputs["flo_root"] = config["datasets"][wildcards.dataset]["root"]
    return inputs


def track_inputs(wildcards):
    inputs = {"frames": f"results/{wildcards.dataset}/frames/{wildcards.sequence}.zarr"}
    backend = config["tracks"]["backend"]
    if backend == "flowchain":
        inputs["flow"] = f"results/{wildcards.dataset}/flow/{wildcards.sequence}.zarr"
    elif backend == "oracle":
        inputs["ground_truth"] = ground_truth_store(wildcards)
    elif backend == "cotracker":
        cotracker = config["tracks"]["cotracker"]
        if cotracker["source"] == "local":
            inputs["hub_repo"] = cotracker["repo_dir"]
        inputs["checkpoint"] = cotracker["checkpoint"]
    return inputs


def train_inputs(wildcards):
    names = sequences_of(wildcards.dataset, "train_splits")
    inputs = {
        "frames": [f"results/{wildcards.dataset}/frames/{s}.zarr" for s in names],
        "flow": [f"results/{wildcards.dataset}/flow/{s}.zarr" for s in names],
        "tracks": [f"results/{wildcards.dataset}/tracks/{s}/index.json" for s in names],
    }
    backbone = run_params(wildcards)["model"]["backbone"]
    if backbone["name"] != "small":
        inputs["backbone_weights"] = backbone[
            "weights"
        ]  # declared only; lrtl.train reads it from params
    return inputs


def infer_inputs(wildcards):
    inputs = {
        "model": f"results/{wildcards.dataset}/train/{wildcards.run}/model.pt",
        "frames": f"results/{wildcards.dataset}/frames/{wildcards.sequence}.zarr",
    }
    if config["infer"]["merge_features"] == "dino_vits8":
        inputs["dino_weights"] = config["infer"][
            "dino_weights"
        ]  # declared only; lrtl.infer reads it from params
    if "flow" in (run_params(wildcards)["model"]["backbone"]["inputs"] or []):
        inputs["flow"] = f"results/{wildcards.dataset}/flow/{wildcards.sequence}.zarr"
    return inputs


def infer_flow_flag(wildcards, input):
    """`--flow <store>` for a model that takes optical flow as input (train.*.model.backbone.inputs), else ""."""
    return f"--flow {shlex.quote(input.flow)}" if "flow" in input.keys() else ""


def input_flags(wildcards, input):
    """`--name path` for every named input (lists become several paths), each path shell-quoted."""
    flags = []
    for name, value in input.items():
        paths = value if isinstance(value, list) else [value]
        flags.append(
            " ".join(
                [f"--{name.replace('_', '-')}", *(shlex.quote(str(p)) for p in paths)]
            )
        )
    return " ".join(flags)


def active_backend_only(section):
    """A section with a `backend` key keeps only that backend's sub-section; the other backends' become null,
    so that editing an inactive backend's keys changes no job's params (and reruns nothing).
    """
    if "backend" not in section:
        return section
    return {
        key: None if isinstance(value, dict) and key != section["backend"] else value
        for key, value in section.items()
    }


def stage_params(section):
    """A params callable giving the JSON of one config section (literal braces would read as wildcards)."""

    def params(wildcards):
        return json.dumps(active_backend_only(config[section]), sort_keys=True)

    return params


def flow_params_json(wildcards):
    """The flow section for one sequence: datasets.<d>.gaps replace flow.gaps where set (lrtl.flow adds gap 1)."""
    section = active_backend_only(config["flow"])
    gaps = dataset_gaps(wildcards.dataset)
    if gaps is not None:
        section = {**section, "gaps": gaps}
    return json.dumps(section, sort_keys=True)


def train_params_json(wildcards):
    return json.dumps(run_params(wildcards), sort_keys=True)


def tables_params_json(wildcards):
    """How to aggregate and label each target dataset, which runs form ablations, and the quoted numbers."""
    tables = {
        "datasets": {
            d: config["datasets"][d]["evaluate"] for d in config["targets"]["datasets"]
        },
        **config["tables"],
    }
    return json.dumps(tables, sort_keys=True)


def synthetic_index(wildcards):
    """The generator's index of a synthetic sequence (its place in the full plan, whatever only_sequences says)."""
    names = [name for name, _ in lrtl.synthetic.sequence_plan(config["synthetic"])]
    return names.index(wildcards.sequence)


# ----------------------------------------------------------------------------- targets


def all_frames(wildcards=None):
    return [
        f"results/{d}/frames/{s}.zarr"
        for d in config["targets"]["datasets"]
        for s in sequences_of(d)
    ]


def all_flow(wildcards=None):
    return [
        f"results/{d}/flow/{s}.zarr"
        for d in config["targets"]["datasets"]
        for s in sequences_of(d)
    ]


def all_tracks(wildcards=None):
    return [
        f"results/{d}/tracks/{s}/index.json"
        for d in config["targets"]["datasets"]
        for s in sequences_of(d)
    ]


def all_models(wildcards=None):
    return [
        f"results/{d}/train/{r}/model.pt"
        for d in config["targets"]["datasets"]
        for r in config["targets"]["runs"]
    ]


def evaluated_runs():
    return config["targets"]["runs"] + [BASELINE_RUN, TRACK_BASELINE_RUN]


def all_masks(wildcards=None):
    return [
        f"results/{d}/masks/{r}/{s}.zarr"
        for d in config["targets"]["datasets"]
        for r in evaluated_runs()
        for s in sequences_of(d, "eval_splits")
    ]


def all_metrics(wildcards=None):
    return [
        f"results/{d}/metrics/{r}/{s}.tsv"
        for d in config["targets"]["datasets"]
        for r in evaluated_runs()
        for s in sequences_of(d, "eval_splits")
    ]


def tables_dir():
    """Where make_tables writes: results/tables/ for the default run, results/tables/<targets.name>/ otherwise.

    A run restricted by only_sequences writes beside them, under a folder that says so (a short hash beyond 3
    sequences), e.g. results/tables/only-synth-000. lrtl.tables refuses to overwrite tables of other datasets.
    """
    parts = [config["targets"]["name"]] if config["targets"]["name"] else []
    only = sorted(config["only_sequences"])
    if only and len(only) <= 3:
        parts.append("only-" + "+".join(only))
    elif only:
        digest = hashlib.sha1("\n".join(only).encode()).hexdigest()[:8]
        parts.append(f"only-{len(only)}-{digest}")
    return os.path.join("results", "tables", *(["--".join(parts)] if parts else []))


TABLES_DIR = tables_dir()


def table_files(stem):
    """The .md, .csv and .tex files of one table in TABLES_DIR."""
    return [f"{TABLES_DIR}/{stem}.{ext}" for ext in ("md", "csv", "tex")]


def ablation_files():
    """The .md, .csv and .tex files of every ablation table (tables.ablations)."""
    return [
        path
        for group in config["tables"]["ablations"]
        for path in table_files(f"ablation-{group}")
    ]


def all_tables(wildcards=None):
    return [f"{TABLES_DIR}/summary.md", *table_files("table1"), *ablation_files()]


localrules:
    all,
    paper,
    all_frames,
    all_flow,
    all_tracks,
    all_models,
    all_masks,
    all_metrics,


# ----------------------------------------------------------------------------- resources


def runtime_per_attempt(minutes):
    """A runtime resource that grows with each retry, so a preempted or slow job gets more time."""

    def runtime(wildcards, attempt):
        return minutes * attempt

    return runtime


def flow_gpus(wildcards):
    """RAFT runs on a GPU; DIS and the oracle do not."""
    return int(config["flow"]["backend"] == "raft")


def tracker_gpus(wildcards):
    """CoTracker runs on a GPU; flow chaining and the oracle do not."""
    return int(config["tracks"]["backend"] == "cotracker")


def model_gpus(wildcards):
    """The paper's DINO backbone wants a GPU; the small CPU network does not."""
    return int(run_params(wildcards)["model"]["backbone"]["name"] != "small")
