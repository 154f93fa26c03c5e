"""Stage frames: one raw sequence (image folder or video file) -> a frames store at the configured size.

Frames are resized with PIL's Lanczos filter (the reference resizes with Lanczos, METHOD.md §3; PIL widens the
kernel when shrinking, so it also anti-aliases, unlike OpenCV's fixed-support INTER_LANCZOS4). Ground truth is
kept at its native resolution (METHOD.md §9 scores at GT resolution).

    python -m lrtl.frames --layout davis --images PATH --annotations DIR --dataset NAME --sequence NAME \
        --params '{"height": 240, "width": 432}' --out frames.zarr
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from lrtl import datasets, stores
from lrtl.cli import StageError, json_params, run_stage
from lrtl.params import Params

log = logging.getLogger(__name__)

RESIZE = "PIL Lanczos"


@dataclasses.dataclass(frozen=True)
class FramesParams(Params):
    height: int  # frame height of the store, px
    width: int   # frame width of the store, px


MIN_FRAMES = 2  # flow, tracks and training pair frames


def too_short(images: str | os.PathLike, n_frames: int) -> str:
    """The message for a sequence with too few frames: the video or folder, and the rule."""
    kind = "video" if datasets.is_video(images) else "image folder"
    return (f"{images}: the {kind} has {n_frames} frame{'s' if n_frames != 1 else ''}; a sequence needs at least "
            f"{MIN_FRAMES} frames, and more than its largest flow gap (flow.gaps, or datasets.<name>.gaps): add "
            f"frames, or move it out of the dataset folder")


def resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w, 3] -> uint8 [height, width, 3], Lanczos; aspect ratio not kept (as the reference)."""
    if rgb.shape[:2] == (height, width):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((width, height), Image.Resampling.LANCZOS))


def run_frames(*, layout: str, images: str | os.PathLike, annotations: str | os.PathLike | None, dataset: str,
               sequence: str, out: str | os.PathLike, params: FramesParams,
               allow_missing_annotations: bool = False) -> None:
    """Read every frame and the ground truth of one sequence and write the frames store atomically.

    In a layout that annotates every frame (DAVIS), a frame without its mask stops the stage naming the files,
    unless `allow_missing_annotations` (datasets.<name>.missing_annotations: warn): then the store records the
    frames in its `missing_annotations` attr, and the metrics and tables carry a warning."""
    if params.height <= 0 or params.width <= 0:
        raise StageError(f"frames.height/width must be positive, got {params.height}x{params.width}")
    missing = datasets.missing_annotations(images, annotations, layout)
    if missing and not allow_missing_annotations:
        raise StageError(datasets.missing_annotations_message(annotations, missing, datasets.count_frames(images),
                                                              layout, dataset))
    if missing:
        log.warning("%s/%s: no mask for %d frames (%s); only the annotated frames are scored, and the tables say so",
                    dataset, sequence, len(missing), ", ".join(missing))
    names, frames, gt, gt_index = datasets.read_sequence(images, annotations, layout)
    log.info("%s/%s: %d frames from %s, %d annotated frames from %s", dataset, sequence, len(names), images,
             len(gt_index), annotations)
    rgb = []  # [T] of uint8 [H, W, 3]
    read_names = []
    native = None
    for name, frame in tqdm(frames, total=len(names), desc=f"frames {sequence}",
                            disable=None):
        if native is None:
            native = frame.shape[:2]
        elif frame.shape[:2] != native:
            raise StageError(f"{images}: frame {name} is {frame.shape[1]}x{frame.shape[0]} but the first "
                             f"frame is {native[1]}x{native[0]}; all frames of a sequence must share a size")
        rgb.append(resize(frame, params.height, params.width))
        read_names.append(name)
        if len(read_names) % 50 == 0:
            log.info("%s/%s: %d/%d frames read", dataset, sequence, len(read_names), len(names))
    if not rgb:
        raise StageError(f"{images}: empty sequence")
    if len(rgb) < MIN_FRAMES:
        raise StageError(too_short(images, len(rgb)))
    if len(gt_index) and gt_index.max() >= len(read_names):
        raise StageError(f"{annotations}: annotation for frame {gt_index.max()} but {images} has only "
                         f"{len(read_names)} frames")
    stores.write_frames(out, np.stack(rgb), gt, gt_index, dataset=dataset, sequence=sequence,
                        frame_names=read_names, source=str(images),
                        annotations=None if annotations is None else str(annotations), layout=layout,
                        native_height=int(native[0]), native_width=int(native[1]), resize=RESIZE,
                        params=params.to_dict(), missing_annotations=missing)
    log.info("%s/%s: wrote %s (%d frames at %dx%d, native %dx%d)", dataset, sequence, out, len(rgb),
             params.width, params.height, native[1], native[0])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.frames", description=__doc__.splitlines()[0])
    parser.add_argument("--layout", required=True, choices=datasets.LAYOUTS, help="raw dataset layout")
    parser.add_argument("--images", type=Path, required=True,
                        help="image folder or video file of the sequence")
    parser.add_argument("--annotations", type=Path, help="ground-truth folder (omit when there is none)")
    parser.add_argument("--dataset", required=True, help="dataset name (attrs)")
    parser.add_argument("--sequence", required=True, help="sequence name (attrs)")
    parser.add_argument("--params", type=json_params, required=True, help="JSON of the config section frames")
    parser.add_argument("--out", type=Path, required=True, help="output frames store (.zarr)")
    parser.add_argument("--allow-missing-annotations", action="store_true",
                        help="datasets.<name>.missing_annotations: warn (davis layout: score the annotated frames "
                             "only, with a warning in the tables, instead of stopping)")

    def body(args: argparse.Namespace) -> None:
        params = FramesParams.from_mapping(args.params, "frames")
        run_frames(layout=args.layout, images=args.images, annotations=args.annotations, dataset=args.dataset,
                   sequence=args.sequence, out=args.out, params=params,
                   allow_missing_annotations=args.allow_missing_annotations)

    run_stage("frames", body, parser, argv)


if __name__ == "__main__":
    main()
