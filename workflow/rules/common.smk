# Config validation, sequence sheets, wildcard constraints, and every function the rules call.
import copy
import json
import math
import shlex

import jsonschema
import pandas as pd
import yaml

from snakemake.utils import update_config, validate

import lrtl.datasets
import lrtl.params
from lrtl.cli import StageError
from lrtl.settings import split_settings
import lrtl.stores
import lrtl.synthetic
import lrtl.train_params

CONFIG_SCHEMA = os.path.join(
    workflow.basedir, "workflow", "schemas", "config.schema.yaml"
)


def schema_types(schema):
    kinds = schema.get("type", [])
    return {kinds} if isinstance(kinds, str) else set(kinds)


def resolved(schema, root):
    """A schema node with its local `$ref` / `allOf` parts merged into one (properties of all of them)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    for part in schema.get("allOf", []):
        part = resolved(part, root)
        schema = {
            **part,
            **schema,
            "properties": {
                **part.get("properties", {}),
                **schema.get("properties", {}),
            },
        }
    return schema


def typed_config_values(value, schema, root):
    """`--config key={a: {b: 100}}` arrives with every nested scalar a string (Snakemake reads nested values
    with YAML's BaseLoader): read each string again as YAML where the schema wants no string there.
    """
    schema = resolved(schema, root)
    if isinstance(value, dict):
        extra = schema.get("additionalProperties")
        properties = schema.get("properties", {})
        return {
            key: typed_config_values(
                item,
                properties.get(key, extra if isinstance(extra, dict) else {}),
                root,
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            typed_config_values(item, schema.get("items", {}), root) for item in value
        ]
    kinds = schema_types(schema)
    if isinstance(value, str) and kinds and "string" not in kinds:
        parsed = yaml.safe_load(value)
        if (
            isinstance(parsed, str) and "number" in kinds
        ):  # YAML 1.1 reads 1e-3 as a string
            try:
                return float(parsed)
            except ValueError:
                pass
        return parsed
    return value


def config_files_setting(path):
    """The config files (config.yaml and the --configfile overlays) that set the dotted key `path`."""
    found = []
    for name in workflow.configfiles:
        try:
            with open(name) as handle:
                node = yaml.safe_load(handle)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            relative = os.path.relpath(name)
            found.append(str(name) if relative.startswith("..") else relative)
    return found


def validate_config():
    """Check the merged config against the schema; each problem is one line naming its full key path (an unknown
    key with the closest valid one), and the config files that set it."""
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    errors = sorted(
        validator.iter_errors(config), key=lambda err: list(map(str, err.absolute_path))
    )
    lines = []
    for err in errors:
        path = ".".join(map(str, err.absolute_path))
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = err.schema.get("properties", {})
            keys = [
                f"{path}.{key}" if path else key
                for key in err.instance
                if key not in known
            ]
        else:
            keys = [path]
        files = list(
            dict.fromkeys(f for key in keys for f in config_files_setting(key))
        )
        where = f" (set in {', '.join(files)})" if files else " (set with --config?)"
        lines.append(lrtl.params.schema_error_message(err) + where)
    if lines:
        raise ValueError(
            "\n".join(lines)
            + "\nFix the config (every key is in config.yaml, checked by workflow/schemas/config.schema.yaml)"
        )


with open(CONFIG_SCHEMA) as handle:
    SCHEMA = yaml.safe_load(handle)
config.update(typed_config_values(config, SCHEMA, SCHEMA))
validate_config()

PIPELINE_RUNS = list(config["train"]["runs"])
BASELINE_RUN = "baseline"
RELEASED_RUN = "released"  # the authors' released checkpoints (weights.released), converted by convert_checkpoint
TRACK_BASELINE_RUN = "baseline_tracks"  # lrtl.track_baseline's masks: the no-learning baseline from tracks


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
    for name in config["weights"]["released"]:
        if name not in config["datasets"]:
            raise ValueError(
                f"weights.released: {name!r} is not under datasets: ({', '.join(config['datasets'])})"
            )


check_targets()


def merged(base, *overrides):
    """A copy of `base` with each override merged in recursively (snakemake.utils.update_config; later wins)."""
    result = copy.deepcopy(base)
    for override in overrides:
        update_config(result, copy.deepcopy(override))
    return result


def check_runs():
    """Every training run, merged over train.defaults, is a complete train section (the schema's $defs/train and
    $defs/train_required: one definition for the defaults and every run)."""
    whole = {
        "$defs": SCHEMA["$defs"],
        "allOf": [{"$ref": "#/$defs/train"}, {"$ref": "#/$defs/train_required"}],
    }
    # a dataset's own training overrides, each distinct one once ("" = none: train.defaults alone)
    owners = {"": {}}
    for dataset, section in config["datasets"].items():
        if section["train"] and section["train"] not in owners.values():
            owners[dataset] = section["train"]
    for run, override in config["train"]["runs"].items():
        for dataset, own in owners.items():
            where = f" and datasets.{dataset}.train" if own else ""
            try:
                jsonschema.validate(
                    merged(config["train"]["defaults"], own, override), whole
                )
            except jsonschema.ValidationError as err:
                raise ValueError(
                    lrtl.params.schema_error_message(err, f"train.runs.{run}")
                    + f" (train.runs.{run} merged over train.defaults{where})"
                ) from err


check_runs()


def synthetic_params(dataset):
    """The generator settings of a synthetic dataset: datasets.<d>.synthetic merged over the synthetic section."""
    return merged(config["synthetic"], config["datasets"][dataset]["synthetic"])


def check_synthetic():
    """Every synthetic dataset's merged generator settings are a complete synthetic section (the schema's
    $defs/synthetic and $defs/synthetic_required, as for the training runs)."""
    whole = {
        "$defs": SCHEMA["$defs"],
        "allOf": [
            {"$ref": "#/$defs/synthetic"},
            {"$ref": "#/$defs/synthetic_required"},
        ],
    }
    for name, spec in config["datasets"].items():
        if spec["layout"] != "synthetic":
            continue
        try:
            jsonschema.validate(synthetic_params(name), whole)
        except jsonschema.ValidationError as err:
            path = ".".join(map(str, err.absolute_path))
            raise ValueError(
                f"datasets.{name}.synthetic (merged over synthetic): {path}: {err.message}"
            ) from err


check_synthetic()


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
        plan = lrtl.synthetic.sequence_plan(synthetic_params(name))
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
    sequences, known = {}, set()
    for name in config["targets"]["datasets"]:
        rows = dataset_rows(name)
        check_splits(name, rows)
        known |= {r["sequence"] for r in rows}
        sequences[name] = {
            r["sequence"]: r for r in rows if not only or r["sequence"] in only
        }
    unknown = sorted(only - known)
    if unknown:
        raise ValueError(
            f"only_sequences: {', '.join(unknown)} not among the sequences of "
            f"{', '.join(config['targets']['datasets'])} ({', '.join(sorted(known)[:12])}"
            f"{' ...' if len(known) > 12 else ''})"
        )
    return sequences


SEQUENCES = load_sequences()


wildcard_constraints:
    dataset="|".join(config["datasets"]),
    run="|".join(PIPELINE_RUNS + [BASELINE_RUN, TRACK_BASELINE_RUN, RELEASED_RUN]),
    sequence=r"[^/]+(?<!\.zarr)",  # a picture folder {sequence}/ never swallows a store {sequence}.zarr
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


def used_sequences(dataset):
    """Sequences a dataset's runs train on or evaluate: the only ones whose stores are built."""
    used = set(sequences_of(dataset, "train_splits")) | set(
        sequences_of(dataset, "eval_splits")
    )
    return [s for s in sequences_of(dataset) if s in used]


def n_chunks(dataset, sequence):
    n_frames = SEQUENCES[dataset][sequence]["n_frames"]
    return math.ceil(n_frames / config["tracks"]["chunk_size"])


def sequence_chunks(dataset, sequence):
    """The track chunk stores of one sequence."""
    return [
        f"results/{dataset}/tracks/{sequence}/chunk-{c:03d}.zarr"
        for c in range(n_chunks(dataset, sequence))
    ]


def chunk_paths(wildcards):
    """The track chunk stores of {sequence}: inputs of every job that reads them (through index.json too), so that
    a deleted chunk is rebuilt before a job needs it."""
    return sequence_chunks(wildcards.dataset, wildcards.sequence)


# Backbone keys each backbone reads; the others are passed as null, so that editing them retrains nothing.
BACKBONE_KEYS = {
    "small": {"name", "channels", "inputs"},
    "dino_vitb8": {"name", "weights", "layers", "patch_stride"},
}


def dataset_gaps(dataset):
    """datasets.<d>.gaps (paper FBMS [3, 6]): the flow gaps of this dataset's training items, or None."""
    return config["datasets"][dataset]["gaps"]


def check_sequence_lengths():
    """Every sequence a target builds has more frames than its largest flow gap (so at least 2): stop before any
    job runs, naming each such sequence, its video or folder, and the fix (lrtl.frames and lrtl.flow check it too).
    """
    problems = []
    for name in config["targets"]["datasets"]:
        spec = config["datasets"][name]
        key = f"datasets.{name}.gaps" if dataset_gaps(name) else "flow.gaps"
        largest = max([1, *(dataset_gaps(name) or config["flow"]["gaps"])])
        for sequence in used_sequences(name):
            n_frames = SEQUENCES[name][sequence]["n_frames"]
            if n_frames > largest:
                continue
            images = lrtl.datasets.sequence_sources(
                spec["root"], spec["layout"], spec["resolution"], sequence
            )["images"]
            drop = (
                f"drop its row from {spec['sheet']}"
                if spec["sheet"]
                else f"move it out of {spec['root']}"
            )
            problems.append(
                f"{images}: sequence {sequence!r} of dataset {name} has {n_frames} frame(s); a sequence needs at "
                f"least 2 frames, and more than its largest flow gap ({largest}, {key}): add frames, {drop}, "
                f"or lower {key}"
            )
    if problems:
        raise ValueError("\n".join(problems))


check_sequence_lengths()


def check_annotations():
    """In a downloaded layout that annotates every frame (DAVIS), every frame a target builds has its mask, unless
    datasets.<d>.missing_annotations is warn: stop before any job runs (nothing built is touched), naming the
    missing files (lrtl.frames checks it too). Synthetic datasets are written whole by make_synthetic.
    """
    problems = []
    for name in config["targets"]["datasets"]:
        spec = config["datasets"][name]
        if (
            spec["missing_annotations"] == "warn"
            or spec["layout"] not in lrtl.datasets.DENSE_GT_LAYOUTS
            or spec["layout"] == "synthetic"
        ):
            continue
        for sequence in used_sequences(name):
            sources = lrtl.datasets.sequence_sources(
                spec["root"], spec["layout"], spec["resolution"], sequence
            )
            missing = lrtl.datasets.missing_annotations(
                sources["images"], sources["annotations"], spec["layout"]
            )
            if missing:
                problems.append(
                    lrtl.datasets.missing_annotations_message(
                        sources["annotations"],
                        missing,
                        SEQUENCES[name][sequence]["n_frames"],
                        spec["layout"],
                        name,
                    )
                )
    if problems:
        raise ValueError("\n".join(problems))


check_annotations()


def used_backbone_keys(model):
    """A model section whose backbone keeps only the keys its backbone reads (the others null)."""
    backbone = model["backbone"]
    used = BACKBONE_KEYS[backbone["name"]]
    return {
        **model,
        "backbone": {
            key: value if key in used else None for key, value in backbone.items()
        },
    }


def run_params(wildcards):
    """The merged hyperparameters of one training run: train.defaults, then the dataset's own gaps (if any) and
    training overrides (datasets.<d>.train), then train.runs.<run>; iterations scaled to the number of training
    sequences (train.iterations_for_sequences), so that the job's params give the steps it trains.
    """
    gaps = dataset_gaps(wildcards.dataset)
    per_dataset = {} if gaps is None else {"data": {"gaps": gaps}}
    own = config["datasets"][wildcards.dataset]["train"]
    params = merged(
        config["train"]["defaults"],
        per_dataset,
        own,
        config["train"]["runs"][wildcards.run],
    )
    params["model"] = used_backbone_keys(params["model"])
    params["iterations"] = lrtl.train_params.scaled_iterations(
        params["iterations"],
        len(sequences_of(wildcards.dataset, "train_splits")),
        config["train"]["iterations_for_sequences"],
    )
    return params


def released_model():
    """The model section of the released checkpoints: train.defaults.model, which must be the paper model."""
    model = used_backbone_keys(config["train"]["defaults"]["model"])
    if model["backbone"]["name"] != "dino_vitb8":
        raise ValueError(
            "the released checkpoints are of the paper model (DINO ViT-B/8 backbone), but "
            f"train.defaults.model.backbone.name is {model['backbone']['name']!r}: run with "
            "--configfile config.paper.yaml"
        )
    return model


def model_section(wildcards):
    """The model of a run: a trained run's merged model section, or the released checkpoints' model."""
    if wildcards.run == RELEASED_RUN:
        return released_model()
    return run_params(wildcards)["model"]


# ----------------------------------------------------------------------------- rule inputs


def raw_sources(wildcards):
    """The raw image folder (or video) and annotation folder of one sequence, as lrtl.datasets names them."""
    spec = config["datasets"][wildcards.dataset]
    sources = lrtl.datasets.sequence_sources(
        spec["root"], spec["layout"], spec["resolution"], wildcards.sequence
    )
    return {name: str(path) for name, path in sources.items() if path is not None}


def files_of(path):
    """A file, or every (non-hidden) file under a folder, sorted."""
    if not os.path.isdir(path):
        return [path]
    return sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(path)
        for name in names
        if not name.startswith(".")
    )


def raw_inputs(wildcards):
    """The inputs of prepare_frames: every file of the raw folders, so that replacing one frame reruns the
    sequence (a folder's own time stamp does not change when a file in it is replaced). Synthetic folders are
    the outputs of make_synthetic and stay folders."""
    sources = raw_sources(wildcards)
    if config["datasets"][wildcards.dataset]["layout"] == "synthetic":
        return sources
    return {name: files_of(path) for name, path in sources.items()}


def raw_flags(wildcards):
    """`--images FOLDER [--annotations FOLDER]` of one sequence (the folders whose files raw_inputs lists), and
    `--allow-missing-annotations` where datasets.<d>.missing_annotations is warn."""
    flags = [
        f"--{name} {shlex.quote(path)}" for name, path in raw_sources(wildcards).items()
    ]
    if config["datasets"][wildcards.dataset]["missing_annotations"] == "warn":
        flags.append("--allow-missing-annotations")
    return " ".join(flags)


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
        "chunks": [c for s in names for c in sequence_chunks(wildcards.dataset, s)],
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
    takes_flow = "flow" in (model_section(wildcards)["backbone"]["inputs"] or [])
    if takes_flow or config["infer"]["merge_features"] == "motion":
        inputs["flow"] = f"results/{wildcards.dataset}/flow/{wildcards.sequence}.zarr"
    return inputs


def infer_flow_flag(wildcards, input):
    """`--flow <store>` for a model that takes optical flow as input (train.*.model.backbone.inputs) and for the
    motion merge (infer.merge_features: motion), else ""."""
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


def stage_params(stage):
    """A params callable giving the JSON of a stage's result params: its config section without the run
    settings (lrtl.settings), so that only what changes the result reruns the job. infer.pictures belongs to
    the draw_pictures rule."""

    def params(wildcards):
        section = active_backend_only(config[stage])
        if stage == "infer":
            section = {k: v for k, v in section.items() if k != "pictures"}
        return json.dumps(split_settings(stage, section)[0], sort_keys=True)

    return params


def stage_settings(stage):
    """A params callable giving the JSON of a stage's run settings (device, workers, memory-only batch sizes).

    It takes `resources`, which makes it a derived param for Snakemake: derived params are not compared
    between runs (only input, code and non-derived params are), so changing a run setting reruns nothing.
    tests/workflow/test_e2e.py checks that for every run setting.
    """

    def settings(wildcards, resources):
        return json.dumps(
            split_settings(stage, active_backend_only(config[stage]))[1], sort_keys=True
        )

    return settings


def flow_params_json(wildcards):
    """The flow section for one sequence: datasets.<d>.gaps replace flow.gaps where set (lrtl.flow adds gap 1)."""
    section = active_backend_only(config["flow"])
    gaps = dataset_gaps(wildcards.dataset)
    if gaps is not None:
        section = {**section, "gaps": gaps}
    return json.dumps(split_settings("flow", section)[0], sort_keys=True)


def train_params_json(wildcards):
    return json.dumps(split_settings("train", run_params(wildcards))[0], sort_keys=True)


def train_settings_json(wildcards, resources):
    """The run settings of one training run (a derived param: see stage_settings)."""
    return json.dumps(split_settings("train", run_params(wildcards))[1], sort_keys=True)


def released_checkpoint(wildcards):
    """The local copy of a dataset's released checkpoint (download_weights fetches it)."""
    return config["weights"]["released"][wildcards.dataset]["path"]


def released_backbone_weights(wildcards):
    """The DINO weights the converted checkpoint's model reads (the reference keeps its ViT outside its
    checkpoints); declared only, lrtl.convert reads the path from --model."""
    return released_model()["backbone"]["weights"]


def released_model_json(wildcards):
    return json.dumps(released_model(), sort_keys=True)


def tables_params(datasets, ablations):
    """A params callable: how to aggregate and label each of `datasets`, the ablation tables (or none), and
    the quoted numbers."""

    def params(wildcards):
        tables = {
            "datasets": {d: config["datasets"][d]["evaluate"] for d in datasets},
            **config["tables"],
        }
        if not ablations:
            tables["ablations"] = {}
        return json.dumps(tables, sort_keys=True)

    return params


def synthetic_index(wildcards):
    """The generator's index of a synthetic sequence (its place in the full plan, whatever only_sequences says)."""
    plan = lrtl.synthetic.sequence_plan(synthetic_params(wildcards.dataset))
    return [name for name, _ in plan].index(wildcards.sequence)


def synthetic_params_json(wildcards):
    """The JSON of a synthetic dataset's generator settings as its make_synthetic jobs record them (a layers
    scene leaves out the parallax scene's keys: lrtl.synthetic.job_params)."""
    params = lrtl.synthetic.job_params(synthetic_params(wildcards.dataset))
    return json.dumps(params, sort_keys=True)


# ----------------------------------------------------------------------------- targets


def all_frames(wildcards=None):
    return [
        f"results/{d}/frames/{s}.zarr"
        for d in config["targets"]["datasets"]
        for s in used_sequences(d)
    ]


def all_flow(wildcards=None):
    return [
        f"results/{d}/flow/{s}.zarr"
        for d in config["targets"]["datasets"]
        for s in used_sequences(d)
    ]


def all_tracks(wildcards=None):
    """Every chunk store and index.json: `all` asks for each, so a deleted chunk is rebuilt with its dependents."""
    return [
        path
        for d in config["targets"]["datasets"]
        for s in used_sequences(d)
        for path in [*sequence_chunks(d, s), f"results/{d}/tracks/{s}/index.json"]
    ]


def all_models(wildcards=None):
    return [
        f"results/{d}/train/{r}/model.pt"
        for d in config["targets"]["datasets"]
        for r in config["targets"]["runs"]
    ]


def released_datasets():
    """The target datasets that have a released checkpoint (weights.released)."""
    return [
        d for d in config["targets"]["datasets"] if d in config["weights"]["released"]
    ]


def evaluated_runs(dataset):
    """targets.runs, the two no-learning baselines, and the released checkpoint where targets.released asks."""
    released = config["targets"]["released"] and dataset in released_datasets()
    return (
        config["targets"]["runs"]
        + [BASELINE_RUN, TRACK_BASELINE_RUN]
        + ([RELEASED_RUN] if released else [])
    )


def all_masks(wildcards=None):
    return [
        f"results/{d}/masks/{r}/{s}.zarr"
        for d in config["targets"]["datasets"]
        for r in evaluated_runs(d)
        for s in sequences_of(d, "eval_splits")
    ]


def all_pictures(wildcards=None):
    return [
        f"results/{d}/masks/{r}/{s}"
        for d in config["targets"]["datasets"]
        for r in evaluated_runs(d)
        for s in sequences_of(d, "eval_splits")
    ]


def evaluated_datasets():
    """The target datasets scored against ground truth: those whose datasets.<d>.evaluate is not null (a folder
    of one's own videos has no ground truth: masks and pictures only, no metrics or tables).
    """
    return [
        d
        for d in config["targets"]["datasets"]
        if config["datasets"][d]["evaluate"] is not None
    ]


def all_metrics(wildcards=None):
    return [
        f"results/{d}/metrics/{r}/{s}.tsv"
        for d in evaluated_datasets()
        for r in evaluated_runs(d)
        for s in sequences_of(d, "eval_splits")
    ]


def released_metrics(wildcards=None):
    """The per-frame metrics of the released checkpoints alone (snakemake released)."""
    if not released_datasets():
        raise ValueError(
            f"none of targets.datasets ({', '.join(config['targets']['datasets'])}) has a released checkpoint "
            f"under weights.released ({', '.join(config['weights']['released'])}): run "
            "snakemake released --configfile config.paper.yaml"
        )
    return [
        f"results/{d}/metrics/{RELEASED_RUN}/{s}.tsv"
        for d in released_datasets()
        for s in sequences_of(d, "eval_splits")
    ]


def tables_dir():
    """Where make_tables writes: results/tables/ for the default run, results/tables/<targets.name>/ otherwise.

    A run restricted by only_sequences writes beside them, under a folder that names its sequences, e.g.
    results/tables/only-synth-000+synth-001; a list too long for a folder name needs targets.name (the folder is
    then that name alone).
    """
    name = config["targets"]["name"]
    only = sorted(config["only_sequences"])
    parts = [name] if name else []
    subset = "only-" + "+".join(only)
    if only and len(subset) <= 120:
        parts.append(subset)
    elif only and not name:
        raise ValueError(
            f"only_sequences lists {len(only)} sequences, too many to name a tables folder after them; "
            f"name it with targets.name (e.g. --config targets.name=my-subset)"
        )
    return os.path.join("results", "tables", *(["--".join(parts)] if parts else []))


TABLES_DIR = tables_dir()


def check_tables_dir():
    """A tables folder holds the tables of one set of datasets (its .targets.json says which): stop before
    Snakemake replaces them with the tables of other datasets."""
    record = os.path.join(TABLES_DIR, ".targets.json")
    if not os.path.isfile(record):
        return
    with open(record) as handle:
        previous = json.load(handle).get("datasets", [])
    wanted = evaluated_datasets()
    if wanted and sorted(previous) != sorted(wanted):
        raise ValueError(
            f"{TABLES_DIR} holds the tables of datasets {', '.join(previous)} ({record}); this run's datasets "
            f"are {', '.join(wanted)}. Give this run its own tables folder with targets.name (e.g. --config "
            f"targets.name={'+'.join(wanted)}), or delete {TABLES_DIR} to replace them"
        )


check_tables_dir()


# The published numbers Table 1 quotes (tables.quoted): shipped with the workflow, so found from its folder, and
# given relative to the working directory as every other input, so that moving or copying a checkout (with its
# results/) reruns nothing ("Set of input files has changed" compares the paths).
PUBLISHED_NUMBERS = os.path.relpath(
    os.path.join(workflow.basedir, "workflow/resources/published.tsv")
)
RELEASED_TABLES_DIR = f"{TABLES_DIR}/{RELEASED_RUN}"  # the released checkpoints' tables (snakemake released)


def table_files(stem, folder=TABLES_DIR):
    """The .md, .csv, .tex and .html files of one table in `folder` (the .html page is what the report shows)."""
    return [f"{folder}/{stem}.{ext}" for ext in ("md", "csv", "tex", "html")]


def per_dataset_table_files(folder=TABLES_DIR, datasets=None):
    """Per dataset (default: the target datasets): the per-sequence and official-measures tables and the
    per-sequence bar chart."""
    files = []
    for d in evaluated_datasets() if datasets is None else datasets:
        files += table_files(f"per-sequence-{d}", folder) + table_files(
            f"measures-{d}", folder
        )
        files.append(f"{folder}/per-sequence-{d}.png")
    return files


def ablation_files():
    """The table files of every ablation table (tables.ablations)."""
    return [
        path
        for group in config["tables"]["ablations"]
        for path in table_files(f"ablation-{group}")
    ]


def all_tables(wildcards=None):
    """The tables of the evaluated target datasets; none when no target dataset has ground truth."""
    if not evaluated_datasets():
        return []
    return [
        f"{TABLES_DIR}/summary.md",
        *table_files("table1"),
        *ablation_files(),
        *per_dataset_table_files(),
    ]


localrules:
    all,
    paper,
    released,
    all_frames,
    all_flow,
    all_tracks,
    all_models,
    all_masks,
    all_pictures,
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
    return int(model_section(wildcards)["backbone"]["name"] != "small")
