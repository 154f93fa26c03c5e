"""Bad input met through Snakemake as a user meets it: each stops with one message naming the file or config key
and the fix, and leaves what is built in place (issue 22)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.workflow.conftest import TEST_CONFIG, snakemake
from tests.workflow.test_dag import _folder_dataset


def test_a_misspelt_config_key_names_its_path_the_closest_key_and_the_file(workdir: Path) -> None:
    overlay = workdir / "typo.yaml"
    overlay.write_text("train:\n  defaults:\n    iteratons: 5\n")
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.defaults.iteratons: unknown config key; did you mean `iterations`?" in text
    assert "(set in typo.yaml)" in text  # the overlay, relative to the working directory
    assert "Failed validating" not in text and len(text.splitlines()) < 12, text  # no dump of schema and config


def _one_frame_video(path: Path) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (24, 16))
    writer.write(np.full((16, 24, 3), 90, np.uint8))
    writer.release()
    return path


def test_a_one_frame_video_stops_the_run_naming_it_and_keeps_what_is_built(workdir: Path) -> None:
    overlay = _folder_dataset(workdir, ["walk"])
    built = "results/mine/frames/walk.zarr"
    snakemake(workdir, built, "--cores", "1", "--configfile", str(overlay))
    _one_frame_video(workdir / "videos" / "clip.mp4")
    proc = snakemake(workdir, "-n", "--configfile", str(overlay), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert (f"{workdir / 'videos' / 'clip.mp4'}: sequence 'clip' of dataset mine has 1 frame(s); a sequence needs "
            "at least 2 frames, and more than its largest flow gap (2, flow.gaps)") in text
    assert f"move it out of {workdir / 'videos'}" in text and "IndexError" not in text
    assert (workdir / built / "zarr.json").is_file()
    (workdir / "videos" / "clip.mp4").unlink()  # the fix
    assert "Nothing to be done" in snakemake(workdir, built, "-n", "--configfile", str(overlay)).stdout


def test_prepare_frames_and_compute_flow_refuse_too_short_sequences(tmp_path: Path, capsys) -> None:
    """The same rule in the stages, for runs by hand (and a sheet whose count is wrong)."""
    from lrtl import flow, frames
    from tests.conftest import config_section

    video = _one_frame_video(tmp_path / "clip.mp4")
    with pytest.raises(SystemExit):
        frames.main(["--layout", "folder", "--images", str(video), "--dataset", "d", "--sequence", "clip",
                     "--params", json.dumps({"height": 16, "width": 24}), "--out", str(tmp_path / "clip.zarr")])
    assert (f"{video}: the video has 1 frame; a sequence needs at least 2 frames, and more than its largest flow "
            "gap") in capsys.readouterr().err
    assert not (tmp_path / "clip.zarr").exists()
    two = _folder_dataset(tmp_path, ["two"], n_frames=2)
    assert two.is_file()
    store = tmp_path / "two.zarr"
    frames.main(["--layout", "folder", "--images", str(tmp_path / "videos" / "two"), "--dataset", "d",
                 "--sequence", "two", "--params", json.dumps({"height": 16, "width": 24}), "--out", str(store)])
    with pytest.raises(SystemExit):
        flow.main(["--frames", str(store), "--params", json.dumps(config_section("flow", gaps=[1, 2])),
                   "--out", str(tmp_path / "flow.zarr")])
    assert (f"{store}: 2 frame(s) of {tmp_path / 'videos' / 'two'}, but flow gap 2 needs more than 2: a sequence "
            "needs more frames than its largest flow gap") in capsys.readouterr().err
    assert not (tmp_path / "flow.zarr").exists()
