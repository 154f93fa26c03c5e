"""The paper model on CUDA at the paper's shapes, random weights, nothing downloaded (METHOD.md §6, §14).

    python -m pytest -m gpu tests/gpu/test_paper_model_gpu.py -s     # prints peak memory and throughput

One training step: 8 frames at 192x352 (2 items), K = 4, the flow loss at 480x854 and the low-rank trajectory loss
on 70,000 tracks of 41 frames per frame (r = 5), AdamW on the decoder; then no-grad inference. Skipped without
CUDA.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from lrtl.losses import flow_loss, lowrank_trajectory_loss, mask_weights, trajectory_matrix
from lrtl.model import build_model
from lrtl.model_inputs import normalize_images

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none visible to torch)"),
]

ROOT = Path(__file__).resolve().parents[2]
FRAMES, TRACKS, CONTEXT, FLOW_SIZE = 8, 70_000, 41, (480, 854)


def paper_model_cfg() -> dict:
    """config.yaml's model defaults with config.paper.yaml's model section over them; DINO weights random."""
    base = yaml.safe_load((ROOT / "config.yaml").read_text())["train"]["defaults"]["model"]
    paper = yaml.safe_load((ROOT / "config.paper.yaml").read_text())["train"]["defaults"]["model"]
    cfg = {**base, **{k: v for k, v in paper.items() if k != "backbone"}}
    cfg["backbone"] = {**base["backbone"], **paper.get("backbone", {}), "weights": None}
    return cfg


def test_paper_model_trains_and_infers_on_cuda():
    device = torch.device("cuda")
    torch.manual_seed(0)
    cfg = paper_model_cfg()
    model = build_model(cfg).to(device).train()
    height, width = cfg["input_size"]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1.5e-4)
    rgb = torch.randint(0, 256, (FRAMES, height, width, 3), dtype=torch.uint8, device=device)  # [B, h, w, 3]
    flow = torch.randn(FRAMES, 2, *FLOW_SIZE, device=device).clamp(-20, 20)  # [B, 2, H, W]
    tracks = torch.rand(FRAMES, CONTEXT, TRACKS, 2, device=device) * torch.tensor([width, height], device=device)
    loc = torch.rand(FRAMES, TRACKS, 2, device=device) * 2 - 1  # [B, N, 2] normalised

    torch.cuda.reset_peak_memory_stats(device)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = model(normalize_images(rgb))
    assert out.logits.shape == (FRAMES, cfg["k"], height, width)
    assert out.features.shape == (FRAMES, cfg["hidden"], height, width)  # 194x354 centre-cropped
    masks = out.masks  # [B, K, h, w]
    big = F.interpolate(masks, size=FLOW_SIZE, mode="bilinear", align_corners=False)  # [B, K, H, W]
    loss = 0.03 * flow_loss(big, flow) + 5e-5 * lowrank_trajectory_loss(
        trajectory_matrix(tracks), mask_weights(masks, loc), rank=5
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)
    optimizer.step()
    torch.cuda.synchronize(device)
    step_s = time.perf_counter() - start
    train_peak = torch.cuda.max_memory_allocated(device) / 2**30
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in model.backbone.parameters())  # frozen
    assert model.mask_decoder.query.weight.grad is not None

    model.eval()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        model(normalize_images(rgb))  # warm-up
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        masks = model(normalize_images(rgb)).masks
        torch.cuda.synchronize(device)
    infer_s = time.perf_counter() - start
    assert torch.allclose(masks.sum(1), torch.ones_like(masks[:, 0]), atol=1e-4)
    print(
        f"\npaper model on {torch.cuda.get_device_name(device)}: train step (first, incl. warm-up) {step_s:.2f} s, "
        f"peak {train_peak:.1f} GiB; inference {FRAMES / infer_s:.1f} frames/s, "
        f"peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    )
