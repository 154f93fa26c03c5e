"""config.yaml is the one source of defaults: it validates, has no duplicate keys, and every stage accepts it."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from lrtl.baseline import BaselineParams
from lrtl.evaluate import EvaluateParams
from lrtl.flow import FlowParams
from lrtl.frames import FramesParams
from lrtl.infer import InferParams
from lrtl.params import ParamsError
from lrtl.pictures import PicturesParams
from lrtl.synthetic import SyntheticParams
from lrtl.tracks import TracksParams
from lrtl.train import TrainParams

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
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
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
    """infer.pictures is the draw_pictures rule's section (lrtl.pictures), passed apart from the infer params."""
    mapping = {key: value for key, value in CONFIG[section].items() if (section, key) != ("infer", "pictures")}
    params.from_mapping(mapping, section)
    if section == "infer":
        PicturesParams.from_mapping(CONFIG["infer"]["pictures"], "infer.pictures")


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
