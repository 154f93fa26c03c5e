"""The shipped sequence sheets: valid rows, unique names, the paper's splits, and the config's splits exist."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import yaml

from lrtl import datasets
from lrtl.cli import StageError

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
ROW_SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "sequences.schema.yaml").read_text())
WITH_SHEET = sorted(name for name, spec in CONFIG["datasets"].items() if spec["sheet"])


def rows(name: str) -> list[dict]:
    sheet = datasets.read_sheet(REPO / CONFIG["datasets"][name]["sheet"])
    return [{"sequence": r.sequence, "split": r.split, "n_frames": None if pd.isna(r.n_frames) else int(r.n_frames)}
            for r in sheet.itertuples(index=False)]


def test_the_paper_datasets_have_sheets() -> None:
    assert {"davis2016", "segtrackv2", "fbms59"} <= set(WITH_SHEET)


@pytest.mark.parametrize("name", WITH_SHEET)
def test_rows_validate_and_are_unique(name: str) -> None:
    found = rows(name)
    assert found
    for row in found:
        jsonschema.validate(row, ROW_SCHEMA)
    names = [r["sequence"] for r in found]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("name", WITH_SHEET)
def test_configured_splits_exist_in_the_sheet(name: str) -> None:
    splits = {r["split"] for r in rows(name)}
    for key in ("train_splits", "eval_splits"):
        assert set(CONFIG["datasets"][name][key]) <= splits | {"all"}, key


def _by_split(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in rows(name):
        out.setdefault(row["split"], []).append(row["sequence"])
    return out


def test_davis2016_has_50_sequences_20_val() -> None:
    splits = _by_split("davis2016")
    assert len(splits["val"]) == 20 and len(splits["train"]) == 30


def test_segtrackv2_has_the_14_sequences_all_evaluated() -> None:
    splits = _by_split("segtrackv2")
    assert list(splits) == ["all"] and len(splits["all"]) == 14
    assert {"penguin", "bmx", "bird_of_paradise", "monkeydog"} <= set(splits["all"])
    assert CONFIG["datasets"]["segtrackv2"]["eval_splits"] == ["all"]


def test_fbms59_has_29_train_and_30_test_sequences_and_evaluates_the_test_split() -> None:
    splits = _by_split("fbms59")
    assert sorted(splits) == ["test", "train"]
    assert len(splits["train"]) == 29 and len(splits["test"]) == 30
    assert not set(splits["train"]) & set(splits["test"])
    assert "bear01" in splits["train"] and "tennis" in splits["test"]
    spec = CONFIG["datasets"]["fbms59"]
    assert spec["eval_splits"] == ["test"] and spec["evaluate"]["frame_rule"] == "annotated"
    assert spec["evaluate"]["aggregate"] == "per_frame"


def test_paper_overlay_targets_the_three_table1_datasets() -> None:
    paper = yaml.safe_load((REPO / "config.paper.yaml").read_text())
    assert paper["targets"]["datasets"] == ["davis2016", "segtrackv2", "fbms59"]
    assert CONFIG["targets"]["datasets"] == ["synthetic"]  # the default run stays on the synthetic set


def test_sheet_with_a_repeated_sequence_is_rejected_naming_it(tmp_path: Path) -> None:
    sheet = tmp_path / "s.tsv"
    sheet.write_text("sequence\tsplit\tn_frames\na\tall\t3\na\tall\t3\n")
    with pytest.raises(StageError, match=r"s\.tsv: sequences listed twice: a"):
        datasets.read_sheet(sheet)


def test_sheet_with_a_wrong_header_is_rejected_naming_the_header(tmp_path: Path) -> None:
    sheet = tmp_path / "s.tsv"
    sheet.write_text("name,split,frames\na,all,3\n")
    with pytest.raises(StageError, match=r"s\.tsv: columns .*sequence split n_frames"):
        datasets.read_sheet(sheet)
