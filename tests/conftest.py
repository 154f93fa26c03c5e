"""Shared fixtures: a tiny synthetic dataset (2 sequences x 12 frames x 64x96) with frames stores.

`tiny_dataset` (session scope) returns
    {"root": Path, "layout": "synthetic", "resolution": "64p", "dataset": "tiny",
     "synthetic_params": dict (config section synthetic), "frames_params": {"height": 64, "width": 96},
     "sequences": {name: {"images": Path (JPEG folder), "annotations": Path (PNG folder),
                          "ground_truth": Path (synthetic_gt store; lrtl.synthetic.load_scene(it)),
                          "frames": Path (frames store written by lrtl.frames)}}}
Sequence names are "synth-000" and "synth-001". Treat everything as read-only.
"""

from __future__ import annotations

import pytest

TINY_SYNTHETIC = {
    "n_sequences": 2,
    "height": 64,
    "width": 96,
    "n_frames": [12, 12],
    "n_objects": [1, 2],
    "object_area": [0.08, 0.2],
    "object_speed": [1.0, 2.0],
    "object_rotation": 1.0,
    "object_scale": 0.01,
    "camera_speed": 1.0,
    "camera_zoom": 0.003,
    "enter_leave": 0.3,
    "gaps": [1],
    "jpeg_quality": 95,
    "seed": 0,
}
TINY_FRAMES = {"height": 64, "width": 96}


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
            "synthetic_params": dict(TINY_SYNTHETIC), "frames_params": dict(TINY_FRAMES),
            "sequences": sequences}
