"""Input problems stop with a StageError that names the file (or config section) and the fix."""

from __future__ import annotations

import json

import pytest

from lrtl import stores
from lrtl.cli import StageError
from lrtl.params import ParamsError
from lrtl.track_store import open_sequence_tracks
from lrtl.tracks import TracksParams
from tests.conftest import config_section

INDEX = {"kind": "tracks_index", "format_version": stores.FORMAT_VERSION, "sequence": "s", "n_frames": 2,
         "height": 8, "width": 8, "window": 2, "chunks": [{"path": "chunk-000.zarr", "query_frames": [0, 1]}]}


@pytest.mark.parametrize(
    "text, says",
    [
        ('{"format_version": 1, "n_frames": ', "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        (json.dumps({k: v for k, v in INDEX.items() if k not in ("n_frames", "chunks")}), "['n_frames', 'chunks']"),
        (json.dumps({**INDEX, "chunks": [{"path": "chunk-000.zarr"}]}), "chunks[].query_frames"),
        (json.dumps({**INDEX, "chunks": "chunk-000.zarr"}), "chunks as a list of objects"),
        (json.dumps({**INDEX, "n_frames": "twelve"}), "non-integer"),
    ],
)
def test_a_corrupt_or_incomplete_tracks_index_names_the_file_and_the_rule(tmp_path, text, says):
    index = tmp_path / "tracks" / "s" / "index.json"
    index.parent.mkdir(parents=True)
    index.write_text(text)
    with pytest.raises(StageError) as err:
        open_sequence_tracks(index)
    message = str(err.value)
    assert message.startswith(str(index)) and says in message
    assert "delete it" in message and "index_tracks" in message and f"snakemake {index}" in message


def test_validate_on_a_missing_store_names_the_path_and_the_rule(tmp_path):
    for folder, rule in (("frames", "prepare_frames"), ("flow", "compute_flow"),
                         ("tracks/s", "track_chunk"), ("masks/full", "infer_masks")):
        path = tmp_path / "results" / "tiny" / folder / "s.zarr"
        with pytest.raises(StageError) as err:
            stores.validate(path)
        assert str(err.value).startswith(f"{path}: no zarr store here") and f"rule {rule}" in str(err.value)
        assert f"snakemake {path}" in str(err.value)
    with pytest.raises(StageError, match="the pipeline makes it"):
        stores.validate(tmp_path / "elsewhere.zarr")  # no results-map folder: no rule to name


def test_open_store_names_the_rule_of_its_kind(tmp_path):
    with pytest.raises(StageError, match=r"x\.zarr: no zarr store here; rule compute_flow makes it"):
        stores.open_flow(tmp_path / "x.zarr")


@pytest.mark.parametrize("value", [None, [], "fixed16"])
def test_a_section_that_is_not_a_mapping_names_the_section(value):
    with pytest.raises(ParamsError, match=r"^tracks: expected a mapping of keys, got") as err:
        TracksParams.from_mapping(value, "tracks")
    assert ("empty YAML section" in str(err.value)) == (value is None)
    nested = config_section("tracks")
    nested["flowchain"] = value
    with pytest.raises(ParamsError, match=r"^tracks\.flowchain: expected a mapping"):
        TracksParams.from_mapping(nested, "tracks")
