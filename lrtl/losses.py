"""Training losses of LRTL (METHOD.md §7): low-rank trajectory loss, quadratic flow loss, temporal loss.

Pure, device-agnostic torch functions; no state, no logging side effects.

Coordinate convention (METHOD.md §11 item 6, fixed end to end): a pixel position (x, y) in a frame of
``H x W`` pixels is normalised as ``x / (W - 1) * 2 - 1`` and ``y / (H - 1) * 2 - 1`` and sampled with
``grid_sample(..., align_corners=True)``.  ``align_corners=False`` restores the reference's half-pixel
mismatch (``compat: reference``).

Low-rank trajectory loss (METHOD.md §7.2, §12.1).  The singular values of the D x N matrix
``P = p · diag(w)`` (D = 2C = 82, N = 70,000) are taken from a small D x D factor instead of a D x N SVD:

* ``route="gram"`` (default): ``G = p diag(w²) pᵀ`` accumulated in float64 over column chunks, without
  materialising P, multiplying only the row blocks on and above the diagonal (G is symmetric);
  ``σ_i = sqrt(max(λ_i(G), 0))``.  On CPU the products run on numpy's BLAS in worker threads, one batch item
  each (faster than torch's matmul for these thin products; see _weighted_gram_blas).  Non-finite input is
  detected on the small G (it always reaches G's diagonal), so the [B, D, N] input is not scanned twice.  The
  backward uses ``sqrt(max(λ_i, 0) + ε)`` with ``ε = D · eps64 · λ_max`` (the Gram's round-off level), which
  bounds the 1/(2σ) gradient without biasing the value (a forward ε would add up to 77·sqrt(ε) ≈ 1e-5 σ_1).
  Forward and backward are a custom autograd function whose gradient is ``dL/dG = U diag(1/(2σ)) Uᵀ`` on the
  tail eigenvectors, so it never forms the ``1/(λ_i - λ_j)`` terms of an eigenvector derivative and stays
  finite for repeated or vanishing σ.
* ``route="qr"``: Householder QR of ``Pᵀ`` in fp32 (the input's precision if higher; backward stable), then
  the singular values of the D x D ``R`` in float64.  The custom backward is ``dL/dPᵀ = Q U_t V_tᵀ``
  (``R = U Σ Vᵀ``, t = tail), applied with the stored Householder reflectors (``ormqr``), so it stays
  ``u_i v_iᵀ`` even for tiny σ_i (autograd through ``linalg.qr`` would solve with a singular R).

The QR route is the backward-stable one: it never forms P Pᵀ, so it never squares P's condition number. The
Gram route does square it, so it must accumulate in float64 (in fp32 the error on small σ is of order
√eps32·σ_1, METHOD.md §12.1); in float64 on the fp32 inputs it agrees with float64 svdvals to ~1e-9 relative
(the fp32 QR to ~3e-6, its working precision).  The Gram route is the default because it is faster: on CPU
about 4x faster than the QR route (benchmarks/losses.py), and it needs no [B, K, N, D] temporary (the QR route
materialises P and keeps its reflectors for backward).
Both routes agree with ``torch.linalg.svdvals`` in float64 to better than 1e-4 relative
(tests/unit/test_losses.py).  Note for comparisons: LAPACK's ``svdvals`` is several times slower on the
wide D x N matrix (the reference's call) than on its N x D transpose, which it reduces by QR itself.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "flow_loss",
    "lowrank_trajectory_loss",
    "mask_weights",
    "sample_masks_at",
    "temporal_loss",
    "temporal_loss_items",
    "track_reliability",
    "trajectory_matrix",
]

# Columns per float64 Gram chunk on CPU (per worker thread) and rows per staircase block (D = 82 -> 8 blocks);
# inputs of fewer columns take the torch route (no thread start-up).
_CPU_GRAM_CHUNK = 8192
_CPU_GRAM_ROW_BLOCK = 10
# Columns per chunk and rows per block of the torch route (fewer, larger kernels; D = 82 -> 4 blocks).
_TORCH_GRAM_CHUNK = 65536
_TORCH_GRAM_ROW_BLOCK = 20
# Columns per chunk of the backward's torch products on CPU.
_CPU_BACKWARD_CHUNK = 4096


# --------------------------------------------------------------------------------------------------
# sampling helpers
# --------------------------------------------------------------------------------------------------


def normalise_pixels(xy: torch.Tensor, frame_size: tuple[int, int]) -> torch.Tensor:
    """Map pixel positions to grid_sample coordinates with the (W - 1) convention.

    xy: [..., 2] pixel (x, y) in a frame of ``frame_size = (H, W)`` pixels.
    Returns [..., 2] in [-1, 1] for positions inside the frame (x = 0 -> -1, x = W - 1 -> 1).
    """
    height, width = frame_size
    scale = xy.new_tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)])
    return xy * scale - 1.0


def sample_masks_at(masks: torch.Tensor, loc: torch.Tensor, align_corners: bool = True) -> torch.Tensor:
    """Bilinearly sample masks at normalised positions.

    masks: [B, K, h, w] (any resolution; the normalised coordinates are resolution independent).
    loc:   [B, N, 2] normalised (x, y), x = -1 the left pixel centre and x = 1 the right one
           (``align_corners=True``, the (W - 1) normalisation of METHOD.md §4 step 4).  Outside [-1, 1]
           samples are zero (grid_sample's zero padding, as the reference).
    align_corners: False reproduces the reference's half-pixel mismatch (METHOD.md §11 item 6).
    Returns [B, K, N].
    """
    grid = loc.to(masks.dtype).unsqueeze(1)  # [B, 1, N, 2]
    sampled = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners)
    return sampled.squeeze(2)  # [B, K, N]


def mask_weights(
    masks: torch.Tensor, loc: torch.Tensor, clamp: float = 1e-6, align_corners: bool = True
) -> torch.Tensor:
    """Trajectory-loss weights w_{k,n} = clamp(m_k(loc_n), clamp, 1 - clamp) (METHOD.md §7.2 step 2).

    masks: [B, K, h, w] softmax masks (model resolution); loc: [B, N, 2] normalised as in sample_masks_at.
    Returns [B, K, N].
    """
    return sample_masks_at(masks, loc, align_corners=align_corners).clamp(clamp, 1.0 - clamp)


def track_reliability(vis: torch.Tensor, rule: str) -> torch.Tensor:
    """Per-track factor of the trajectory-loss weights, from the tracker's own visibility over the context window.

    vis: [B, C, N] bool. rule: "visibility" = the fraction of the C frames in which the track is visible;
    "complete" = 1 for a track visible in all C frames, else 0. A track the tracker lost holds its last position
    (flowchain's fill), which no rigid motion explains. Returns [B, N] float32 in [0, 1].
    """
    if rule == "visibility":
        return vis.to(torch.float32).mean(dim=1)
    if rule == "complete":
        return vis.all(dim=1).to(torch.float32)
    raise ValueError(f"unknown track reliability rule {rule!r}; expected 'visibility' or 'complete'")


def trajectory_matrix(tracks: torch.Tensor) -> torch.Tensor:
    """Stack tracks into the trajectory matrix p (METHOD.md §7.2 step 1).

    tracks: [B, C, N, 2] pixel (x, y) over C context frames.
    Returns [B, 2C, N]: rows 0..C-1 are x of frames 0..C-1, rows C..2C-1 are y.
    """
    batch, frames, n_tracks, _ = tracks.shape
    return tracks.permute(0, 3, 1, 2).reshape(batch, 2 * frames, n_tracks)


# --------------------------------------------------------------------------------------------------
# low-rank trajectory loss
# --------------------------------------------------------------------------------------------------


def _check_finite(name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(
            f"lowrank_trajectory_loss: {name} has {bad} non-finite value(s) out of {tensor.numel()} "
            f"(shape {list(tensor.shape)}); clean tracks first (NaN -> 0, clamp; METHOD.md §4 step 5)"
        )


def _staircase_edges(dim: int, rows_per_block: int) -> list[int]:
    """Edges of the row blocks of the staircase Gram: ~rows_per_block rows each."""
    n_blocks = max(1, round(dim / rows_per_block))
    return [round(i * dim / n_blocks) for i in range(n_blocks + 1)]


def _mirror_upper(gram: torch.Tensor) -> torch.Tensor:
    """Fill the strict lower triangle of [..., D, D] from the upper one."""
    dim = gram.shape[-1]
    upper = torch.ones(dim, dim, dtype=torch.bool, device=gram.device).triu()
    return torch.where(upper, gram, gram.transpose(-1, -2))


def _weighted_gram(traj: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """G[b, k] = p_b diag(w_{b,k}²) p_bᵀ in float64: the "staircase" of row blocks on and above the diagonal.

    Row block i of p diag(w²) is multiplied only against rows i.. of p, then G is mirrored (the CPU's 8 row
    blocks for D = 82 make 36 of 64 block products, 56% of the flops; 4 blocks on accelerators, 62%).  On CPU
    the products run on numpy's BLAS, one batch item per worker thread (see _weighted_gram_blas); elsewhere,
    and for N below one CPU chunk, in torch.
    traj: [B, D, N]; weights: [B, K, N]. Returns [B, K, D, D] float64.
    """
    if traj.device.type == "cpu" and traj.shape[-1] >= _CPU_GRAM_CHUNK:
        return _mirror_upper(_weighted_gram_blas(traj, weights))
    return _mirror_upper(_weighted_gram_torch(traj, weights))


def _weighted_gram_torch(traj: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Upper staircase of G (see _weighted_gram) with torch matmuls over column chunks (accelerators, small N).

    traj: [B, D, N]; weights: [B, K, N]. Returns [B, K, D, D] float64, valid on and above the diagonal.
    """
    batch, dim, n_cols = traj.shape
    n_masks = weights.shape[1]
    edges = _staircase_edges(dim, _TORCH_GRAM_ROW_BLOCK)
    gram = torch.zeros(batch, n_masks, dim, dim, dtype=torch.float64, device=traj.device)
    for b in range(batch):
        for start in range(0, n_cols, _TORCH_GRAM_CHUNK):
            p = traj[b, :, start : start + _TORCH_GRAM_CHUNK].to(torch.float64)  # [D, c]
            w2 = weights[b, :, start : start + _TORCH_GRAM_CHUNK].to(torch.float64).square()  # [K, c]
            for lo, hi in itertools.pairwise(edges):
                weighted = (p[lo:hi].unsqueeze(0) * w2.unsqueeze(1)).reshape(n_masks * (hi - lo), -1)
                block = (weighted @ p[lo:].T).reshape(n_masks, hi - lo, dim - lo)  # [K, rows, D - lo]
                gram[b, :, lo:hi, lo:] += block
    return gram


def _weighted_gram_blas(traj: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Upper staircase of G (see _weighted_gram) on CPU: numpy's BLAS, one batch item per worker thread.

    Each of min(B, torch.get_num_threads()) workers runs single-threaded BLAS on its share of the batch items
    with its own float64 buffers of _CPU_GRAM_CHUNK columns, allocated once (fresh arrays of this size would
    page-fault on every chunk).  It is faster than torch's matmul for these thin [K*rows, c] @ [c, D] products
    (~1.6x where it was measured; benchmarks/losses.py compares them on a given machine); it holds the job to
    torch's thread count, so `--threads` bounds it too.
    traj: [B, D, N]; weights: [B, K, N]. Returns [B, K, D, D] float64, valid on and above the diagonal.
    """
    from threadpoolctl import threadpool_limits

    if traj.dtype not in (torch.float32, torch.float64):
        traj = traj.float()
    if weights.dtype not in (torch.float32, torch.float64):
        weights = weights.float()
    p_all, w_all = traj.detach().numpy(), weights.detach().numpy()  # [B, D, N], [B, K, N]: shared memory
    batch, dim, n_cols = p_all.shape
    n_masks = w_all.shape[1]
    edges = _staircase_edges(dim, _CPU_GRAM_ROW_BLOCK)
    gram = np.zeros((batch, n_masks, dim, dim))  # float64
    chunk = min(_CPU_GRAM_CHUNK, n_cols)
    workers = max(1, min(batch, torch.get_num_threads()))

    def accumulate(worker: int) -> None:  # batch items worker, worker + workers, ...
        p_buf = np.empty((dim, chunk))  # [D, c] float64 copy of the chunk
        w2_buf = np.empty((n_masks, chunk))  # [K, c] squared weights
        weighted_buf = np.empty(n_masks * dim * chunk)  # [K, rows, c] at most
        block_buf = np.empty(n_masks * dim * dim)  # [K * rows, D - lo] at most
        for b in range(worker, batch, workers):
            for start in range(0, n_cols, chunk):
                width = min(chunk, n_cols - start)
                p, w2 = p_buf[:, :width], w2_buf[:, :width]
                np.copyto(p, p_all[b, :, start : start + width])
                np.copyto(w2, w_all[b, :, start : start + width])
                np.multiply(w2, w2, out=w2)
                for lo, hi in itertools.pairwise(edges):
                    rows = hi - lo
                    weighted = weighted_buf[: n_masks * rows * width].reshape(n_masks, rows, width)
                    np.multiply(p[np.newaxis, lo:hi], w2[:, np.newaxis], out=weighted)
                    block = block_buf[: n_masks * rows * (dim - lo)].reshape(n_masks * rows, dim - lo)
                    np.matmul(weighted.reshape(n_masks * rows, width), p[lo:].T, out=block)
                    gram[b, :, lo:hi, lo:] += block.reshape(n_masks, rows, dim - lo)

    with threadpool_limits(1, user_api="blas"):
        if workers == 1:
            accumulate(0)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(accumulate, range(workers)))
    return torch.from_numpy(gram)


class _GramTailSum(torch.autograd.Function):
    """Per (b, k) sum of σ_i, i >= rank, of P = p diag(w) from the float64 Gram; custom stable backward."""

    @staticmethod
    def forward(ctx, traj, weights, rank):  # traj [B, D, N], weights [B, K, N] -> [B, K] float64
        gram = _weighted_gram(traj, weights)  # [B, K, D, D]
        if not bool(torch.isfinite(gram).all()):  # any non-finite input reaches the Gram's diagonal
            _check_finite("traj", traj)
            _check_finite("weights", weights)
            raise ValueError("lowrank_trajectory_loss: the weighted Gram overflowed float64; rescale the tracks")
        evals, evecs = torch.linalg.eigh(gram)  # ascending, [B, K, D], [B, K, D, D]
        evals = evals.flip(-1)
        evecs = evecs.flip(-1)
        dim = gram.shape[-1]
        lam_max = evals[..., :1].clamp_min(0.0)
        eps = dim * torch.finfo(torch.float64).eps * lam_max + torch.finfo(torch.float64).tiny
        lam = evals.clamp_min(0.0)  # [B, K, D] descending
        # Backward uses 1 / (2 sqrt(λ + ε)); the forward value keeps sqrt(λ) so that it carries no ε bias.
        ctx.save_for_backward(traj, weights, torch.sqrt(lam + eps), evecs)
        ctx.rank = rank
        return torch.sqrt(lam[..., rank:]).sum(-1)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [B, K]
        traj, weights, sigma, evecs = ctx.saved_tensors
        rank = ctx.rank
        need_p, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        # dL/dG = U_t diag(1 / (2 σ_t)) U_tᵀ  (symmetric): no eigenvector-derivative terms.
        tail = evecs[..., rank:]  # [B, K, D, T]
        scale = grad_out.to(torch.float64)[..., None] / (2.0 * sigma[..., rank:])  # [B, K, T]
        gamma = (tail * scale.unsqueeze(-2)) @ tail.transpose(-1, -2)  # [B, K, D, D]
        batch, dim, n_cols = traj.shape
        n_masks = weights.shape[1]
        grad_p = torch.zeros_like(traj) if need_p else None
        grad_w = torch.zeros_like(weights) if need_w else None
        chunk = _CPU_BACKWARD_CHUNK if traj.device.type == "cpu" else _TORCH_GRAM_CHUNK
        for b in range(batch):
            g_b = gamma[b].reshape(n_masks * dim, dim)  # [K*D, D]
            for start in range(0, n_cols, chunk):
                sl = slice(start, start + chunk)
                p = traj[b, :, sl].to(torch.float64)  # [D, c]
                w = weights[b, :, sl].to(torch.float64)  # [K, c]
                gp = (g_b @ p).reshape(n_masks, dim, -1)  # [K, D, c] = Γ_k p
                if need_w:  # dL/dw_kn = 2 w_kn p_nᵀ Γ_k p_n
                    grad_w[b, :, sl] = (2.0 * w * (gp * p.unsqueeze(0)).sum(1)).to(weights.dtype)
                if need_p:  # dL/dp = Σ_k 2 Γ_k p diag(w_k²)
                    grad_p[b, :, sl] = (2.0 * (gp * w.square().unsqueeze(1)).sum(0)).to(traj.dtype)
        return grad_p, grad_w, None


class _QRTailSum(torch.autograd.Function):
    """Per (b, k) sum of σ_i, i >= rank, from the fp32 QR of Pᵀ and a float64 SVD of R."""

    @staticmethod
    def forward(ctx, traj, weights, rank):  # traj [B, D, N], weights [B, K, N] -> [B, K] float64
        compute = torch.float32 if traj.dtype in (torch.float16, torch.bfloat16) else traj.dtype
        p = traj.to(compute)
        w = weights.to(compute)
        dim = p.shape[1]
        p_t = (p.unsqueeze(1) * w.unsqueeze(2)).transpose(-1, -2)  # [B, K, N, D]
        reflectors, tau = torch.geqrf(p_t)  # [B, K, N, D], [B, K, D]
        r = reflectors[..., :dim, :].triu().to(torch.float64)  # [B, K, D, D]
        u, s, vh = torch.linalg.svd(r)
        ctx.save_for_backward(traj, weights, reflectors, tau, u, vh)
        ctx.rank = rank
        return s[..., rank:].sum(-1)

    @staticmethod
    def backward(ctx, grad_out):  # grad_out [B, K]
        traj, weights, reflectors, tau, u, vh = ctx.saved_tensors
        rank = ctx.rank
        # dL/dPᵀ = Q U_t V_tᵀ with Pᵀ = Q R, R = U Σ Vᵀ.
        m_small = (u[..., :, rank:] * grad_out.to(torch.float64)[..., None, None]) @ vh[..., rank:, :]
        dim = reflectors.shape[-1]
        padded = torch.zeros_like(reflectors)  # [B, K, N, D]
        padded[..., :dim, :] = m_small.to(reflectors.dtype)
        grad_pt = torch.ormqr(reflectors, tau, padded)  # [B, K, N, D] = Q_full @ [M; 0]
        grad_pk = grad_pt.transpose(-1, -2)  # [B, K, D, N] = dL/dP_k
        grad_p = grad_w = None
        compute = reflectors.dtype
        if ctx.needs_input_grad[0]:
            grad_p = (grad_pk * weights.to(compute).unsqueeze(2)).sum(1).to(traj.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (grad_pk * traj.to(compute).unsqueeze(1)).sum(2).to(weights.dtype)
        return grad_p, grad_w, None


def lowrank_tail_sums(
    traj: torch.Tensor, weights: torch.Tensor, rank: int, route: str = "gram"
) -> torch.Tensor:
    """Per (b, k) sum of the singular values beyond ``rank`` of P_{b,k} = traj_b · diag(weights_{b,k}).

    traj: [B, D, N]; weights: [B, K, N]. Returns [B, K] float64 (see lowrank_trajectory_loss).
    """
    if traj.dim() != 3 or weights.dim() != 3:
        raise ValueError(
            f"expected traj [B, D, N] and weights [B, K, N], got {list(traj.shape)} and {list(weights.shape)}"
        )
    if traj.shape[0] != weights.shape[0] or traj.shape[2] != weights.shape[2]:
        raise ValueError(f"traj {list(traj.shape)} and weights {list(weights.shape)} disagree on B or N")
    if rank < 0:
        raise ValueError(f"rank must be >= 0, got {rank}")
    batch, dim, n_cols = traj.shape
    n_masks = weights.shape[1]
    if route != "gram" or rank >= min(dim, n_cols):  # the Gram route checks its small Gram instead
        _check_finite("traj", traj)
        _check_finite("weights", weights)
    if rank >= min(dim, n_cols):
        return (traj.sum() * weights.sum() * 0.0).to(torch.float64).expand(batch, n_masks)
    if route == "gram":
        return _GramTailSum.apply(traj, weights, rank)
    if route == "qr":
        if n_cols < dim:
            raise ValueError(f"route 'qr' needs N >= D, got N={n_cols}, D={dim}; use route 'gram'")
        return _QRTailSum.apply(traj, weights, rank)
    raise ValueError(f"unknown route {route!r}; expected 'gram' or 'qr'")


def lowrank_trajectory_loss(
    traj: torch.Tensor, weights: torch.Tensor, rank: int, route: str = "gram"
) -> torch.Tensor:
    """Low-rank trajectory loss L_traj (METHOD.md §7.2), from a small D x D factor (§12.1).

    traj:    [B, D, N] trajectory matrix p, D = 2C rows (x of the C frames, then y), raw pixels;
             see trajectory_matrix.  Not centred, not visibility-masked.
    weights: [B, K, N] soft-mask values at the tracks' positions, already clamped (see mask_weights).
    rank:    r; singular values σ_{r+1} ... σ_D (1-based) enter the loss (paper r = 5).
    route:   "gram" (default: faster; float64, as it squares the condition number) or "qr" (fp32 Householder
             QR, backward stable: it never squares the condition number); see the module docstring.
    Returns a scalar in traj's dtype: (1 / (B K)) Σ_b Σ_k Σ_{i > r} σ_i(traj_b · diag(weights_{b,k})).
    Raises ValueError (naming the count) on non-finite input, before any factorisation.
    Gradients reach both traj and weights and stay finite for repeated or vanishing singular values.
    """
    tails = lowrank_tail_sums(traj, weights, rank, route)  # [B, K] float64
    out_dtype = traj.dtype if traj.dtype.is_floating_point else torch.float32
    return tails.mean().to(out_dtype)


# --------------------------------------------------------------------------------------------------
# flow loss
# --------------------------------------------------------------------------------------------------


def quadratic_basis(height: int, width: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Quadratic motion basis φ = [a, c, a², c², a·c, 1], a = i/H (row), c = j/W (column).

    Returns [H*W, 6] in row-major pixel order (METHOD.md §7.1).
    """
    a = torch.arange(height, dtype=dtype, device=device) / height
    c = torch.arange(width, dtype=dtype, device=device) / width
    aa, cc = torch.meshgrid(a, c, indexing="ij")  # [H, W]
    aa, cc = aa.reshape(-1), cc.reshape(-1)
    return torch.stack([aa, cc, aa * aa, cc * cc, aa * cc, torch.ones_like(aa)], dim=1)  # [L, 6]


def flow_loss(
    masks: torch.Tensor, flow: torch.Tensor, ridge: float = 1e-10, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Quadratic flow-reconstruction loss L_flow (METHOD.md §7.1; GWM's loss).

    masks: [B, K, H, W] softmax masks at the flow's resolution (the caller upsamples bilinearly).
    flow:  [B, 2, H, W] flow (u, v) in pixels (the caller clamps to ±20).
    ridge: Tikhonov term, relative to the mean diagonal of each 6 x 6 normal matrix; it only matters for
           masks that are ~0 everywhere (the reference's QR has none).
    weight: [B, H, W] per-pixel confidence in [0, 1] (lrtl.flow_confidence), or None (all 1, GWM's loss): each
           segment's fit and the error are weighted by it, so untrusted flow neither shapes nor scores a segment.
    For each (b, k) and each flow component, θ = argmin ‖diag(m_k) Φ θ − m_k ⊙ F‖² (6 + 6 = 12 parameters
    per segment), solved through the 6 x 6 normal equations in float64; F̂ = Σ_k diag(m_k) Φ θ_k.
    Returns the scalar mean over (b, component, i, j) of (F − F̂)², in masks' dtype; differentiable in
    masks (and flow) through the solve.
    """
    batch, n_masks, height, width = masks.shape
    if flow.shape != (batch, 2, height, width):
        raise ValueError(f"flow {list(flow.shape)} must be [B, 2, H, W] matching masks {list(masks.shape)}")
    n_pix = height * width
    phi = quadratic_basis(height, width, device=masks.device)  # [L, 6] float64
    m = masks.reshape(batch, n_masks, n_pix).to(torch.float64)  # [B, K, L]
    f = flow.reshape(batch, 2, n_pix).to(torch.float64)  # [B, 2, L]
    m2 = m.square()
    if weight is not None:
        c = weight.reshape(batch, 1, n_pix).to(torch.float64)  # [B, 1, L]
        m2 = m2 * c
    outer = (phi.unsqueeze(2) * phi.unsqueeze(1)).reshape(n_pix, 36)  # [L, 36]
    normal = (m2 @ outer).reshape(batch, n_masks, 6, 6)  # [B, K, 6, 6] = Φᵀ M² Φ
    rhs = (m2.unsqueeze(2) * f.unsqueeze(1)) @ phi  # [B, K, 2, 6] = (Φᵀ M² F)ᵀ per component
    diag_mean = normal.diagonal(dim1=-2, dim2=-1).mean(-1).detach()  # [B, K]
    reg = (ridge * diag_mean + torch.finfo(torch.float64).tiny)[..., None, None]
    eye = torch.eye(6, dtype=torch.float64, device=masks.device)
    theta = torch.linalg.solve(normal + reg * eye, rhs.transpose(-1, -2))  # [B, K, 6, 2]
    fitted = theta.transpose(-1, -2) @ phi.T  # [B, K, 2, L] = Φ θ_k
    recon = (m.unsqueeze(2) * fitted).sum(1)  # [B, 2, L]
    error = (f - recon).square()  # [B, 2, L]
    if weight is not None:
        error = error * c
    return error.mean().to(masks.dtype)


# --------------------------------------------------------------------------------------------------
# temporal loss
# --------------------------------------------------------------------------------------------------


def _pick_frame(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x: [B, C, ...]; index: [B] long. Returns x[b, index[b]] -> [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device)]


def _centre_index(t_index: torch.Tensor, n_context: int, compat_reference: bool) -> torch.Tensor:
    if compat_reference:  # reference bug (METHOD.md §11 item 1): the window centre for every frame
        return torch.full_like(t_index, n_context // 2)
    return t_index


def _consistency(
    masks_ref: torch.Tensor,
    vis_ref: torch.Tensor,
    loc_ref: torch.Tensor,
    masks_other: torch.Tensor,
    tracks_other_pix: torch.Tensor,
    vis_other: torch.Tensor,
    frame_size: tuple[int, int],
    align_corners: bool,
) -> torch.Tensor:
    """Weighted mask disagreement per item: Σ_n ω_n ‖M_ref(loc_n) − M_other(X_n)‖² / max(Σ ω, 1e-6) / 4.

    masks_*: [B, K, h, w]; vis_*: [B, N]; loc_ref: [B, N, 2] normalised; tracks_other_pix: [B, N, 2] pixels.
    Returns [B].
    """
    ref = sample_masks_at(masks_ref, loc_ref, align_corners)  # [B, K, N]
    other_loc = normalise_pixels(tracks_other_pix.to(masks_other.dtype), frame_size)  # [B, N, 2]
    other = sample_masks_at(masks_other, other_loc, align_corners)  # [B, K, N]
    weight = vis_ref.to(masks_ref.dtype) * vis_other.to(masks_ref.dtype)  # [B, N]
    err = (ref - other).square().sum(1)  # [B, N]
    return (err * weight).sum(-1) / weight.sum(-1).clamp_min(1e-6) / 4.0


def temporal_loss(
    masks_s: torch.Tensor,
    masks_s5: torch.Tensor,
    tracks_s: torch.Tensor,
    vis_s: torch.Tensor,
    loc_s: torch.Tensor,
    tracks_s5: torch.Tensor,
    vis_s5: torch.Tensor,
    loc_s5: torch.Tensor,
    t_index_s: torch.Tensor,
    t_index_s5: torch.Tensor,
    *,
    frame_size: tuple[int, int],
    offset: int = 5,
    compat_reference: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """Temporal-consistency loss for B frame pairs (s, s + offset) (METHOD.md §7.3).

    masks_s, masks_s5:   [B, K, h, w] softmax masks of frames s and s + offset (model resolution).
    tracks_s, tracks_s5: [B, C, N, 2] each frame's own (smoothed) context-window tracks, pixel (x, y) in a
                         frame of ``frame_size = (H, W)`` pixels (the track store's resolution).
    vis_s, vis_s5:       [B, C, N] visibility (bool or float).
    loc_s, loc_s5:       [B, N, 2] each frame's track positions at its own frame, normalised
                         (see sample_masks_at).
    t_index_s, t_index_s5: [B] long, index of the frame inside its own C-frame window (sample ``t_index``).
    offset:              the frame distance of the pair (paper 5).
    compat_reference:    use the window centre C // 2 (20 for C = 41) instead of t_index (reference bug,
                         METHOD.md §11 item 1).
    align_corners:       False reproduces the reference's half-pixel sampling mismatch (§11 item 6).

    Forward term (c = c_s):  ω_n = vis_s[c, n] vis_s[c + offset, n];
        ℓ_fwd = Σ_n ω_n ‖M_s(loc_s,n) − M_{s+5}(X^s_{c+offset, n})‖² / max(Σ_n ω_n, 1e-6) / 4.
    Backward term (c = c_{s+5}): the same from frame s+5's tracks at c − offset, sampled in M_s.
    Returns the scalar mean_b ℓ_fwd + mean_b ℓ_bwd.  The paper's L_temp sums this over the two pairs of an
    item, positions (0, 2) and (1, 3) (see temporal_loss_items).
    """
    batch, n_context = tracks_s.shape[:2]
    c_s = _centre_index(t_index_s.long(), n_context, compat_reference)
    c_s5 = _centre_index(t_index_s5.long(), tracks_s5.shape[1], compat_reference)
    fwd_idx = c_s + offset
    bwd_idx = c_s5 - offset
    if bool((fwd_idx >= n_context).any()) or bool((c_s < 0).any()):
        raise ValueError(
            f"temporal_loss: t_index_s {c_s.tolist()} + offset {offset} leaves the {n_context}-frame window"
        )
    if bool((bwd_idx < 0).any()) or bool((c_s5 >= tracks_s5.shape[1]).any()):
        raise ValueError(
            f"temporal_loss: t_index_s5 {c_s5.tolist()} - offset {offset} leaves the "
            f"{tracks_s5.shape[1]}-frame window"
        )
    fwd = _consistency(
        masks_s,
        _pick_frame(vis_s, c_s),
        loc_s,
        masks_s5,
        _pick_frame(tracks_s, fwd_idx),
        _pick_frame(vis_s, fwd_idx),
        frame_size,
        align_corners,
    )  # [B]
    bwd = _consistency(
        masks_s5,
        _pick_frame(vis_s5, c_s5),
        loc_s5,
        masks_s,
        _pick_frame(tracks_s5, bwd_idx),
        _pick_frame(vis_s5, bwd_idx),
        frame_size,
        align_corners,
    )  # [B]
    return fwd.mean() + bwd.mean()


def temporal_loss_items(
    masks: torch.Tensor,
    tracks: torch.Tensor,
    vis: torch.Tensor,
    loc: torch.Tensor,
    t_index: torch.Tensor,
    *,
    frame_size: tuple[int, int],
    offset: int = 5,
    compat_reference: bool = False,
    align_corners: bool = True,
) -> torch.Tensor:
    """L_temp over a batch of 4-frame items laid out [F, F+g, F+5, F+5+g] per item (METHOD.md §5, §7.3).

    masks: [4I, K, h, w]; tracks: [4I, C, N, 2] pixels; vis: [4I, C, N]; loc: [4I, N, 2] normalised;
    t_index: [4I] long.  Frame 4i + j is position j of item i.
    Returns the scalar Σ over the pairs (0, 2), (1, 3) of temporal_loss (reference reduction).
    """
    if masks.shape[0] % 4:
        raise ValueError(f"temporal_loss_items: batch {masks.shape[0]} is not a multiple of 4 frames")
    total = masks.new_zeros(())
    for first, second in ((0, 2), (1, 3)):
        total = total + temporal_loss(
            masks[first::4],
            masks[second::4],
            tracks[first::4],
            vis[first::4],
            loc[first::4],
            tracks[second::4],
            vis[second::4],
            loc[second::4],
            t_index[first::4],
            t_index[second::4],
            frame_size=frame_size,
            offset=offset,
            compat_reference=compat_reference,
            align_corners=align_corners,
        )
    return total
