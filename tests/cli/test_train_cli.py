"""`python -m lrtl.train` in process on the tiny synthetic dataset: outputs, resume after a kill, seeds."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from lrtl import data, losses, train
from lrtl.checkpoint import load_checkpoint
from tests.conftest import config_section, tiny_model
from tests.unit.test_data import build_training_inputs

PARAMS = config_section(
    "train.defaults",
    model=tiny_model(
        k=3, dropout=0.1, mask_stride=4, backbone={"weights": None, "layers": [], "inputs": ["rgb", "flow"]}
    ),
    data={
        "pair_offset": 3,
        "n_tracks": 64,
        "context": 9,
        "smooth": 3,
        "flow_size": [16, 24],
        "workers": 0,
        "cache_queries": 64,
    },
    loss={"w_traj": 1e-3, "rank": 2},
    optim={"warmup": 0.25},
    iterations=4,
    batch_items=1,
    seed=0,  # the tests below rely on these three
    deterministic=True,
    compat="fixed",
    device="cpu",
    log_every=1,
    checkpoint_every=2,
    validate={"every": 2, "frames": 6},
)


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tmp_path_factory):
    return build_training_inputs(tiny_dataset, tmp_path_factory.mktemp("train_cli_inputs"))


def run(inputs, root, params=PARAMS):
    root.mkdir(parents=True, exist_ok=True)
    train.main(
        [
            "--frames",
            *inputs["frames"],
            "--flow",
            *inputs["flow"],
            "--tracks",
            *inputs["tracks"],
            "--params",
            json.dumps(params),
            "--state-dir",
            str(root / "run.state"),
            "--out",
            str(root / "run" / "model.pt"),
            "--metrics",
            str(root / "run" / "metrics.jsonl"),
            "--curve",
            str(root / "run" / "loss.png"),
            "--best",
            str(root / "run" / "best.pt"),
        ]
    )
    return [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]


def loss_rows(rows):
    return [row for row in rows if "loss" in row]


@pytest.fixture(scope="module")
def first_run(inputs, tmp_path_factory):
    root = tmp_path_factory.mktemp("train_first")
    return root, run(inputs, root)


def test_train_writes_model_metrics_and_curve(first_run):
    root, all_rows = first_run
    rows = loss_rows(all_rows)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    for row in rows:
        assert {
            "loss",
            "loss_flow",
            "loss_traj",
            "loss_temp",
            "lr",
            "it_per_s",
            "data_wait",
            "max_rss_mb",
        } <= set(row)
        assert row["loss"] == pytest.approx(
            row["loss_flow"] + row["loss_traj"] + row["loss_temp"], rel=1e-5
        )
    assert rows[0]["lr"] < rows[1]["lr"]  # warm-up, then poly decay towards 0 at the last step
    assert rows[-1]["lr"] < rows[1]["lr"]
    png = (root / "run" / "loss.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    model, cfg = load_checkpoint(root / "run" / "model.pt")
    assert cfg["k"] == 3 and list(cfg["input_size"]) == [32, 48]
    assert cfg["checkpoint"]["step"] == 4 and cfg["checkpoint"]["params"]["seed"] == 0
    assert list(cfg["backbone"]["inputs"]) == ["rgb", "flow"]  # these tests train the RGB + flow model
    out = model(torch.randn(1, 5, 32, 48))
    assert out.logits.shape == (1, 3, 32, 48)
    assert not list(root.glob("**/*.tmp-*"))  # atomic writes left nothing behind


def test_validation_reports_the_last_and_the_best_checkpoint(first_run):
    root, rows = first_run
    val = [row for row in rows if "val_j" in row]
    assert [row["step"] for row in val] == [2, 4]  # every 2 steps and at the end
    assert all(0.0 <= row["val_j"] <= 1.0 and row["val_frames"] == 6 for row in val)
    summary = load_checkpoint(root / "run" / "model.pt")[1]["checkpoint"]["validation"]
    assert summary["last"] == {"step": 4, "val_j": val[-1]["val_j"]}
    best = max(val, key=lambda row: row["val_j"])
    assert summary["best"]["val_j"] == best["val_j"]
    best_ckpt = torch.load(root / "run" / "best.pt", weights_only=False)
    assert best_ckpt["step"] == summary["best"]["step"] and best_ckpt["val_j"] == best["val_j"]
    assert "ground-truth" in best_ckpt["selected_on"]
    assert best_ckpt["checkpoint_rule"] == "best_on_gt"  # lrtl.tables labels masks of it GT-selected
    assert torch.load(root / "run" / "model.pt", weights_only=False)["checkpoint_rule"] == "last"


def test_without_ground_truth_best_is_the_last_model(inputs, tmp_path):
    params = copy.deepcopy(PARAMS)
    params.update(iterations=2, validate={"every": 0, "frames": 6, "threshold": 0.5})
    rows = run(inputs, tmp_path, params)
    assert not [row for row in rows if "val_j" in row]
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert best["step"] == last["step"] == 2 and "no ground truth" in best["selected_on"]
    assert all(torch.equal(best["model"][name], last["model"][name]) for name in last["model"])


def test_same_seed_gives_the_same_final_loss(inputs, first_run, tmp_path):
    rows = loss_rows(run(inputs, tmp_path))
    assert rows[-1]["loss"] == loss_rows(first_run[1])[-1]["loss"]


def test_killed_run_resumes_and_continues_the_step_counter(inputs, first_run, tmp_path, monkeypatch, capfd):
    real_loader = train.make_loader

    def dying_loader(*args, **kwargs):
        def batches():
            for index, batch in enumerate(real_loader(*args, **kwargs)):
                if index == 3:
                    raise KeyboardInterrupt  # killed in step 4: after the step-2 checkpoint and 3 log lines
                yield batch

        return batches()

    monkeypatch.setattr(train, "make_loader", dying_loader)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, tmp_path)
    assert not (tmp_path / "run" / "model.pt").exists()
    live = [json.loads(line) for line in (tmp_path / "run.state" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in loss_rows(live)] == [1, 2, 3]
    monkeypatch.setattr(train, "make_loader", real_loader)
    capfd.readouterr()
    all_rows = run(inputs, tmp_path)
    rows = loss_rows(all_rows)
    assert "resumed from" in capfd.readouterr().err  # logged to stderr (lrtl.cli.setup_logging)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # step 3 was redone, not duplicated
    assert rows[-1]["loss"] == loss_rows(first_run[1])[-1]["loss"]  # the resumed run is the uninterrupted run
    validations = [row for row in all_rows if "val_j" in row]
    assert validations == [row for row in first_run[1] if "val_j" in row]  # kept at step 2, equal at step 4
    assert load_checkpoint(tmp_path / "run" / "model.pt")[1]["checkpoint"]["step"] == 4


def test_zero_weight_terms_are_not_computed(inputs, tmp_path):
    params = copy.deepcopy(PARAMS)
    params["loss"].update(w_traj=0.0, w_temp=0.0)  # flow_only (GWM's loss)
    params["iterations"] = 2
    rows = loss_rows(run(inputs, tmp_path, params))
    assert "loss_flow" in rows[-1] and "loss_traj" not in rows[-1] and "loss_temp" not in rows[-1]


def spied_run(inputs, root, params, monkeypatch):
    """A run whose gradient clips, temporal-loss centre indices and flips are recorded as they happen."""
    seen = {"clip": [], "centre": [], "flip": []}
    real_clip, real_centre, real_flip = torch.nn.utils.clip_grad_norm_, losses._centre_index, data.flip_item

    def clip(parameters, max_norm, *args, **kwargs):
        seen["clip"].append(max_norm)
        return real_clip(parameters, max_norm, *args, **kwargs)

    def centre(t_index, n_context, compat_reference):
        used = real_centre(t_index, n_context, compat_reference)
        seen["centre"].append((t_index.tolist(), used.tolist(), n_context))
        return used

    def flip(item, width, negate_u):
        flipped = real_flip(item, width, negate_u)
        seen["flip"].append((item["flow"], flipped["flow"]))
        return flipped

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    monkeypatch.setattr(losses, "_centre_index", centre)
    monkeypatch.setattr(data, "flip_item", flip)  # workers 0: items are built in this process
    rows = loss_rows(run(inputs, root, params))
    monkeypatch.undo()
    return rows, seen


@pytest.mark.parametrize("compat", ["reference", "fixed"])
def test_reference_compat_restores_the_reference_behaviours(inputs, tmp_path, monkeypatch, compat):
    """compat: reference (METHOD.md §11 items 1-3, 7), read off the run itself: gradient clip 0.01 (fixed: the
    configured 1.0), lr and temporal ramp on the nominal 160k horizon (fixed: the run's 4 steps), the temporal
    loss centred on the window's middle frame (fixed: the item's t_index), flow u kept on a flip (fixed: negated)."""
    params = copy.deepcopy(PARAMS)
    params.update(compat=compat, iterations=4)
    reference = compat == "reference"
    rows, seen = spied_run(inputs, tmp_path, params, monkeypatch)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]

    # item 2: the clip actually used at every step
    assert seen["clip"] == [0.01 if reference else params["optim"]["grad_clip"]] * 4
    assert params["optim"]["grad_clip"] == 1.0

    # item 3: row s logs step s - 1's lr: warm-up over round(0.25 * 4) = 1 step, then poly 0.9 to the horizon
    horizon = 160_000 if reference else 4
    base = params["optim"]["lr"]
    expected_lr = [base * 1e-6] + [base * (1 - k / horizon) ** 0.9 for k in (1, 2, 3)]
    assert [row["lr"] for row in rows] == pytest.approx(expected_lr, rel=1e-9)
    ramp = [0.001 + 0.999 * min(k / horizon, 1.0) for k in range(4)]  # temporal weight a(it)
    w_temp = params["loss"]["w_temp"]
    assert [row["loss_temp"] for row in rows] == pytest.approx(
        [w_temp * a * row["loss_raw_temp"] for a, row in zip(ramp, rows, strict=True)], rel=1e-5
    )

    # item 1: the centre index of the temporal loss (C = 9 -> 4 for every frame in the reference)
    assert seen["centre"] and all(n == params["data"]["context"] for _, _, n in seen["centre"])
    t_indices = [t for t_index, _, _ in seen["centre"] for t in t_index]
    used = [c for _, centre, _ in seen["centre"] for c in centre]
    assert any(t != 4 for t in t_indices)  # frames near the ends: the two modes differ here
    assert used == ([4] * len(used) if reference else t_indices)

    # item 7: u of the flow is mirrored with the frame and kept (fixed: negated); v is mirrored in both
    assert seen["flip"]
    for before, after in seen["flip"]:
        mirrored = before[..., ::-1]
        assert np.abs(mirrored[:, 0]).max() > 0
        np.testing.assert_array_equal(after[:, 0], mirrored[:, 0] if reference else -mirrored[:, 0])
        np.testing.assert_array_equal(after[:, 1], mirrored[:, 1])


def test_bad_inputs_stop_with_a_message(inputs, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.main(
            [
                "--frames",
                *inputs["frames"],
                "--flow",
                inputs["flow"][0],
                "--tracks",
                *inputs["tracks"],
                "--params",
                json.dumps(PARAMS),
                "--state-dir",
                str(tmp_path / "s"),
                "--out",
                str(tmp_path / "m.pt"),
                "--metrics",
                str(tmp_path / "m.jsonl"),
                "--curve",
                str(tmp_path / "c.png"),
            ]
        )
    assert "same sequences" in capsys.readouterr().err
    bad = {**PARAMS, "learning_rate": 1.0}
    with pytest.raises(SystemExit):
        train.main(
            [
                "--frames",
                *inputs["frames"],
                "--flow",
                *inputs["flow"],
                "--tracks",
                *inputs["tracks"],
                "--params",
                json.dumps(bad),
                "--state-dir",
                str(tmp_path / "s"),
                "--out",
                str(tmp_path / "m.pt"),
                "--metrics",
                str(tmp_path / "m.jsonl"),
                "--curve",
                str(tmp_path / "c.png"),
            ]
        )
    assert "learning_rate" in capsys.readouterr().err


def test_schedules_are_relative_to_the_run_length():
    assert train.lr_factor(0, 1000, 0.1, 0.9, False) == pytest.approx(1e-6)
    assert train.lr_factor(100, 1000, 0.1, 0.9, False) == pytest.approx(0.9**0.9)
    assert train.lr_factor(1000, 1000, 0.1, 0.9, False) == 0.0
    assert train.lr_factor(20000, 20000, 0.075, 0.9, True) == pytest.approx((1 - 20000 / 160000) ** 0.9)
    assert train.temporal_ramp(500, 1000, False) == pytest.approx(0.5005)
    assert train.temporal_ramp(20000, 20000, True) == pytest.approx(0.001 + 0.999 / 8)


def test_dino_backbone_trains_frozen_and_is_not_checkpointed(inputs, tmp_path):
    """The paper backbone (random weights: weights null) through a training step and back from model.pt."""
    params = copy.deepcopy(PARAMS)
    # inputs: null, as the workflow passes the small backbone's own keys to the DINO one
    params["model"]["backbone"].update(name="dino_vitb8", layers=[9, 11], inputs=None)
    params["model"]["mask_stride"] = 1
    params.update(iterations=1, checkpoint_every=1)
    run(inputs, tmp_path, params)
    checkpoint = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    assert checkpoint["model"] and not any(name.startswith("backbone.") for name in checkpoint["model"])
    model, cfg = load_checkpoint(tmp_path / "run" / "model.pt")
    assert cfg["backbone"]["name"] == "dino_vitb8"
    assert model(torch.randn(1, 3, 32, 48)).logits.shape == (1, 3, 32, 48)


def copy_inputs(inputs, root):
    """A private copy of the flow and tracks stores (frames stay shared, read-only) that a test may change."""
    import shutil
    from pathlib import Path

    source = Path(inputs["flow"][0]).parents[1]  # build_training_inputs writes flow/ and tracks/ under one root
    for folder in ("flow", "tracks"):
        shutil.copytree(source / folder, root / folder)
    return {
        "frames": list(inputs["frames"]),
        "flow": [str(root / "flow" / Path(path).name) for path in inputs["flow"]],
        "tracks": [str(root / "tracks" / Path(path).parent.name / "index.json") for path in inputs["tracks"]],
    }


def scale_flow(path, factor):
    """Scale every flow field of a flow store in place (the store is rewritten, its identity changes)."""
    import zarr

    group = zarr.open_group(path, mode="r+")
    for name in group.array_keys():
        group[name][...] = group[name][...] * factor


def weights_equal(a, b):
    first, second = torch.load(a, weights_only=False)["model"], torch.load(b, weights_only=False)["model"]
    return all(torch.equal(first[name], second[name]) for name in first)


def test_a_finished_run_leaves_no_resume_state_and_retrains_changed_inputs(inputs, first_run, tmp_path, capfd):
    changed = copy_inputs(inputs, tmp_path / "inputs")
    run(changed, tmp_path)
    assert not (tmp_path / "run.state").exists()  # a finished job removes its resume state
    assert weights_equal(tmp_path / "run" / "model.pt", first_run[0] / "run" / "model.pt")
    for flow in changed["flow"]:
        scale_flow(flow, 1.5)  # an input changes after the finished run
    capfd.readouterr()
    rows = loss_rows(run(changed, tmp_path))
    assert "resumed" not in capfd.readouterr().err
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    assert not weights_equal(tmp_path / "run" / "model.pt", first_run[0] / "run" / "model.pt")


def test_a_killed_run_never_resumes_into_changed_inputs(inputs, tmp_path, monkeypatch, capfd):
    changed = copy_inputs(inputs, tmp_path / "inputs")
    real_loader = train.make_loader

    def dying_loader(*args, **kwargs):
        def batches():
            for index, batch in enumerate(real_loader(*args, **kwargs)):
                if index == 3:
                    raise KeyboardInterrupt  # killed after the step-2 checkpoint
                yield batch

        return batches()

    monkeypatch.setattr(train, "make_loader", dying_loader)
    with pytest.raises(KeyboardInterrupt):
        run(changed, tmp_path / "killed")
    assert (tmp_path / "killed" / "run.state" / "last.pt").is_file()
    monkeypatch.setattr(train, "make_loader", real_loader)
    scale_flow(changed["flow"][1], 0.5)
    capfd.readouterr()
    run(changed, tmp_path / "killed")
    err = capfd.readouterr().err
    assert "resumed from" not in err and "belongs to another job" in err and changed["flow"][1] in err
    run(changed, tmp_path / "clean")  # the same inputs from scratch: the restarted run equals it
    assert weights_equal(tmp_path / "killed" / "run" / "model.pt", tmp_path / "clean" / "run" / "model.pt")


def test_run_settings_never_restart_a_killed_run(inputs, first_run, tmp_path, monkeypatch, capfd):
    real_loader = train.make_loader

    def dying_loader(*args, **kwargs):
        def batches():
            for index, batch in enumerate(real_loader(*args, **kwargs)):
                if index == 3:
                    raise KeyboardInterrupt
                yield batch

        return batches()

    monkeypatch.setattr(train, "make_loader", dying_loader)
    with pytest.raises(KeyboardInterrupt):
        run(inputs, tmp_path)
    monkeypatch.setattr(train, "make_loader", real_loader)
    params = copy.deepcopy(PARAMS)
    params["data"].update(workers=1, cache_queries=8, preload_flow=False)  # run settings, not results
    capfd.readouterr()
    rows = loss_rows(run(inputs, tmp_path, params))
    assert "resumed from" in capfd.readouterr().err
    assert rows[-1]["loss"] == loss_rows(first_run[1])[-1]["loss"]


def test_non_finite_flow_stops_training_naming_the_store_and_frame(inputs, tmp_path, capfd):
    import zarr

    changed = copy_inputs(inputs, tmp_path / "inputs")
    zarr.open_group(changed["flow"][1], mode="r+")["backward_2"][5, 3, 4, 0] = float("nan")
    with pytest.raises(SystemExit):
        run(changed, tmp_path)
    err = capfd.readouterr().err
    assert changed["flow"][1] in err and "backward_2" in err and "frame(s) [5]" in err
    assert not (tmp_path / "run" / "model.pt").exists()
