"""Paper-style tables from per-frame metric TSVs (METHOD.md §9 step 5, §10).

    python -m lrtl.tables --metrics A.tsv B.tsv ... --params '<json>' --out-dir results/tables

Aggregation per dataset (`datasets.<name>` in params): keep the frames scored under `frame_rule`
(lrtl.metrics.scored_frames), then
- `per_sequence` (DAVIS): mean over sequences of the per-sequence mean;
- `per_frame` (SegTrackv2, FBMS): mean over all scored frames of all sequences;
reported x100. The official DAVIS measures (mean, recall, decay of J and F) are per-sequence statistics
averaged over sequences, as the official DAVIS evaluation does.

Files written into --out-dir (every one for every configured dataset / ablation, even when empty):
    table1.{md,csv,tex,html}                runs + released checkpoints + no-learning baselines + quoted published
                                            numbers (--published), each row's `source` saying which (SOURCES)
    ablation-{group}.{md,csv,tex,html}      one per entry of params.ablations
    per-sequence-{dataset}.{md,csv,tex,html}  per-sequence J (and F) of every run
    per-sequence-{dataset}.png              bar chart of per-sequence J
    measures-{dataset}.{md,csv,tex,html}    official DAVIS measures J/F mean, recall, decay per run
    summary.md                              the headline numbers in a few lines
    .targets.json                           the datasets these tables are of: a later run over other datasets
                                            into the same folder stops instead of overwriting them
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lrtl import metrics
from lrtl.cli import StageError, json_params, run_stage
from lrtl.params import Params
from lrtl.pictures import bar_chart
from lrtl.stores import atomic_path, write_text

log = logging.getLogger(__name__)

AGGREGATES = ("per_sequence", "per_frame")
BASELINE_RUN = "baseline"  # run name of lrtl.baseline's masks
TRACK_BASELINE_RUN = "baseline_tracks"  # run name of lrtl.track_baseline's masks
ALL_FOREGROUND = "all-foreground"  # pseudo-run from the j_all_foreground column
QUOTED_DATASETS = ("davis2016", "segtrackv2", "fbms59")
RELEASED_METHOD = "LRTL released checkpoint, scored by lrtl"  # Table 1 method of the released checkpoints' rows
# Table 1 `source` of a computed row, by the checkpoint rule lrtl.infer records in its masks
SOURCES = {
    "last": "ours, last checkpoint",
    "best_on_gt": "ours, GT-selected best checkpoint (a diagnostic)",
    "released": "released checkpoint (karazijal/lrtl), scored by lrtl",
}
NO_LEARNING = "ours, no learning"
MISSING = "–"

QUOTED_SOURCE = "quoted"  # Table 1 `source` of the published numbers
PERCENT = 100  # tables report J and F x100
DECIMALS = 1  # decimals of the numbers in the .md and .tex tables
CELL_FORMAT = f".{DECIMALS}f"
CSV_FORMAT = "%.2f"  # numbers in the .csv tables
# The published numbers (--published, shipped as workflow/resources/published.tsv, METHOD.md §10): one row per
# method, dataset and metric (J or F, x100); `notes` and `status` make up the Table 1 status of the method, `source`
# says where each number was copied from. Not produced by this pipeline.
PUBLISHED_COLUMNS = ("method", "dataset", "metric", "value", "notes", "source", "status")
PUBLISHED_METRICS = ("J", "F")


@dataclasses.dataclass(frozen=True)
class DatasetTableParams(Params):
    label: str  # column heading, e.g. DAVIS16
    aggregate: str  # per_sequence | per_frame
    frame_rule: str  # reference | official | annotated (lrtl.metrics.scored_frames)
    boundary: bool  # also show boundary F in Table 1 and ablations (DAVIS-like datasets)
    quoted_as: str | None  # davis2016 | segtrackv2 | fbms59 | null: published column quoted next to it


@dataclasses.dataclass(frozen=True)
class AblationParams(Params):
    title: str  # caption of the ablation table
    runs: tuple  # run names, in row order


@dataclasses.dataclass(frozen=True)
class TablesParams(Params):
    datasets: dict  # dataset name -> DatasetTableParams mapping (column order = mapping order)
    ablations: dict  # group name -> AblationParams mapping
    quoted: bool  # add the published numbers (--published) to Table 1


def parse_params(
    mapping: Mapping[str, Any],
) -> tuple[TablesParams, dict[str, DatasetTableParams], dict[str, AblationParams]]:
    params = TablesParams.from_mapping(mapping, "tables")
    datasets = {
        name: DatasetTableParams.from_mapping(value, f"tables.datasets.{name}")
        for name, value in params.datasets.items()
    }
    for name, value in datasets.items():
        if value.aggregate not in AGGREGATES:
            raise ValueError(
                f"tables.datasets.{name}.aggregate must be one of {AGGREGATES}, not {value.aggregate!r}"
            )
        if value.frame_rule not in metrics.FRAME_RULES:
            raise ValueError(f"tables.datasets.{name}.frame_rule must be one of {metrics.FRAME_RULES}")
        if value.quoted_as not in (None, *QUOTED_DATASETS):
            raise ValueError(f"tables.datasets.{name}.quoted_as must be null or one of {QUOTED_DATASETS}")
    ablations = {
        name: AblationParams.from_mapping(value, f"tables.ablations.{name}")
        for name, value in params.ablations.items()
    }
    return params, datasets, ablations


# --------------------------------------------------------------------------- aggregation


METRICS_HEADER = ("dataset", "sequence", "run", "frame", "j", "f")  # columns lrtl.tables needs
TARGETS_RECORD = ".targets.json"  # in --out-dir: which datasets its tables are of


def read_metrics(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-frame TSVs written by lrtl.evaluate."""
    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise StageError(
                f"{path}: no per-frame metrics here; produce it with the pipeline (snakemake {path})"
            )
        fix = f"delete it and rebuild it with the pipeline (snakemake {path})"
        try:
            table = pd.read_csv(path, sep="\t", dtype={"dataset": str, "sequence": str, "run": str})
        except pd.errors.EmptyDataError as err:
            raise StageError(f"{path}: empty file, not a per-frame metrics TSV of lrtl.evaluate (it starts with "
                             f"the header {' '.join(METRICS_HEADER)} ...); {fix}") from err
        except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
            raise StageError(f"{path}: not a readable per-frame metrics TSV ({err}); {fix}") from err
        missing = [c for c in METRICS_HEADER if c not in table.columns]
        if missing:
            raise StageError(f"{path}: not a per-frame metrics TSV of lrtl.evaluate: no header with the columns "
                             f"{', '.join(missing)} (found {', '.join(map(str, table.columns[:6]))}); {fix}")
        frames.append(table)
    if not frames:
        raise StageError("no --metrics files given")
    table = pd.concat(frames, ignore_index=True)
    for column in [c for c in table.columns if c.startswith("scored_")]:
        table[column] = table[column].astype(str).str.lower().isin(["true", "1"])
    return table


def read_published(path: str | Path) -> pd.DataFrame:
    """The published numbers to quote (PUBLISHED_COLUMNS), checked; `value` as float."""
    fix = "fix it, or restore the shipped workflow/resources/published.tsv from git"
    if not Path(path).is_file():
        raise StageError(f"{path}: no published-numbers TSV here (--published); {fix}")
    try:
        published = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise StageError(f"{path}: not a readable published-numbers TSV ({err}); {fix}") from err
    missing = [c for c in PUBLISHED_COLUMNS if c not in published.columns]
    if missing:
        raise StageError(f"{path}: not a published-numbers TSV: no header with the columns {', '.join(missing)} "
                         f"(it starts with the header {' '.join(PUBLISHED_COLUMNS)}); {fix}")
    values = pd.to_numeric(published["value"], errors="coerce")
    bad = published[values.isna() | (published["method"].str.strip() == "")
                    | ~published["dataset"].isin(QUOTED_DATASETS) | ~published["metric"].isin(PUBLISHED_METRICS)
                    | published.duplicated(["method", "dataset", "metric"])]
    if not bad.empty:
        shown = bad[["method", "dataset", "metric", "value"]].itertuples(False)
        rows = "; ".join(" | ".join(map(str, row)) for row in shown)
        raise StageError(f"{path}: bad rows ({rows}): each row needs a method, a dataset of "
                         f"{', '.join(QUOTED_DATASETS)}, a metric of {', '.join(PUBLISHED_METRICS)} and a number, "
                         f"once per method, dataset and metric; {fix}")
    return published.assign(value=values)


def scored(table: pd.DataFrame, rule: str) -> pd.DataFrame:
    return table[table[f"scored_{rule}"]]


def aggregate(table: pd.DataFrame, column: str, how: str) -> float:
    """x100 mean of `column` over scored rows: per_frame = over rows; per_sequence = over sequence means."""
    if table.empty:
        return math.nan
    if how == "per_frame":
        return PERCENT * float(table[column].mean())
    return PERCENT * float(table.groupby("sequence")[column].mean().mean())


def all_foreground_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of the "all foreground" pseudo-run, one per (dataset, sequence, frame)."""
    rows = table.drop_duplicates(["dataset", "sequence", "frame"]).copy()
    rows["run"] = ALL_FOREGROUND
    rows["j"] = rows["j_all_foreground"]
    rows["f"] = np.nan
    rows[["seed", "compat", "checkpoint_rule"]] = None
    return rows


def run_order(table: pd.DataFrame) -> list[str]:
    """Learned runs in order of appearance, then the baselines."""
    runs = list(dict.fromkeys(table["run"].astype(str)))
    fixed = (BASELINE_RUN, TRACK_BASELINE_RUN, ALL_FOREGROUND)
    learned = [r for r in runs if r not in fixed]
    return learned + [r for r in fixed if r in runs]


def provenance(table: pd.DataFrame, run: str) -> dict[str, str]:
    rows = table[table["run"] == run]

    def values(column: str) -> str:
        found = sorted({_plain(v) for v in rows[column].dropna()} if column in rows else set())
        return ", ".join(found) if found else MISSING

    return {"seed": values("seed"), "compat": values("compat"), "checkpoint": values("checkpoint_rule")}


def _plain(value: Any) -> str:
    """0.0 -> '0' (seeds read back from TSVs with missing values are floats)."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def sequence_statistics(rows: pd.DataFrame, column: str) -> tuple[float, float, float]:
    """Mean over sequences of the official (mean, recall, decay) of `column`, each x100."""
    stats = [
        metrics.statistics(group.sort_values("frame")[column].to_numpy())
        for _, group in rows.groupby("sequence")
    ]
    if not stats:
        return math.nan, math.nan, math.nan
    return tuple(PERCENT * float(np.nanmean(values)) for values in zip(*stats, strict=True))


# --------------------------------------------------------------------------- tables


def results_columns(
    table: pd.DataFrame, run: str, datasets: Mapping[str, DatasetTableParams]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, rule in datasets.items():
        rows = scored(table[(table["dataset"] == name) & (table["run"] == run)], rule.frame_rule)
        out[f"{rule.label} J"] = aggregate(rows, "j", rule.aggregate)
        if rule.boundary:
            out[f"{rule.label} F"] = aggregate(rows, "f", rule.aggregate)
    return out


def row_source(table: pd.DataFrame, run: str) -> tuple[str, str]:
    """(method, source) of a computed Table 1 row: the run name, labelled by the checkpoint rule of its masks
    (SOURCES); the released checkpoints' rows read RELEASED_METHOD."""
    if run in (BASELINE_RUN, TRACK_BASELINE_RUN, ALL_FOREGROUND):
        return run, NO_LEARNING
    rules = provenance(table, run)["checkpoint"].split(", ")
    method = RELEASED_METHOD if rules == ["released"] else run
    return method, "; ".join(SOURCES.get(rule, "ours") for rule in rules)


def table1(
    table: pd.DataFrame, datasets: Mapping[str, DatasetTableParams], published: pd.DataFrame | None
) -> pd.DataFrame:
    """Computed rows (runs, released checkpoints, no-learning baselines), then the published rows if given."""
    rows = []
    for run in run_order(table):
        method, source = row_source(table, run)
        rows.append(
            {
                "method": method,
                "source": source,
                **provenance(table, run),
                **results_columns(table, run, datasets),
                "status": "computed by lrtl",
            }
        )
    if published is not None:
        rows += quoted_rows(published, datasets)
    return pd.DataFrame(rows)


def quoted_rows(published: pd.DataFrame, datasets: Mapping[str, DatasetTableParams]) -> list[dict[str, Any]]:
    """One Table 1 row per published method, in file order; its status is its status(es) then its notes."""
    rows = []
    for method, entries in published.groupby("method", sort=False):
        row = {"method": method, "source": QUOTED_SOURCE, "seed": MISSING, "compat": MISSING, "checkpoint": MISSING}
        for rule in datasets.values():
            row.update(quoted_columns(entries, rule))
        row["status"] = "; ".join([*dict.fromkeys(entries["status"]), *dict.fromkeys(entries["notes"])])
        rows.append(row)
    return rows


def quoted_columns(entries: pd.DataFrame, rule: DatasetTableParams) -> dict[str, float]:
    """The J (and F) columns of one dataset for one published method: its number for `quoted_as`, else NaN."""
    out = {}
    for metric in [m for m in PUBLISHED_METRICS if rule.boundary or m == "J"]:
        match = entries.loc[(entries["dataset"] == rule.quoted_as) & (entries["metric"] == metric), "value"]
        out[f"{rule.label} {metric}"] = float(match.iloc[0]) if len(match) else math.nan
    return out


def ablation_table(
    table: pd.DataFrame, datasets: Mapping[str, DatasetTableParams], ablation: AblationParams
) -> pd.DataFrame:
    rows = []
    for run in ablation.runs:
        present = bool((table["run"] == run).any())
        rows.append(
            {
                "run": run,
                **provenance(table, run),
                **results_columns(table, run, datasets),
                "status": "computed by lrtl" if present else "not run (add it to targets.runs)",
            }
        )
    return pd.DataFrame(rows)


def per_sequence_table(table: pd.DataFrame, name: str, rule: DatasetTableParams) -> pd.DataFrame:
    rows = scored(table[table["dataset"] == name], rule.frame_rule)
    runs = run_order(rows) if not rows.empty else []
    sequences = sorted(rows["sequence"].unique()) if not rows.empty else []
    out = []
    for sequence in sequences:
        seq_rows = rows[rows["sequence"] == sequence]
        entry: dict[str, Any] = {
            "sequence": sequence,
            "frames": int(seq_rows.drop_duplicates("frame").shape[0]),
        }
        for run in runs:
            run_rows = seq_rows[seq_rows["run"] == run]
            entry[f"{run} J"] = PERCENT * run_rows["j"].mean() if len(run_rows) else math.nan
            if run != ALL_FOREGROUND:
                entry[f"{run} F"] = PERCENT * run_rows["f"].mean() if len(run_rows) else math.nan
        out.append(entry)
    if out:
        entry = {
            "sequence": f"{name} ({rule.aggregate.replace('_', '-')} mean)",
            "frames": int(sum(e["frames"] for e in out)),
        }
        for run in runs:
            run_rows = rows[rows["run"] == run]
            entry[f"{run} J"] = aggregate(run_rows, "j", rule.aggregate)
            if run != ALL_FOREGROUND:
                entry[f"{run} F"] = aggregate(run_rows, "f", rule.aggregate)
        out.append(entry)
    return pd.DataFrame(out, columns=None if out else ["sequence", "frames"])


def measures_table(table: pd.DataFrame, name: str, rule: DatasetTableParams) -> pd.DataFrame:
    rows = scored(table[table["dataset"] == name], rule.frame_rule)
    out = []
    for run in run_order(rows) if not rows.empty else []:
        if run == ALL_FOREGROUND:
            continue
        run_rows = rows[rows["run"] == run]
        j_mean, j_recall, j_decay = sequence_statistics(run_rows, "j")
        f_mean, f_recall, f_decay = sequence_statistics(run_rows, "f")
        out.append(
            {
                "run": run,
                "J&F mean": (j_mean + f_mean) / 2,
                "J mean": j_mean,
                "J recall": j_recall,
                "J decay": j_decay,
                "F mean": f_mean,
                "F recall": f_recall,
                "F decay": f_decay,
                "sequences": int(run_rows["sequence"].nunique()),
            }
        )
    return pd.DataFrame(out, columns=None if out else ["run"])


# --------------------------------------------------------------------------- formats


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def to_markdown(frame: pd.DataFrame) -> str:
    """A pipe table (pandas + tabulate): numbers right-aligned with CELL_FORMAT, missing values as MISSING."""
    if frame.empty:
        return "_no results_\n"
    numeric = [_numeric(frame[c]) for c in frame.columns]
    cells = frame.astype(object).where(frame.notna(), None)
    for column, is_numeric in zip(frame.columns, numeric, strict=True):
        if not is_numeric:  # text as written ('|' escaped, as in a pipe table), never parsed as a number
            cells[column] = cells[column].map(lambda v: v if v is None else str(v).replace("|", r"\|"))
    return cells.to_markdown(
        index=False,
        floatfmt=CELL_FORMAT,
        missingval=MISSING,
        colalign=["right" if n else "left" for n in numeric],
        disable_numparse=[i for i, n in enumerate(numeric) if not n],
    ) + "\n"


# LaTeX specials in free text (captions; pandas escapes the cells and headers itself)
TEX_ESCAPES = str.maketrans({"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                             "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}"})


def to_latex(frame: pd.DataFrame, caption: str) -> str:
    """A booktabs table (pandas Styler; needs \\usepackage{booktabs})."""
    if frame.empty:
        return f"% {caption}: no results\n"
    styler = (
        frame.style.hide(axis="index")
        .format(precision=DECIMALS, na_rep=MISSING, escape="latex")
        .format_index(escape="latex", axis="columns")
    )
    return styler.to_latex(
        caption=caption.translate(TEX_ESCAPES),
        column_format="".join("r" if _numeric(frame[c]) else "l" for c in frame.columns),
        hrules=True,
        environment="table",
        position="t",
        position_float="centering",
    )


# A page of its own (Snakemake's HTML report shows .html results inline, and .md/.csv only as downloads): light
# background, since the report's own background is dark.
HTML_STYLE = """
body { background: #fff; color: #111; font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 0.25em 0.6em; border-bottom: 1px solid #ddd; text-align: left; vertical-align: top; }
th { border-bottom: 2px solid #555; white-space: nowrap; }
td.text { max-width: 24em; }
td.num, th.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.notes { color: #444; max-width: 60em; }
code { background: #f2f2f2; padding: 0 0.2em; }
"""


def _inline_markdown(text: str) -> str:
    """`code` and **bold** of the notes' markdown as HTML (the text itself escaped)."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def notes_html(markdown: str) -> str:
    """The notes under a table (paragraphs and two-level '- ' lists of protocol_note) as HTML."""
    out: list[str] = []
    depth = 0
    for line in markdown.splitlines():
        item = re.match(r"^( *)- (.*)$", line)
        level = len(item.group(1)) // 2 + 1 if item else 0
        while depth < level:
            out.append("<ul>")
            depth += 1
        while depth > level:
            out.append("</ul>")
            depth -= 1
        if item:
            out.append(f"<li>{_inline_markdown(item.group(2))}</li>")
        elif line.strip():
            out.append(f"<p>{_inline_markdown(line)}</p>")
    out.extend("</ul>" for _ in range(depth))
    return "\n".join(out)


def to_html(frame: pd.DataFrame, title: str, preamble: str) -> str:
    """A self-contained page: the title, the table (numbers as in the .md table) and the notes under it."""
    if frame.empty:
        body = "<p><i>no results</i></p>"
    else:
        numeric = [_numeric(frame[c]) for c in frame.columns]
        align = ['class="num"' if n else 'class="text"' for n in numeric]
        head = "".join(
            f"<th {a}>{html.escape(str(c))}</th>" for c, a in zip(frame.columns, align, strict=True)
        )
        rows = []
        for values in frame.itertuples(index=False):
            cells = []
            for value, is_numeric, a in zip(values, numeric, align, strict=True):
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    text = MISSING
                elif is_numeric and isinstance(value, float | np.floating):
                    text = format(value, CELL_FORMAT)  # counts (ints) stay as they are, as in the .md table
                else:
                    text = html.escape(str(value))
                cells.append(f"<td {a}>{text}</td>")
            rows.append(f"<tr>{''.join(cells)}</tr>")
        body = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"
    return (
        f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{HTML_STYLE}</style>\n</head>\n<body>\n<h2>{html.escape(title)}</h2>\n{body}\n"
        f'<div class="notes">\n{notes_html(preamble)}\n</div>\n</body>\n</html>\n'
    )


def write_table(out_dir: Path, stem: str, frame: pd.DataFrame, title: str, preamble: str) -> list[Path]:
    paths = [out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "tex", "html")]
    write_text(paths[0], f"# {title}\n\n{preamble}\n\n{to_markdown(frame)}")
    with atomic_path(paths[1]) as tmp:
        frame.to_csv(tmp, index=False, float_format=CSV_FORMAT)
    write_text(paths[2], to_latex(frame, title))
    write_text(paths[3], to_html(frame, title, preamble))
    return paths


def missing_annotations_warning(table: pd.DataFrame) -> str:
    """A warning naming the sequences scored without some of their masks (lrtl.evaluate's annotations_missing:
    datasets.<d>.missing_annotations: warn), or "" when every frame their layout annotates had its mask."""
    if table.empty or "annotations_missing" not in table.columns:
        return ""
    counts = table.groupby(["dataset", "sequence"])["annotations_missing"].max().fillna(0)
    gaps = counts[counts > 0]
    if gaps.empty:
        return ""
    listed = ", ".join(f"{dataset}/{sequence} ({int(n)} frames)" for (dataset, sequence), n in gaps.items())
    return (f"**Warning: missing annotations.** {listed}: masks are missing for frames that the dataset's layout "
            "annotates, so these sequences are scored on fewer frames than they have (allowed by "
            "datasets.<name>.missing_annotations: warn; the frames are listed in the prepare_frames logs). Restore "
            "the masks before comparing with published numbers.")


def protocol_note(datasets: Mapping[str, DatasetTableParams]) -> str:
    lines = [
        "Numbers are J (region IoU) x100, and F (boundary F-measure, DAVIS definition) x100 where shown.",
        "- **Ours** (`source` = ours, ...): computed by lrtl from its own masks; `method` is the run name, "
        "with its training `seed`, `compat` mode and the checkpoint rule: `last` (the final checkpoint, no GT "
        "used for model selection; every result) or `best_on_gt` (the best validation J, selected on labels: "
        "a diagnostic). `baseline` is the no-learning flow-threshold baseline (lrtl.baseline); "
        "`baseline_tracks` clusters the point tracks by residual motion (lrtl.track_baseline); "
        "`all-foreground` marks every pixel as foreground.",
        f"- **Released** (`source` = {SOURCES['released']}): `{RELEASED_METHOD}`, the authors' trained "
        "checkpoint of each dataset (karazijal/lrtl README: davis_alt_best, stv2_best, fbms_best; the reference "
        "picked them on ground truth), converted by lrtl.convert and scored by this pipeline's inference and "
        "evaluation (checkpoint rule `released`).",
        f"- **Quoted** (`source` = {QUOTED_SOURCE}): published numbers copied from METHOD.md §10, NOT produced by "
        "this pipeline; `status` says how well each number is sourced (confirmed / secondary / unconfirmed).",
        "- Per frame: the K masks are merged to 2 without labels, upsampled to GT resolution, thresholded at "
        "0.5, and the better of the 2 against GT is kept (METHOD.md §9).",
        "- A frame with empty GT and an empty prediction scores J = 1 (official DAVIS), or J = 0 in runs with "
        "`compat` = reference, as the reference evaluation does (METHOD.md §11 item 10).",
        "- Aggregation per dataset:",
    ]
    for name, rule in datasets.items():
        how = (
            "mean over sequences of the per-sequence mean"
            if rule.aggregate == "per_sequence"
            else "mean over all scored frames"
        )
        lines.append(f"  - {rule.label} (`{name}`): {how}; frames scored by the `{rule.frame_rule}` rule.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- stage


def run_tables(
    *,
    metrics_files: Sequence[str | Path],
    published_file: str | Path,
    out_dir: str | Path,
    params: Mapping[str, Any],
) -> list[Path]:
    """Every table of the module docstring into out_dir; Table 1 quotes published_file when params.quoted."""
    try:
        settings, datasets, ablations = parse_params(params)
    except ValueError as err:
        raise StageError(str(err)) from err
    table = read_metrics(metrics_files)
    unknown = sorted(set(table["dataset"].dropna()) - set(datasets))
    if unknown:
        raise StageError(
            f"metrics of dataset(s) {unknown} but tables.datasets has only {sorted(datasets)}; "
            f"add them to the tables params"
        )
    if not table.empty:
        table = pd.concat([table, all_foreground_rows(table)], ignore_index=True)
    out_dir = Path(out_dir)
    claim_out_dir(out_dir, list(datasets))
    warning = missing_annotations_warning(table)
    if warning:
        log.warning("%s", warning)
    note = "\n\n".join(part for part in (warning, protocol_note(datasets)) if part)
    written: list[Path] = []
    main_table = table1(table, datasets, read_published(published_file) if settings.quoted else None)
    written += write_table(
        out_dir, "table1", main_table, "Table 1: unsupervised video object segmentation", note
    )
    for name, ablation in ablations.items():
        written += write_table(
            out_dir,
            f"ablation-{name}",
            ablation_table(table, datasets, ablation),
            f"Ablation: {ablation.title}",
            note,
        )
    for name, rule in datasets.items():
        per_seq = per_sequence_table(table, name, rule)
        written += write_table(
            out_dir,
            f"per-sequence-{name}",
            per_seq,
            f"Per-sequence results: {rule.label}",
            note + "\n\nThe last row is the dataset aggregate under its rule.",
        )
        written += write_table(
            out_dir,
            f"measures-{name}",
            measures_table(table, name, rule),
            f"Official DAVIS measures: {rule.label}",
            note + "\n\nMean, recall (fraction of frames > 0.5) and decay (first minus last "
            "quarter) of J and F per sequence, averaged over sequences (official DAVIS "
            "evaluation), on the scored frames.",
        )
        chart = {}
        for column in [c for c in per_seq.columns if c.endswith(" J")]:
            run = column[: -len(" J")]
            chart[run] = {row["sequence"]: row[column] for _, row in per_seq.iloc[:-1].iterrows()}
        path = out_dir / f"per-sequence-{name}.png"
        bar_chart(path, chart, f"{rule.label}: per-sequence J ({rule.frame_rule} frames)", "J x100")
        written.append(path)
    summary = out_dir / "summary.md"
    write_text(summary, summary_text(main_table, datasets, warning))
    written.append(summary)
    log.info("wrote %d files to %s", len(written), out_dir)
    return written


def claim_out_dir(out_dir: Path, datasets: Sequence[str]) -> None:
    """Record in out_dir which datasets its tables are of; refuse to overwrite the tables of other datasets."""
    record = out_dir / TARGETS_RECORD
    if record.is_file():
        try:
            previous = json.loads(record.read_text())["datasets"]
        except (ValueError, KeyError, TypeError) as err:
            raise StageError(f"{record}: unreadable record of the datasets of {out_dir} ({err}); "
                             f"delete it if the tables there may be replaced") from err
        if sorted(previous) != sorted(datasets):
            raise StageError(
                f"{out_dir} holds the tables of datasets {', '.join(previous)} (recorded in {record}); this "
                f"run's datasets are {', '.join(datasets)}. Give this run its own tables folder with targets.name "
                f"(e.g. --config targets.name={'+'.join(datasets)}), or delete {out_dir} to replace them"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(record, json.dumps({"datasets": list(datasets)}, indent=2) + "\n")


def summary_text(main_table: pd.DataFrame, datasets: Mapping[str, DatasetTableParams], warning: str = "") -> str:
    ours = main_table[main_table["source"] != QUOTED_SOURCE] if not main_table.empty else main_table
    lines = [
        "# Summary",
        "",
        *([warning, ""] if warning else []),
        "J x100 of every row computed by lrtl (our runs and any released checkpoints; `source` says which). "
        "See table1.md for quoted published numbers and the protocol.",
        "",
    ]
    columns = ["method", "source", "seed", *[c for c in ours.columns if c.endswith(" J")]] if not ours.empty else []
    lines.append(to_markdown(ours[columns]) if columns else "_no results_\n")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.tables", description=__doc__.split("\n")[0])
    parser.add_argument("--metrics", required=True, nargs="+", help="per-frame TSVs written by lrtl.evaluate")
    parser.add_argument(
        "--params",
        required=True,
        type=json_params,
        help="JSON: {datasets: {name: {label, aggregate, frame_rule, boundary, quoted_as}}, "
        "ablations: {group: {title, runs}}, quoted: bool}",
    )
    parser.add_argument("--out-dir", required=True, help="folder for the tables (results/tables[/<targets.name>])")
    parser.add_argument(
        "--published",
        required=True,
        help="TSV of the published numbers Table 1 quotes (read when params.quoted), with the columns "
        f"{', '.join(PUBLISHED_COLUMNS)}: workflow/resources/published.tsv",
    )

    def body(args: argparse.Namespace) -> None:
        run_tables(
            metrics_files=args.metrics, published_file=args.published, out_dir=args.out_dir, params=args.params
        )

    run_stage("tables", body, parser, argv)


if __name__ == "__main__":
    main()
