"""The tests' parameter source: config.yaml sections plus explicit, checked overrides."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import CONFIG, config_section


def test_section_is_config_yaml_with_nested_overrides_merged():
    config = yaml.safe_load(CONFIG.read_text())
    assert config_section("tracks") == config["tracks"]
    tracks = config_section("tracks", window=9, flowchain={"fb_beta": 0.25})
    assert tracks["window"] == 9 and tracks["flowchain"]["fb_beta"] == 0.25
    assert tracks["flowchain"]["fb_alpha"] == config["tracks"]["flowchain"]["fb_alpha"]
    assert config_section("train.defaults.data") == config["train"]["defaults"]["data"]
    tracks["cotracker"]["height"] = -1  # a copy: callers cannot change what the next test sees
    assert config_section("tracks")["cotracker"]["height"] == config["tracks"]["cotracker"]["height"]


def test_an_override_the_section_lacks_is_an_error():
    with pytest.raises(KeyError, match="tracks.strid"):
        config_section("tracks", strid=4)
    with pytest.raises(KeyError, match="no section nope"):
        config_section("nope")
