"""lrtl.tables on hand-made per-frame TSVs: aggregation rules, frame rules, files and labelling."""

import json
import re

import pandas as pd
import pytest

from lrtl.evaluate import COLUMNS
from lrtl.tables import main as tables_main
from tests.conftest import config_section

DATASET_RULES = {
    "seqwise": {"label": "SEQ", "aggregate": "per_sequence", "frame_rule": "reference", "boundary": True,
                "quoted_as": "davis2016"},
    "framewise": {"label": "FRM", "aggregate": "per_frame", "frame_rule": "annotated", "boundary": False,
                  "quoted_as": "fbms59"},
}  # fmt: skip
PARAMS = {  # as workflow/rules/common.smk tables_params_json builds it: per-dataset rules + the tables section
    "datasets": DATASET_RULES,
    **config_section("tables", quoted=True, ablations={"loss": {"title": "Loss terms", "runs": ["full", "flow_only"]}}),
}


def frame_rows(dataset, sequence, run, js, n_frames, first_frame=2, seed=0):
    """Rows for frames first_frame, first_frame+1, ... with the given J (and F = J / 2)."""
    rows = []
    for offset, j in enumerate(js):
        frame = first_frame + offset
        rows.append({
            "dataset": dataset, "sequence": sequence, "run": run, "seed": seed, "compat": "fixed",
            "checkpoint_rule": "last", "frame": frame, "n_frames": n_frames, "j_0": j, "j_1": 0.0, "j": j,
            "chosen": 0, "f": j / 2, "scored_reference": 2 <= frame <= n_frames - 2,
            "scored_official": 1 <= frame <= n_frames - 2, "scored_annotated": frame <= n_frames - 2,
            "gt_fraction": 0.25, "j_all_foreground": 0.25, "oracle_merge_do_not_use": 1.0,
        })  # fmt: skip
    return rows


def write_tsv(path, rows):
    pd.DataFrame(rows, columns=COLUMNS).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def tsvs(tmp_path):
    paths = []
    for dataset in DATASET_RULES:
        # sequence a: one scored frame with J = 1; sequence b: three scored frames with J = 0
        # (+ the last frame, never scored, with J = 1 to check the frame rule)
        paths.append(write_tsv(tmp_path / f"{dataset}-a.tsv", frame_rows(dataset, "a", "full", [1.0], 4)))
        paths.append(write_tsv(tmp_path / f"{dataset}-b.tsv",
                               frame_rows(dataset, "b", "full", [0.0, 0.0, 0.0, 1.0], 6)))  # fmt: skip
        paths.append(write_tsv(tmp_path / f"{dataset}-a-baseline.tsv",
                               frame_rows(dataset, "a", "baseline", [0.5], 4, seed=None)))  # fmt: skip
    return paths


def run(tmp_path, paths, params=PARAMS):
    out = tmp_path / "tables"
    tables_main(["--metrics", *map(str, paths), "--params", json.dumps(params), "--out-dir", str(out)])
    return out


def test_aggregation_rules_differ_as_computed_by_hand(tmp_path, tsvs):
    out = run(tmp_path, tsvs)
    table = pd.read_csv(out / "table1.csv")
    full = table[table["method"] == "full"].iloc[0]
    # per sequence: mean(1.0, mean(0, 0, 0)) = 0.5; per frame: mean(1, 0, 0, 0) = 0.25 (last frame excluded)
    assert full["SEQ J"] == pytest.approx(50.0)
    assert full["FRM J"] == pytest.approx(25.0)
    assert full["SEQ F"] == pytest.approx(25.0)
    assert "FRM F" not in table.columns
    assert full["source"] == "ours" and str(full["seed"]) == "0" and full["checkpoint"] == "last"
    baseline = table[table["method"] == "baseline"].iloc[0]
    assert baseline["source"] == "ours, no learning" and baseline["SEQ J"] == pytest.approx(50.0)
    allfg = table[table["method"] == "all-foreground"].iloc[0]
    assert allfg["SEQ J"] == pytest.approx(25.0) and allfg["FRM J"] == pytest.approx(25.0)
    quoted = table[table["source"] == "quoted"]
    assert len(quoted) >= 5
    rcf = quoted[quoted["method"].str.startswith("RCF")].iloc[0]
    assert float(rcf["SEQ J"]) == pytest.approx(80.9) and float(rcf["FRM J"]) == pytest.approx(69.9)


def test_all_files_are_written_and_labelled(tmp_path, tsvs):
    out = run(tmp_path, tsvs)
    for stem in ("table1", "ablation-loss", "per-sequence-seqwise", "per-sequence-framewise",
                 "measures-seqwise", "measures-framewise"):  # fmt: skip
        for ext in ("md", "csv", "tex"):
            assert (out / f"{stem}.{ext}").is_file(), f"{stem}.{ext}"
    assert (out / "per-sequence-seqwise.png").is_file() and (out / "summary.md").is_file()
    md = (out / "table1.md").read_text()
    assert "quoted" in md.lower() and "NOT produced by this pipeline" in md and "`last`" in md
    tex = (out / "table1.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and "all-foreground" in tex
    ablation = pd.read_csv(out / "ablation-loss.csv")
    assert ablation["run"].tolist() == ["full", "flow_only"]
    assert ablation.loc[1, "status"].startswith("not run")
    per_seq = pd.read_csv(out / "per-sequence-framewise.csv")
    assert per_seq["sequence"].tolist() == ["a", "b", "framewise (per-frame mean)"]
    assert per_seq["full J"].tolist() == pytest.approx([100.0, 0.0, 25.0])
    measures = pd.read_csv(out / "measures-seqwise.csv")
    assert measures.loc[measures["run"] == "full", "J mean"].item() == pytest.approx(50.0)
    assert "25.0" in (out / "summary.md").read_text()


def test_unknown_dataset_is_an_error(tmp_path, tsvs, capsys):
    params = dict(PARAMS, datasets={"seqwise": DATASET_RULES["seqwise"]})
    with pytest.raises(SystemExit):
        run(tmp_path, tsvs, params)
    assert "framewise" in capsys.readouterr().err


def test_bad_aggregate_is_an_error(tmp_path, tsvs):
    bad = {**DATASET_RULES, "seqwise": dict(DATASET_RULES["seqwise"], aggregate="per_video")}
    with pytest.raises(SystemExit):
        run(tmp_path, tsvs, dict(PARAMS, datasets=bad))


@pytest.mark.parametrize(
    ("content", "expected"),
    [("", r"empty file, not a per-frame metrics TSV.*dataset sequence run frame j f"),
     ("seqwise\ta\tfull\t2\t0.5\t0.2\n", r"no header with the columns dataset, sequence, run, frame, j, f")],
    ids=["empty", "headerless"],
)
def test_empty_or_headerless_metrics_name_the_file_and_the_fix(tmp_path, tsvs, capsys, content, expected):
    bad = tmp_path / "broken.tsv"
    bad.write_text(content)
    with pytest.raises(SystemExit):
        run(tmp_path, [*tsvs, bad])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"{bad}: " in err
    assert re.search(expected, err), err
    assert f"snakemake {bad}" in err


def test_tables_of_other_datasets_are_not_overwritten(tmp_path, tsvs, capsys):
    out = run(tmp_path, tsvs)
    before = (out / "table1.md").read_text()
    only_seqwise = dict(PARAMS, datasets={"seqwise": DATASET_RULES["seqwise"]})
    with pytest.raises(SystemExit):
        run(tmp_path, [p for p in tsvs if p.name.startswith("seqwise")], only_seqwise)
    err = capsys.readouterr().err
    assert f"{out} holds the tables of datasets seqwise, framewise" in err
    assert "targets.name" in err
    assert (out / "table1.md").read_text() == before
    run(tmp_path, tsvs)  # the same datasets again: replaced in place


def test_track_baseline_is_a_no_learning_row_after_the_learned_runs(tmp_path, tsvs):
    extra = write_tsv(tmp_path / "seqwise-a-tracks.tsv",
                      frame_rows("seqwise", "a", "baseline_tracks", [0.75], 4, seed=None))  # fmt: skip
    table = pd.read_csv(run(tmp_path, [*tsvs, extra]) / "table1.csv")
    ours = table[table["source"] != "quoted"]["method"].tolist()
    assert ours == ["full", "baseline", "baseline_tracks", "all-foreground"]
    row = table[table["method"] == "baseline_tracks"].iloc[0]
    assert row["source"] == "ours, no learning" and row["SEQ J"] == pytest.approx(75.0)
