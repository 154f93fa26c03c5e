"""config.yaml is the one source of defaults: it validates, has no duplicate keys, and every stage accepts it."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from snakemake.utils import update_config

from lrtl.baseline import BaselineParams
from lrtl.evaluate import EvaluateParams
from lrtl.flow import FlowParams
from lrtl.frames import FramesParams
from lrtl.infer import InferParams
from lrtl.params import ParamsError
from lrtl.pictures import PicturesParams
from lrtl.settings import RUN_SETTINGS, merge_settings, split_settings
from lrtl.synthetic import SyntheticParams
from lrtl.tracks import TracksParams
from lrtl.train_params import TrainParams, scaled_iterations

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects a key repeated in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node, deep=False):
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
        return super().construct_mapping(node, deep)


def load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=UniqueKeyLoader)


def merge(base: dict, override: dict) -> dict:
    """The workflow's merge of an overlay into config.yaml (Snakemake's own update_config)."""
    out = copy.deepcopy(base)
    update_config(out, copy.deepcopy(override))
    return out


CONFIG = load(REPO / "config.yaml")
OVERLAYS = [REPO / "config.paper.yaml", REPO / "tests" / "config.test.yaml",
            *sorted((REPO / "workflow" / "overlays").glob("*.yaml"))]


def test_config_validates_against_the_schema() -> None:
    jsonschema.validate(CONFIG, SCHEMA)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlays_validate_once_merged(overlay: Path) -> None:
    jsonschema.validate(merge(CONFIG, load(overlay)), SCHEMA)


def test_a_misspelt_key_is_rejected_by_the_schema_naming_it() -> None:
    bad = merge(CONFIG, {"tracks": {"chunk_sise": 4}})
    with pytest.raises(jsonschema.ValidationError, match="chunk_sise"):
        jsonschema.validate(bad, SCHEMA)


@pytest.mark.parametrize(
    ("section", "params"),
    [("synthetic", SyntheticParams), ("frames", FramesParams), ("flow", FlowParams), ("tracks", TracksParams),
     ("infer", InferParams), ("baseline", BaselineParams), ("evaluate", EvaluateParams)],
)
def test_every_stage_accepts_its_config_section(section: str, params: type) -> None:
    mapping = CONFIG[section]
    if section == "infer":  # infer.pictures is the draw_pictures rule's section
        mapping = {key: value for key, value in mapping.items() if key != "pictures"}
        PicturesParams.from_mapping(CONFIG["infer"]["pictures"], "infer.pictures")
    params.from_mapping(mapping, section)


@pytest.mark.parametrize("stage", sorted(RUN_SETTINGS))
def test_run_settings_name_config_keys_and_split_off_and_back(stage: str) -> None:
    section = CONFIG["train"]["defaults"] if stage == "train" else CONFIG[stage]
    result, settings = split_settings(stage, section)
    for dotted in RUN_SETTINGS[stage]:
        value = settings
        for part in dotted.split("."):
            value = value[part]  # every listed run setting is a key of config.yaml
    assert merge_settings(result, settings) == section
    with pytest.raises(ParamsError):
        merge_settings(section, settings)  # a key passed both ways is refused


@pytest.mark.parametrize("run", sorted(CONFIG["train"]["runs"]))
def test_every_training_run_is_complete_once_merged(run: str) -> None:
    TrainParams.from_mapping(merge(CONFIG["train"]["defaults"], CONFIG["train"]["runs"][run]), run)


def test_a_stage_rejects_an_unknown_key_naming_it() -> None:
    with pytest.raises(ParamsError, match="chunk_sise"):
        TracksParams.from_mapping({**CONFIG["tracks"], "chunk_sise": 4}, "tracks")


@pytest.mark.parametrize(("section", "params"), [("flow", FlowParams), ("tracks", TracksParams)])
def test_inactive_backend_sections_may_be_null_but_still_validate_when_given(section: str, params: type) -> None:
    mapping = copy.deepcopy(CONFIG[section])
    inactive = [key for key, value in mapping.items() if isinstance(value, dict) and key != mapping["backend"]]
    assert inactive  # the workflow nulls these (workflow/rules/common.smk: active_backend_only)
    parsed = params.from_mapping({**mapping, **dict.fromkeys(inactive)}, section)
    assert all(getattr(parsed, key) is None for key in inactive)
    assert getattr(parsed, mapping["backend"]) is not None
    bad = {**mapping, inactive[0]: {**mapping[inactive[0]], "typo": 1}}
    with pytest.raises(ParamsError, match="typo"):
        params.from_mapping(bad, section)


@pytest.mark.parametrize(
    ("iterations", "n_sequences", "for_sequences", "steps"),
    [
        (800, 4, 4, 800),  # as many sequences as the iterations were set for
        (800, 1, 4, 800),  # fewer: never shorter
        (800, 12, 4, 2400),  # three times as many: three times the steps, the same items per sequence
        (800, 5, 4, 1000),
        (300, 7, 3, 700),
        (10, 3, 2, 15),
        (10, 5, 3, 17),  # 16.67 rounded up: no sequence gets fewer items than the iterations promise
        (20000, 50, 0, 20000),  # 0: fixed (paper)
    ],
)
def test_iterations_scale_with_the_training_sequences_beyond_those_they_were_set_for(
    iterations: int, n_sequences: int, for_sequences: int, steps: int
) -> None:
    assert scaled_iterations(iterations, n_sequences, for_sequences) == steps
    items_per_sequence = steps * CONFIG["train"]["defaults"]["batch_items"] / n_sequences
    if for_sequences and n_sequences >= for_sequences:
        assert items_per_sequence >= iterations * CONFIG["train"]["defaults"]["batch_items"] / for_sequences


@pytest.mark.parametrize(("n_sequences", "for_sequences"), [(0, 4), (3, -1)])
def test_scaled_iterations_refuses_no_sequences_or_a_negative_count(n_sequences: int, for_sequences: int) -> None:
    with pytest.raises(ValueError, match="for_sequences >= 0 and n_sequences >= 1"):
        scaled_iterations(800, n_sequences, for_sequences)
