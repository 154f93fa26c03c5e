"""Pictures to look at: binary masks, overlay contact sheets, animated overlays, K-mask views, bar charts
and the training loss curve.

    python -m lrtl.pictures --masks masks.zarr --frames F.zarr --params '<json of config infer.pictures>' --out DIR

The picture folder of one sequence is its own CPU job reading the masks store, so that changing a picture
setting redraws pictures and never reruns inference.

Which merged mask is shown as foreground (pictures only; scores take the best of the two against GT, METHOD.md
§9.3): the first one where the masks say so, i.e. the motion merge (lrtl.infer, group 0 moves against the camera)
and the no-learning baselines. Otherwise (feature merges) a heuristic: the mask that covers the smaller fraction of
the image border, because background regions usually reach the frame edge and objects usually do not; ties go to
the smaller mask.

The binary mask PNGs come out at the sequence's native resolution (the frames store's native_height x
native_width: a video's own size, before the store's resize); the sheets and the GIF are thumbnails.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
from PIL import Image

from lrtl.cli import json_params, run_stage
from lrtl.imageops import upsample
from lrtl.params import Params
from lrtl.stores import atomic_path, open_store, read_masks, read_rgb

log = logging.getLogger(__name__)

# Distinct colours for the K soft masks (tab10), RGB.
PALETTE = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=np.float32,
)
FOREGROUND_COLOUR = np.array([255, 40, 40], dtype=np.float32)
FOREGROUND_FIRST = ("motion", "baseline")  # masks-store `merge` attrs whose merged mask 0 is the foreground


@dataclasses.dataclass(frozen=True)
class PicturesParams(Params):
    thumb_width: int  # width of one frame in the contact sheets and the GIF, pixels
    sheet_columns: int  # frames per row of a contact sheet
    sheet_max_frames: int  # at most this many frames (evenly spaced) per contact sheet
    gif_fps: float  # frames per second of the animated overlay
    alpha: float  # opacity of the mask colour over the frame, 0..1


def border_fraction(mask: np.ndarray) -> float:
    """Fraction of the border pixels of a boolean mask [H, W] that are set."""
    border = np.concatenate([mask[0, :], mask[-1, :], mask[1:-1, 0], mask[1:-1, -1]])
    return float(border.mean()) if border.size else 0.0


def foreground_index(merged_bin: np.ndarray) -> np.ndarray:
    """Index (0 or 1) of the merged mask shown as foreground, per frame: int [T] from bool [T, 2, h, w]."""
    choice = np.zeros(merged_bin.shape[0], dtype=np.int64)
    for t, pair in enumerate(merged_bin):
        key = [(border_fraction(m), m.mean()) for m in pair]
        choice[t] = int(key[1] < key[0])
    return choice


def overlay(
    rgb: np.ndarray, mask: np.ndarray, alpha: float, colour: np.ndarray = FOREGROUND_COLOUR
) -> np.ndarray:
    """rgb uint8 [H, W, 3] with `colour` blended where mask [H, W] (bool or soft 0..1) is on."""
    weight = alpha * mask.astype(np.float32)[..., None]  # [H, W, 1]
    return np.clip(rgb * (1 - weight) + colour * weight, 0, 255).astype(np.uint8)


def colour_masks(soft: np.ndarray) -> np.ndarray:
    """K soft masks [K, h, w] (summing to 1) as one picture uint8 [h, w, 3], one palette colour per mask."""
    palette = PALETTE[np.arange(soft.shape[0]) % len(PALETTE)]  # [K, 3]
    return np.clip(np.einsum("khw,kc->hwc", soft.astype(np.float32), palette), 0, 255).astype(np.uint8)


def thumbnail(image: np.ndarray, width: int) -> np.ndarray:
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def contact_sheet(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized images [h, w, 3] row-major into one uint8 picture, 2-pixel white gutters."""
    h, w = images[0].shape[:2]
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    gutter = 2
    sheet = np.full((rows * (h + gutter) - gutter, columns * (w + gutter) - gutter, 3), 255, dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * (h + gutter) : r * (h + gutter) + h, c * (w + gutter) : c * (w + gutter) + w] = image
    return sheet


def sample_frames(n_frames: int, at_most: int) -> np.ndarray:
    """At most `at_most` evenly spaced frame indices, first and last included."""
    if n_frames <= at_most:
        return np.arange(n_frames)
    return np.unique(np.round(np.linspace(0, n_frames - 1, at_most)).astype(np.int64))


def gif_svg(gif: bytes, width: int, height: int) -> str:
    """An SVG image that shows an animated GIF (embedded as base64) at twice its size. Snakemake's HTML report
    shows SVG and PNG results as images, but a GIF only as a download, and it cannot show a page (.html) over
    2 MB at all (browsers cap data URLs in frames at 2 MB, and the report embeds every result as one)."""
    data = base64.b64encode(gif).decode("ascii")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * width}" height="{2 * height}" '
        f'viewBox="0 0 {width} {height}">\n<title>animated mask overlay</title>\n'
        f'<image width="{width}" height="{height}" href="data:image/gif;base64,{data}"/>\n</svg>\n'
    )


def write_png(path: str | os.PathLike, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG")


def write_sequence_pictures(
    out_dir: str | os.PathLike,
    rgb: np.ndarray,
    soft: np.ndarray,
    merged: np.ndarray,
    params: PicturesParams,
    native_size: Sequence[int] | None = None,
    foreground_first: bool = False,
) -> dict[str, str]:
    """Write the picture folder of one sequence atomically; returns {kind: file name}.

    rgb uint8 [T, H, W, 3] (frames store resolution); soft float [T, K, h, w]; merged float [T, 2, h, w];
    native_size: (height, width) of the binary PNGs (default H, W); foreground_first: merged mask 0 is the
    foreground (else the border heuristic above picks it).
    Folder contents:
      NNNNN.png             binary foreground (0/255) per frame at native_size
      overlay-sheet.png     contact sheet of foreground overlays (at most sheet_max_frames frames)
      overlay.gif           animated foreground overlay, every frame
      overlay.svg           overlay.gif inside an SVG image, as Snakemake's HTML report can show it (gif_svg)
      k-masks-sheet.png     the K soft masks before merging, one colour per mask, blended over the frame
    """
    n_frames, height, width, _ = rgb.shape
    native_h, native_w = (height, width) if native_size is None else (int(native_size[0]), int(native_size[1]))
    merged_full = upsample(merged, height, width)  # [T, 2, H, W]
    merged_bin = merged_full > 0.5
    choice = np.zeros(n_frames, dtype=np.int64) if foreground_first else foreground_index(merged_bin)
    foreground = merged_bin[np.arange(n_frames), choice]  # [T, H, W]
    names = {
        "overlay_sheet": "overlay-sheet.png",
        "overlay_gif": "overlay.gif",
        "overlay_svg": "overlay.svg",
        "k_masks": "k-masks-sheet.png",
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for t in range(n_frames):
            native = upsample(merged[t, choice[t]][None], native_h, native_w)[0] > 0.5  # [native_h, native_w]
            write_png(tmp / f"{t:05d}.png", native.astype(np.uint8) * 255)
        overlays = [
            thumbnail(overlay(rgb[t], foreground[t], params.alpha), params.thumb_width)
            for t in range(n_frames)
        ]
        picked = sample_frames(n_frames, params.sheet_max_frames)
        write_png(
            tmp / names["overlay_sheet"], contact_sheet([overlays[t] for t in picked], params.sheet_columns)
        )
        frames = [Image.fromarray(image) for image in overlays]
        frames[0].save(
            tmp / names["overlay_gif"],
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=max(1, round(1000 / params.gif_fps)),
            loop=0,
        )
        (tmp / names["overlay_svg"]).write_text(
            gif_svg((tmp / names["overlay_gif"]).read_bytes(), overlays[0].shape[1], overlays[0].shape[0])
        )
        k_views = []
        for t in picked:
            coloured = colour_masks(upsample(soft[t], height, width))  # [H, W, 3]
            blended = np.clip(rgb[t] * (1 - params.alpha) + coloured * params.alpha, 0, 255).astype(np.uint8)
            k_views.append(thumbnail(blended, params.thumb_width))
        write_png(tmp / names["k_masks"], contact_sheet(k_views, params.sheet_columns))
    log.info("wrote %d binary masks and overlays to %s", n_frames, out_dir)
    return names


def bar_chart(
    out: str | os.PathLike, values: Mapping[str, Mapping[str, float]], title: str, ylabel: str
) -> None:
    """Grouped bars: values[series][category] (e.g. run -> sequence -> J x100), written atomically as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    series = list(values)
    categories = sorted({c for s in series for c in values[s]})
    figure = Figure(figsize=(max(4.0, 0.5 * len(categories) * max(1, len(series)) + 1.5), 3.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(series))
    for i, name in enumerate(series):
        heights = [values[name].get(c, np.nan) for c in categories]
        axes.bar(np.arange(len(categories)) + (i - (len(series) - 1) / 2) * width, heights, width, label=name)
    axes.set_xticks(np.arange(len(categories)), categories, rotation=45, ha="right", fontsize=8)
    axes.set_ylabel(ylabel)
    axes.set_ylim(0, 100)
    axes.set_title(title, fontsize=10)
    if series:
        axes.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")


def write_curve(rows: Sequence[Mapping[str, Any]], out: str | os.PathLike, title: str) -> None:
    """Training curve from metrics.jsonl rows (lrtl.train): loss terms (log scale) and learning rate against
    step, plus validation J when there is any, written atomically as PNG (Agg canvas; no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    loss_rows = [row for row in rows if "loss" in row]
    val_rows = [row for row in rows if "val_j" in row]
    figure = Figure(figsize=(8, 7 if val_rows else 4.5), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(2 if val_rows else 1, 1, 1)
    steps = [row["step"] for row in loss_rows]
    for name in ("loss", "loss_flow", "loss_traj", "loss_temp"):
        values = [row.get(name) for row in loss_rows]
        if any(v is not None and v > 0 for v in values):
            axes.plot(steps, [v if v is not None and v > 0 else np.nan for v in values], label=name)
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("weighted loss")
    axes.set_title(title)
    if loss_rows:
        lr_axes = axes.twinx()
        lr_axes.plot(steps, [row["lr"] for row in loss_rows], color="grey", linestyle=":", label="lr")
        lr_axes.set_ylabel("learning rate")
    axes.legend(loc="upper right")
    if val_rows:
        val_axes = figure.add_subplot(2, 1, 2, sharex=axes)
        val_axes.plot([r["step"] for r in val_rows], [100 * r["val_j"] for r in val_rows], marker="o")
        best = max(val_rows, key=lambda r: r["val_j"])
        val_axes.annotate(f"best {100 * best['val_j']:.1f} (step {best['step']}, selected on GT)",
                          (best["step"], 100 * best["val_j"]), textcoords="offset points", xytext=(0, -14),
                          ha="center", fontsize=8)
        val_axes.set_xlabel("step")
        val_axes.set_ylabel("validation J x100")
    figure.tight_layout()
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format="png")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.pictures", description=__doc__.split("\n")[0])
    parser.add_argument("--masks", required=True, help="masks store of one sequence (lrtl.infer, lrtl.baseline)")
    parser.add_argument("--frames", required=True, help="frames store of the sequence")
    parser.add_argument("--params", required=True, type=json_params, help="JSON of the config section "
                        "`infer.pictures`")
    parser.add_argument("--out", required=True, help="picture folder to write")

    def body(args: argparse.Namespace) -> None:
        params = PicturesParams.from_mapping(args.params, "infer.pictures")
        soft, merged, attrs = read_masks(args.masks)  # [T, K, h, w], [T, 2, h, w]
        frame_attrs = open_store(args.frames, "frames").attrs
        native = (frame_attrs.get("native_height"), frame_attrs.get("native_width"))
        write_sequence_pictures(args.out, read_rgb(args.frames), soft, merged, params,
                                native_size=None if None in native else native,
                                foreground_first=attrs.get("merge") in FOREGROUND_FIRST)

    run_stage("pictures", body, parser, argv)


if __name__ == "__main__":
    main()
