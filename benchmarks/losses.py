"""Benchmark the low-rank trajectory loss against torch.linalg.svdvals (METHOD.md §7.2, §12.1).

For each shape B,K,D,N it prints, in one run:
* agreement: max relative error over (b, k) of the per-matrix tail sum Σ_{i>r} σ_i against float64 svdvals
  of the materialised P (also for fp32 svdvals, the reference's computation);
* speed: median (and min) wall time of the forward pass of each route and of fp32 svdvals on the
  materialised P, timed interleaved so that machine load hits all alike, and the speed ratios.  Two direct
  baselines: ``svdvals(P)`` on the wide D x N matrix (the reference's call) and ``svdvals(Pᵀ)`` on the tall
  N x D matrix (same values; LAPACK is several times faster on it on CPU).  --backward also times
  forward + backward.

Usage: python benchmarks/losses.py [--shapes 8,4,82,70000 8,4,82,10000] [--repeats 3] [--rank 5] [--backward]
No assertions: it reports numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lrtl.losses import lowrank_tail_sums

ROUTES = ("gram", "qr")


def make_inputs(batch: int, n_masks: int, dim: int, n_tracks: int, seed: int):
    """Trajectory-like data: a few rigid-ish motions plus noise, in pixels; soft masks in (0, 1).

    Returns traj [B, D, N] float32 and weights [B, K, N] float32.
    """
    gen = torch.Generator().manual_seed(seed)
    frames = dim // 2
    start = torch.rand(batch, 1, n_tracks, 2, generator=gen) * torch.tensor([854.0, 480.0])
    n_groups = 3
    group = torch.randint(0, n_groups, (batch, n_tracks), generator=gen)
    velocity = torch.randn(batch, n_groups, 2, generator=gen) * 3.0
    t = torch.arange(frames, dtype=torch.float32).view(1, frames, 1, 1)
    v = velocity.gather(1, group.unsqueeze(-1).expand(-1, -1, 2)).unsqueeze(1)  # [B, 1, N, 2]
    tracks = start + t * v + torch.randn(batch, frames, n_tracks, 2, generator=gen) * 0.5  # [B, C, N, 2]
    traj = tracks.permute(0, 3, 1, 2).reshape(batch, dim, n_tracks)
    logits = torch.randn(batch, n_masks, n_tracks, generator=gen) * 3.0
    weights = logits.softmax(1).clamp(1e-6, 1 - 1e-6)
    return traj.contiguous(), weights.contiguous()


def svdvals_tails(
    traj: torch.Tensor, weights: torch.Tensor, rank: int, dtype=torch.float32, tall: bool = False
) -> torch.Tensor:
    """Direct SVD: materialise P [B, K, D, N] and take svdvals of P (wide, the reference's call) or of
    Pᵀ (tall; same values, LAPACK is much faster on it). Returns [B, K]."""
    p = traj.to(dtype).unsqueeze(1) * weights.to(dtype).unsqueeze(2)
    return torch.linalg.svdvals(p.mT if tall else p)[..., rank:].sum(-1)


def timed(fn) -> tuple[float, float]:
    """Wall and process-CPU seconds of one call (CPU time is less sensitive to other load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def forward_backward(fn, traj, weights):
    def run():
        w = weights.clone().requires_grad_(True)
        fn(traj, w).sum().backward()

    return run


def bench_shape(shape, repeats: int, rank: int, backward: bool, seed: int) -> None:
    batch, n_masks, dim, n_tracks = shape
    traj, weights = make_inputs(batch, n_masks, dim, n_tracks, seed)
    print(
        f"\n== shape B={batch} K={n_masks} D={dim} N={n_tracks}  rank={rank}  "
        f"threads={torch.get_num_threads()}  repeats={repeats}"
    )

    ref64 = svdvals_tails(traj, weights, rank, torch.float64, tall=True)
    candidates = {f"route={r}": (lambda t, w, r=r: lowrank_tail_sums(t, w, rank, r)) for r in ROUTES}
    candidates["svdvals(P)"] = lambda t, w: svdvals_tails(t, w, rank)
    candidates["svdvals(P^T)"] = lambda t, w: svdvals_tails(t, w, rank, tall=True)

    print(f"{'method':<14} {'max rel err vs svdvals fp64':>28}")
    for name, fn in candidates.items():
        with torch.no_grad():
            out = fn(traj, weights).to(torch.float64)
        rel = ((out - ref64).abs() / ref64.abs()).max().item()
        print(f"{name:<14} {rel:>28.3e}")

    modes = {"forward": lambda fn: lambda: _no_grad(fn, traj, weights)}
    if backward:
        modes["forward+backward"] = lambda fn: forward_backward(fn, traj, weights)
    for mode, wrap in modes.items():
        runs = {name: wrap(fn) for name, fn in candidates.items()}
        for run in runs.values():  # warm-up
            run()
        times = {name: [] for name in runs}
        cpu_times = {name: [] for name in runs}
        for _ in range(repeats):
            for name, run in runs.items():
                wall, cpu = timed(run)
                times[name].append(wall)
                cpu_times[name].append(cpu)
        print(f"-- {mode}: median wall / CPU seconds; ratios = svdvals call / method (wall, CPU)")
        print(
            f"{'method':<14} {'wall s':>8} {'cpu s':>8} {'svdvals(P)/x':>18} {'svdvals(P^T)/x':>18}"
        )
        med = {name: statistics.median(ts) for name, ts in times.items()}
        cmed = {name: statistics.median(ts) for name, ts in cpu_times.items()}
        for name in runs:
            wide = f"{med['svdvals(P)'] / med[name]:.1f} / {cmed['svdvals(P)'] / cmed[name]:.1f}"
            tall = f"{med['svdvals(P^T)'] / med[name]:.1f} / {cmed['svdvals(P^T)'] / cmed[name]:.1f}"
            print(f"{name:<14} {med[name]:>8.3f} {cmed[name]:>8.3f} {wide:>18} {tall:>18}")


def _no_grad(fn, traj, weights):
    with torch.no_grad():
        return fn(traj, weights)


def parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"shape {text!r} must be B,K,D,N")
    return parts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--shapes",
        nargs="+",
        type=parse_shape,
        default=[(8, 4, 82, 70000), (8, 4, 82, 10000)],
        help="shapes B,K,D,N (default: the paper's 8,4,82,70000 and 8,4,82,10000)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per method (median reported)")
    parser.add_argument("--rank", type=int, default=5, help="r: singular values beyond r enter the loss")
    parser.add_argument("--backward", action="store_true", help="also time forward + backward")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")
    for shape in args.shapes:
        bench_shape(shape, args.repeats, args.rank, args.backward, args.seed)


if __name__ == "__main__":
    main()
