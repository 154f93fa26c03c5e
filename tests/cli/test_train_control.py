"""A trainer owns its state folder and stops with its controller (issue 22): `python -m lrtl.train` as processes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrtl import jobcontrol
from tests.cli.test_train_cli import PARAMS
from tests.unit.test_data import build_training_inputs

LONG = {**PARAMS, "iterations": 1_000_000, "checkpoint_every": 1000, "validate": {**PARAMS["validate"], "every": 1000}}


@pytest.fixture(scope="module")
def inputs(tiny_dataset, tmp_path_factory):
    return build_training_inputs(tiny_dataset, tmp_path_factory.mktemp("train_control_inputs"))


def train_command(inputs: dict, root: Path) -> list[str]:
    return [sys.executable, "-m", "lrtl.train", "--frames", *inputs["frames"], "--flow", *inputs["flow"],
            "--tracks", *inputs["tracks"], "--params", json.dumps(LONG), "--state-dir", str(root / "run.state"),
            "--out", str(root / "run" / "model.pt"), "--metrics", str(root / "run" / "metrics.jsonl"),
            "--curve", str(root / "run" / "loss.png"), "--threads", "1"]


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="watching the controller needs Linux /proc")
def test_a_second_trainer_is_refused_and_a_killed_controller_stops_its_trainer(inputs, tmp_path: Path) -> None:
    """A stand-in controller named `snakemake` starts the trainer through `bash -c`, as Snakemake's local executor
    does (snakemake -> bash -> python; the shell outlives a kill -9 of snakemake)."""
    log = tmp_path / "train.log"
    controller = tmp_path / "bin" / "snakemake"
    controller.parent.mkdir()
    shell = f"set -euo pipefail; {shlex.join(train_command(inputs, tmp_path))} > {shlex.quote(str(log))} 2>&1"
    controller.write_text(f"#!{sys.executable}\nimport subprocess, sys, time\n"
                          f"subprocess.Popen(['bash', '-c', sys.argv[1]])\ntime.sleep(600)\n")
    controller.chmod(0o755)
    lock = tmp_path / "run.state" / "lock"
    started = subprocess.Popen([str(controller), shell])
    trainer = None
    try:
        owner = wait_for(lambda: lock.is_file() and lock.read_text().strip(), 120, "the trainer's lock")
        trainer = int(owner.split()[1])
        wait_for(lambda: "stopping if the snakemake controller" in log.read_text(), 60, "the trainer to start")
        assert f"(PID {started.pid})" in log.read_text()

        second = subprocess.run(train_command(inputs, tmp_path), capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        state = tmp_path / "run.state"
        assert f"{state}: another trainer is using this state folder (PID {trainer} on " in second.stderr
        assert f"Wait for it to finish, or stop it (kill {trainer} on " in second.stderr
        assert running(trainer)  # the first one trains on

        started.send_signal(signal.SIGKILL)  # the controller dies without a word
        started.wait()
        wait_for(lambda: not running(trainer), 30, f"trainer {trainer} to stop after its controller died")
        assert "the snakemake controller (PID" in log.read_text() and "is gone: stopping" in log.read_text()
        assert lock.is_file()  # the resume state stays for the next run
    finally:
        for pid in (started.pid, trainer):
            if pid is not None and running(pid):
                os.kill(pid, signal.SIGKILL)
        started.wait()


def test_a_trainer_run_by_hand_watches_no_controller() -> None:
    """Run by hand (from a shell, nohup, tmux; here from pytest) no ancestor runs snakemake: nothing is watched."""
    assert jobcontrol.find_controller() is None
    assert jobcontrol.stop_with_controller() is None
    assert jobcontrol.is_snakemake(["/env/bin/python", "/env/bin/snakemake", "--cores", "2"])
    assert jobcontrol.is_snakemake(["python", "-m", "snakemake", "-n"])
    assert not jobcontrol.is_snakemake(["bash", "-c", "python -m lrtl.train --state-dir snakemake/run.state"])
