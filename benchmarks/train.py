"""Training step time split into data / forward / losses / backward + optimiser step, and training
speed beside a competing CPU-bound job.

    python benchmarks/train.py --frames A.zarr ... --flow A.zarr ... --tracks A/index.json ... \
        --params '<json of a merged train section>' [--steps 20] [--warmup 3] [--threads N] [--contention]

Prints the mean wall time per step of each part and its share of the step, plus CPU seconds (process time, all
threads), which are steadier than wall time on a shared machine. Items are loaded in the main process here
(workers = 0) so that the data time is the full per-step loading cost.

--contention instead runs the real training job (`python -m lrtl.train`, its data-loader workers as in the
params, --threads N) twice for --steps steps: alone, then beside a competitor that keeps every core busy (one
busy-looping process per core, as another job on the node would). It prints steps/s of both (median over the
metrics windows after the first) and their ratio; two jobs sharing the cores should each get about half (the
target is a ratio above 0.4).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lrtl.data import TrainItems, flatten_batch, load_sequence
from lrtl.model import build_model
from lrtl.model_inputs import input_kinds, model_input
from lrtl.train import REFERENCE_GRAD_CLIP, compute_losses, lr_factor, param_groups
from lrtl.train_params import parse_params


class Clock:
    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._mark = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[name] = self.wall.get(name, 0.0) + wall - self._mark[0]
        self.cpu[name] = self.cpu.get(name, 0.0) + cpu - self._mark[1]
        self._mark = (wall, cpu)

    def reset(self) -> None:
        self.wall, self.cpu = {}, {}
        self._mark = (time.perf_counter(), time.process_time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", nargs="+", required=True)
    parser.add_argument("--flow", nargs="+", required=True)
    parser.add_argument("--tracks", nargs="+", required=True)
    parser.add_argument("--params", required=True, help="JSON of a merged train section")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--contention", action="store_true", help="steps/s alone and beside a busy competitor")
    args = parser.parse_args()
    if args.contention:
        contention(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    params = parse_params(json.loads(args.params))
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, workers=0))
    torch.manual_seed(params.seed)
    load_start = time.perf_counter()
    sequences = [
        load_sequence(f, w, t, input_size=params.model.input_size, params=params.data,
                      flow_input="flow" in input_kinds(params.model.to_dict()))
        for f, w, t in zip(args.frames, args.flow, args.tracks, strict=True)
    ]
    items = TrainItems(
        sequences, params.data, seed=params.seed, compat_reference=params.compat == "reference"
    )
    print(f"preload: {time.perf_counter() - load_start:.1f} s for {len(sequences)} sequences")
    model = build_model(params.model.to_dict())
    model.train()
    optimizer = torch.optim.AdamW(param_groups(model, params.optim.weight_decay), lr=params.optim.lr)
    grad_clip = REFERENCE_GRAD_CLIP if params.compat == "reference" else params.optim.grad_clip
    clock = Clock()
    key = 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            clock.reset()
        keys = range(key, key + params.batch_items)
        key += params.batch_items
        batch = flatten_batch(torch.utils.data.default_collate([items[k] for k in keys]))
        clock.lap("data")
        for group in optimizer.param_groups:  # the loop's schedule, as lrtl.train runs it
            group["lr"] = params.optim.lr * lr_factor(step, params.iterations, params.optim.warmup,
                                                      params.optim.poly_power, params.compat == "reference")
        out = model(model_input(batch["rgb"], batch.get("flow_input"), input_kinds(params.model.to_dict())))
        clock.lap("forward")
        total = compute_losses(out, batch, params, step, items.track_size)["total"]  # the training loop's own
        clock.lap("losses")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        clock.lap("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        clock.lap("optimizer")
    wall_total = sum(clock.wall.values())
    cpu_total = sum(clock.cpu.values())
    print(
        f"{args.steps} steps, {params.batch_items} items = {4 * params.batch_items} frames per step, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{'part':<10} {'wall s/step':>12} {'share':>7} {'cpu s/step':>11} {'share':>7}")
    for name in clock.wall:
        print(
            f"{name:<10} {clock.wall[name] / args.steps:12.4f} {clock.wall[name] / wall_total:7.1%} "
            f"{clock.cpu[name] / args.steps:11.4f} {clock.cpu[name] / cpu_total:7.1%}"
        )
    print(f"{'total':<10} {wall_total / args.steps:12.4f} {'':>7} {cpu_total / args.steps:11.4f}")


def busy_loop() -> None:
    while True:
        pass


def train_steps_per_s(args: argparse.Namespace, params: dict, root: Path) -> float:
    """Median steps/s of the metrics windows (after the first) of one `python -m lrtl.train` run."""
    params = {**params, "iterations": args.steps, "log_every": max(1, args.steps // 8),
              "checkpoint_every": args.steps, "validate": {**params["validate"], "every": 0}}
    command = [sys.executable, "-m", "lrtl.train", "--frames", *args.frames, "--flow", *args.flow,
               "--tracks", *args.tracks, "--params", json.dumps(params), "--state-dir", str(root / "state"),
               "--out", str(root / "model.pt"), "--metrics", str(root / "metrics.jsonl"),
               "--curve", str(root / "loss.png")]
    if args.threads:
        command += ["--threads", str(args.threads)]
    # as the workflow's rule runs it (workflow/rules/train.smk); LRTL_BENCH_WAIT_POLICY= measures the default
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("LRTL_BENCH_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"python -m lrtl.train failed:\n{proc.stderr[-2000:]}")
    rates = pd.read_json(root / "metrics.jsonl", lines=True)["it_per_s"].dropna()  # validation rows have none
    return statistics.median(rates.iloc[1:])


def contention(args: argparse.Namespace) -> None:
    params = json.loads(args.params)
    with tempfile.TemporaryDirectory() as scratch:
        alone = train_steps_per_s(args, params, Path(scratch) / "alone")
        competitors = [multiprocessing.Process(target=busy_loop, daemon=True) for _ in range(os.cpu_count())]
        for process in competitors:
            process.start()
        try:
            shared = train_steps_per_s(args, params, Path(scratch) / "shared")
        finally:
            for process in competitors:
                process.terminate()
    policy = os.environ.get("LRTL_BENCH_WAIT_POLICY", "PASSIVE") or "default (spin)"
    print(f"training: {args.steps} steps, --threads {args.threads or 'default'}, "
          f"{params['data']['workers']} data-loader worker(s), {os.cpu_count()} cores, OMP_WAIT_POLICY {policy}")
    print(f"alone              {alone:8.2f} steps/s")
    print(f"beside {os.cpu_count()} busy loops {shared:8.2f} steps/s")
    print(f"ratio              {shared / alone:8.2f}   (target > 0.4; an even share of the cores is 0.5)")


if __name__ == "__main__":
    main()
