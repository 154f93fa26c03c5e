"""lrtl.tables on hand-made per-frame TSVs: aggregation rules, frame rules, files and labelling."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from lrtl.evaluate import COLUMNS
from lrtl.tables import main as tables_main
from lrtl.tables import to_html
from tests.conftest import config_section

PUBLISHED = Path(__file__).resolve().parents[2] / "workflow" / "resources" / "published.tsv"

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


def frame_rows(dataset, sequence, run, js, n_frames, first_frame=2, seed=0, rule="last"):
    """Rows for frames first_frame, first_frame+1, ... with the given J (and F = J / 2)."""
    rows = []
    for offset, j in enumerate(js):
        frame = first_frame + offset
        rows.append({
            "dataset": dataset, "sequence": sequence, "run": run, "seed": seed, "compat": "fixed",
            "checkpoint_rule": rule, "frame": frame, "n_frames": n_frames, "j_0": j, "j_1": 0.0, "j": j,
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


def run(tmp_path, paths, params=PARAMS, published=PUBLISHED):
    out = tmp_path / "tables"
    tables_main(["--metrics", *map(str, paths), "--params", json.dumps(params), "--out-dir", str(out),
                 "--published", str(published)])  # fmt: skip
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
    assert full["source"] == "ours, last checkpoint" and str(full["seed"]) == "0" and full["checkpoint"] == "last"
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
        for ext in ("md", "csv", "tex", "html"):
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


def test_table1_labels_each_row_by_its_source(tmp_path, tsvs):
    """Quoted / ours (last) / ours (GT-selected best, a diagnostic) / released checkpoint, scored by lrtl."""
    extra = [
        write_tsv(tmp_path / f"{dataset}-{run}.tsv", frame_rows(dataset, "a", run, [0.75], 4, seed=seed, rule=rule))
        for dataset in DATASET_RULES
        for run, rule, seed in (("full_best", "best_on_gt", 0), ("released", "released", None))
    ]
    out = run(tmp_path, [*tsvs, *extra])
    table = pd.read_csv(out / "table1.csv").set_index("method")
    assert table.loc["full", "source"] == "ours, last checkpoint"
    assert table.loc["full_best", "source"] == "ours, GT-selected best checkpoint (a diagnostic)"
    released = table.loc["LRTL released checkpoint, scored by lrtl"]
    assert released["source"] == "released checkpoint (karazijal/lrtl), scored by lrtl"
    assert released["checkpoint"] == "released" and released["SEQ J"] == pytest.approx(75.0)
    assert table.loc["baseline", "source"] == "ours, no learning"
    assert (table.loc[table.index.str.startswith("LRTL (NeurIPS"), "source"] == "quoted").all()
    assert list(table.index[:3]) == ["full", "full_best", "LRTL released checkpoint, scored by lrtl"]
    md = (out / "table1.md").read_text()
    assert "davis_alt_best" in md and "`best_on_gt`" in md
    summary = (out / "summary.md").read_text()
    assert "LRTL released checkpoint, scored by lrtl" in summary and "| quoted |" not in summary


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


def test_quoted_rows_come_from_the_published_tsv(tmp_path, tsvs):
    """Table 1 quotes --published as it is: a changed number, a new method (with F) and a dropped one show."""
    published = pd.read_csv(PUBLISHED, sep="\t", dtype=str, keep_default_na=False)
    published.loc[published["method"].str.startswith("RCF") & (published["dataset"] == "davis2016"), "value"] = "12.3"
    published = published[~published["method"].str.startswith("DyStaB")]
    new = {"method": "New (2030)", "notes": "a note", "source": "a paper, Table 9", "status": "confirmed"}
    published = pd.concat([published, pd.DataFrame([{**new, "dataset": "davis2016", "metric": "J", "value": "55.5"},
                                                     {**new, "dataset": "davis2016", "metric": "F", "value": "44.4"}])])
    edited = tmp_path / "published.tsv"
    published.to_csv(edited, sep="\t", index=False)
    table = pd.read_csv(run(tmp_path, tsvs, published=edited) / "table1.csv")
    quoted = table[table["source"] == "quoted"].set_index("method")
    assert list(quoted.index) == list(dict.fromkeys(published["method"]))
    assert quoted.loc["RCF, all stages (CVPR 2023)", "SEQ J"] == pytest.approx(12.3)
    assert quoted.loc["RCF, all stages (CVPR 2023)", "FRM J"] == pytest.approx(69.9)
    assert quoted.loc["New (2030)", ["SEQ J", "SEQ F"]].tolist() == pytest.approx([55.5, 44.4])
    assert pd.isna(quoted.loc["New (2030)", "FRM J"]) and quoted.loc["New (2030)", "status"] == "confirmed; a note"


def test_without_quoted_numbers_the_published_tsv_is_not_read(tmp_path, tsvs):
    table = pd.read_csv(run(tmp_path, tsvs, dict(PARAMS, quoted=False), published=tmp_path / "absent.tsv")
                        / "table1.csv")  # fmt: skip
    assert "quoted" not in set(table["source"])


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, r"no published-numbers TSV here \(--published\)"),
     ("", r"not a readable published-numbers TSV"),
     ("method\tdataset\tvalue\nGWM\tdavis2016\t79.5\n", r"no header with the columns metric, notes, source, status"),
     ("method\tdataset\tmetric\tvalue\tnotes\tsource\tstatus\nGWM\tdavis2016\tJ\t7g.5\tn\ts\tst\n",
      r"bad rows \(GWM \| davis2016 \| J \| 7g\.5\)"),
     ("method\tdataset\tmetric\tvalue\tnotes\tsource\tstatus\nGWM\tdavis\tJ\t79.5\tn\ts\tst\n",
      r"bad rows \(GWM \| davis \| J \| 79\.5\)")],
    ids=["missing", "empty", "columns", "value", "dataset"],
)
def test_missing_or_garbled_published_tsv_names_the_file(tmp_path, tsvs, capsys, content, expected):
    bad = tmp_path / "published.tsv"
    if content is not None:
        bad.write_text(content)
    with pytest.raises(SystemExit):
        run(tmp_path, tsvs, published=bad)
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{bad}: " in err
    assert re.search(expected, err), err
def test_track_baseline_is_a_no_learning_row_after_the_learned_runs(tmp_path, tsvs):
    extra = write_tsv(tmp_path / "seqwise-a-tracks.tsv",
                      frame_rows("seqwise", "a", "baseline_tracks", [0.75], 4, seed=None))  # fmt: skip
    table = pd.read_csv(run(tmp_path, [*tsvs, extra]) / "table1.csv")
    ours = table[table["source"] != "quoted"]["method"].tolist()
    assert ours == ["full", "baseline", "baseline_tracks", "all-foreground"]
    row = table[table["method"] == "baseline_tracks"].iloc[0]
    assert row["source"] == "ours, no learning" and row["SEQ J"] == pytest.approx(75.0)


class _Cells(HTMLParser):
    """The text of every <th>/<td> of a page, row by row."""

    def __init__(self):
        super().__init__()
        self.rows, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("th", "td"):
            self.rows[-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def test_html_tables_hold_the_csv_numbers_as_the_markdown_shows_them(tmp_path, tsvs):
    """The .html page of a table (what Snakemake's report shows): same header and rows as the .csv, numbers with
    one decimal (counts as integers), missing values as a dash, and the protocol notes under it (text escaped)."""
    out = run(tmp_path, tsvs)
    for stem in ("table1", "per-sequence-framewise", "measures-seqwise"):
        csv = pd.read_csv(out / f"{stem}.csv", dtype=str, keep_default_na=False)
        page = (out / f"{stem}.html").read_text()
        cells = _Cells()
        cells.feed(page)
        assert cells.rows[0] == list(csv.columns)
        assert len(cells.rows) == len(csv) + 1
        for row, (_, expected) in zip(cells.rows[1:], csv.iterrows(), strict=True):
            for got, want in zip(row, expected, strict=True):
                if want == "":
                    assert got == "–"
                elif re.fullmatch(r"-?\d+\.\d+", want):
                    assert got == f"{float(want):.1f}", (stem, row)
                else:
                    assert got == want, (stem, row)
        assert "<li><b>Quoted</b>" in page and "NOT produced by this pipeline" in page
    assert "no results" in to_html(pd.DataFrame(), "Empty", "")
