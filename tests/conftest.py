"""Shared fixtures and the one source of test parameters.

`config_section(name, **overrides)` returns a section of the repository's config.yaml (dotted names reach
nested sections, e.g. "train.defaults.data") with `overrides` merged in recursively: a dict override updates
a dict value key by key, anything else replaces it, and a key the section lacks is an error (so a test cannot
silently pass a stale key). Tests thus run on the config defaults plus the values they state.

`tiny_dataset` (session scope) returns a tiny synthetic dataset (2 sequences x 12 frames x 64x96) with frames
stores:
    {"root": Path, "layout": "synthetic", "resolution": "64p", "dataset": "tiny",
     "synthetic_params": dict (config section synthetic), "frames_params": dict (config section frames),
     "sequences": {name: {"images": Path (JPEG folder), "annotations": Path (PNG folder),
                          "ground_truth": Path (synthetic_gt store; lrtl.synthetic.load_scene(it)),
                          "frames": Path (frames store written by lrtl.frames)}}}
Sequence names are "synth-000" and "synth-001". Treat everything as read-only.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from snakemake.utils import update_config

CONFIG = Path(__file__).resolve().parents[1] / "config.yaml"


@cache
def _config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def _check_keys(base: dict[str, Any], overrides: dict[str, Any], where: str) -> None:
    """A test may only override keys config.yaml has (so that it cannot silently pass a stale key)."""
    for key, value in overrides.items():
        if key not in base:
            raise KeyError(f"{CONFIG} has no key {where}.{key}; fix the test's override or add the key there")
        if isinstance(value, dict) and isinstance(base[key], dict):
            _check_keys(base[key], value, f"{where}.{key}")


def config_section(name: str, **overrides: Any) -> dict[str, Any]:
    """A fresh copy of config.yaml's section `name` (dotted for nested sections) with `overrides` merged in."""
    section: Any = _config()
    for part in name.split("."):
        if not isinstance(section, dict) or part not in section:
            raise KeyError(f"{CONFIG} has no section {name}")
        section = section[part]
    _check_keys(section, overrides, name)
    merged = copy.deepcopy(section)
    update_config(merged, copy.deepcopy(overrides))
    return merged


def tiny_model(**overrides: Any) -> dict[str, Any]:
    """config.yaml's train.defaults.model at unit-test size: a two-stage small backbone on 32x48 input."""
    tiny = {
        "backbone": {"name": "small", "channels": [8, 16]},
        "input_size": [32, 48],
        "hidden": 16,
        "heads": 2,
        "decoder_layers": 1,
        "ffn": 32,
        "dropout": 0.0,
        "mask_stride": 2,
    }
    return config_section("train.defaults.model", **{**tiny, **overrides})


TINY_SYNTHETIC = config_section(
    "synthetic",
    n_sequences=2,
    height=64,
    width=96,
    n_frames=[12, 12],
    n_objects=[1, 2],
    object_area=[0.08, 0.2],
    object_speed=[1.0, 2.0],
    object_rotation=1.0,
    camera_speed=1.0,
    camera_zoom=0.003,
    seed=0,
)
TINY_FRAMES = config_section("frames", height=64, width=96)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    from lrtl.frames import FramesParams, run_frames
    from lrtl.synthetic import SyntheticParams, run_synthetic

    root = tmp_path_factory.mktemp("tiny")
    resolution = "64p"
    params = SyntheticParams.from_mapping(TINY_SYNTHETIC)
    frames_params = FramesParams.from_mapping(TINY_FRAMES)
    sequences = {}
    for index in range(params.n_sequences):
        name = f"synth-{index:03d}"
        paths = {
            "images": root / "JPEGImages" / resolution / name,
            "annotations": root / "Annotations" / resolution / name,
            "ground_truth": root / "ground_truth" / f"{name}.zarr",
            "frames": root / "frames" / f"{name}.zarr",
        }
        run_synthetic(sequence_index=index, name=name, images=paths["images"],
                      annotations=paths["annotations"], ground_truth=paths["ground_truth"], params=params)
        run_frames(layout="synthetic", images=paths["images"], annotations=paths["annotations"],
                   dataset="tiny", sequence=name, out=paths["frames"], params=frames_params)
        sequences[name] = paths
    return {"root": root, "layout": "synthetic", "resolution": resolution, "dataset": "tiny",
            "synthetic_params": copy.deepcopy(TINY_SYNTHETIC), "frames_params": dict(TINY_FRAMES),
            "sequences": sequences}
