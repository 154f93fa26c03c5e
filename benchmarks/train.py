"""Training step time split into data / forward / loss (each term) / backward + optimiser step.

    python benchmarks/train.py --frames A.zarr ... --flow A.zarr ... --tracks A/index.json ... \
        --params '<json of a merged train section>' [--steps 20] [--warmup 3] [--threads N]

Prints the mean wall time per step of each part and its share of the step, plus CPU seconds (process time, all
threads), which are steadier than wall time on a shared machine. Items are loaded in the main process here
(workers = 0) so that the data time is the full per-step loading cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from lrtl import losses
from lrtl.data import TrainItems, flatten_batch, load_sequence
from lrtl.model import build_model
from lrtl.model_inputs import input_kinds, model_input
from lrtl.train import param_groups, parse_params, temporal_ramp


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
    args = parser.parse_args()
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
    loss_cfg = params.loss
    reference = params.compat == "reference"
    clock = Clock()
    key = 0
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            clock.reset()
        keys = range(key, key + params.batch_items)
        key += params.batch_items
        batch = flatten_batch(torch.utils.data.default_collate([items[k] for k in keys]))
        clock.lap("data")
        out = model(model_input(batch["rgb"], batch.get("flow_input"), input_kinds(params.model.to_dict())))
        masks = out.logits.softmax(dim=1)
        clock.lap("forward")
        total = out.logits.new_zeros(())
        if loss_cfg.w_flow:
            flow = batch["flow"]
            resized = torch.nn.functional.interpolate(
                masks, size=flow.shape[-2:], mode="bilinear", align_corners=False
            )
            total = total + loss_cfg.w_flow * losses.flow_loss(resized, flow)
            clock.lap("loss_flow")
        if loss_cfg.w_traj:
            weights = losses.mask_weights(masks, batch["loc"], loss_cfg.weight_clamp, not reference)
            traj = losses.trajectory_matrix(batch["tracks"])
            total = total + loss_cfg.w_traj * losses.lowrank_trajectory_loss(
                traj, weights, loss_cfg.rank, loss_cfg.route
            )
            clock.lap("loss_traj")
        if loss_cfg.w_temp:
            raw = losses.temporal_loss_items(
                masks,
                batch["tracks"],
                batch["vis"],
                batch["loc"],
                batch["t_index"],
                frame_size=items.track_size,
                offset=params.data.pair_offset,
                compat_reference=reference,
                align_corners=not reference,
            )
            total = total + loss_cfg.w_temp * temporal_ramp(step, params.iterations, reference) * raw
            clock.lap("loss_temp")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        clock.lap("backward")
        torch.nn.utils.clip_grad_norm_(model.parameters(), params.optim.grad_clip)
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


if __name__ == "__main__":
    main()
