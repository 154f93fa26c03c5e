"""Raw dataset layouts: the only module that knows where frames and ground truth live on disk.

Layouts (`root` is the dataset folder the config points at; `resolution` only matters for davis/synthetic):

davis, synthetic   root/JPEGImages/<res>/<seq>/00000.jpg        root/Annotations/<res>/<seq>/00000.png (0/255)
fbms               root/<seq>/<seq>_0001.jpg (1-based)          root/<seq>/GroundTruth/<seq>_0001_gt.ppm|.pgm
                   (sequences may sit under root/Trainingset/ and root/Testset/, as FBMS59 ships them);
                   sparse; white = background, any other colour = foreground.
                   MotionGrouping-cleaned variant (root/JPEGImages/<seq>/00001.jpg, root/Annotations/<seq>/
                   00001.png, sparse, foreground > 0.1 * 255), used when root/JPEGImages exists.
segtrackv2         root/JPEGImages/<seq>/*.(png|bmp|jpg)        root/GroundTruth/<seq>/ (masks directly, or
                   one sub-folder per object, OR-merged) or root/Annotations/<seq>/ (MotionGrouping-cleaned)
folder             root/<name>/ image folders and/or root/<name>.(mp4|avi|mov|mkv) videos; no ground truth

Ground truth is matched to frames by file stem, else by the frame number in the name (FBMS `_gt` suffixes and
differing extensions are handled). Every ground-truth mask must have its frame's size.

Sequence sheets (workflow/resources/sequences/<dataset>.tsv: sequence, split, n_frames) are written from the data
once, so that the workflow knows every sequence and frame count at parse time:

    python -m lrtl.datasets index --layout fbms --root data/FBMS59 --resolution "" \
        --splits-from workflow/resources/sequences/fbms59.tsv --out workflow/resources/sequences/fbms59.tsv

Splits come from --splits-from (an existing sheet: its sequences, in its order), else from the FBMS
Trainingset/Testset folders (train/test), else `all`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lrtl.cli import StageError, run_stage
from lrtl.stores import atomic_path

log = logging.getLogger(__name__)

LAYOUTS = ("synthetic", "davis", "fbms", "segtrackv2", "folder")
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv")
LAYOUT_HELP = {
    "davis": "JPEGImages/<res>/<seq>/00000.jpg and Annotations/<res>/<seq>/00000.png",
    "synthetic": "JPEGImages/<res>/<seq>/00000.jpg and Annotations/<res>/<seq>/00000.png",
    "fbms": "<seq>/<seq>_0001.jpg and <seq>/GroundTruth/<seq>_0001_gt.ppm (or JPEGImages/<seq>/ and "
            "Annotations/<seq>/ when cleaned)",
    "segtrackv2": "JPEGImages/<seq>/* and GroundTruth/<seq>/* (or GroundTruth/<seq>/<object>/*)",
    "folder": "<name>/ image folders or <name>.mp4|.avi|.mov|.mkv video files",
}


def _check_layout(layout: str, path: str | os.PathLike) -> None:
    if layout not in LAYOUTS:
        expected = "; ".join(f"{name}: {LAYOUT_HELP[name]}" for name in LAYOUTS)
        raise StageError(f"{path}: unknown dataset layout {layout!r}; expected one of {', '.join(LAYOUTS)} "
                         f"(datasets.<name>.layout in the config) — {expected}")


def _expected(layout: str) -> str:
    return f"expected the {layout} layout: {LAYOUT_HELP[layout]}"


def _number(stem: str) -> int | None:
    """The frame number in a file stem: the last digit run (bear01_0020_gt -> 20, 00005 -> 5)."""
    found = re.findall(r"\d+", stem)
    return int(found[-1]) if found else None


def _sort_key(path: Path) -> tuple:
    n = _number(path.stem)
    return (n is None, n if n is not None else 0, path.name)


def image_files(folder: str | os.PathLike) -> list[Path]:
    """Image files of a folder, ordered by frame number (then name)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS
             and not p.name.startswith(".")]
    return sorted(files, key=_sort_key)


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTS


# --------------------------------------------------------------------------- sequences of a dataset


def _fbms_cleaned(root: Path) -> bool:
    return (root / "JPEGImages").is_dir()


def _fbms_sequence_dirs(root: Path) -> dict[str, Path]:
    parents = [root / s for s in ("Trainingset", "Testset") if (root / s).is_dir()] or [root]
    out = {}
    for parent in parents:
        for d in sorted(parent.iterdir()):
            if d.is_dir() and d.name not in ("GroundTruth",) and image_files(d):
                out[d.name] = d
    return out


def _image_root(root: Path, layout: str, resolution: str) -> Path:
    if layout in ("davis", "synthetic"):
        return root / "JPEGImages" / resolution
    if layout == "segtrackv2" or (layout == "fbms" and _fbms_cleaned(root)):
        return root / "JPEGImages"
    return root


def _sequence_images(root: Path, layout: str, resolution: str) -> dict[str, Path]:
    """name -> images path (folder or video file) of every sequence."""
    if not root.is_dir():
        raise StageError(f"{root}: dataset folder not found; {_expected(layout)}")
    if layout == "fbms" and not _fbms_cleaned(root):
        return _fbms_sequence_dirs(root)
    base = _image_root(root, layout, resolution)
    if not base.is_dir():
        raise StageError(f"{base}: image folder not found; {_expected(layout)}")
    out = {}
    empty = []
    for entry in sorted(base.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and image_files(entry):
            out[entry.name] = entry
        elif entry.is_dir():
            empty.append(entry)
        elif layout == "folder" and entry.is_file() and is_video(entry):
            if entry.stem in out:
                raise StageError(f"{entry}: sequence name {entry.stem!r} is used twice in {base}")
            out[entry.stem] = entry
    if empty:
        raise StageError(f"{', '.join(map(str, empty))}: sequence folder(s) with no image files "
                         f"({', '.join(IMAGE_EXTS)}); put the frames there or move the folder out of {base}")
    return out


def list_sequences(root: str | os.PathLike, layout: str, resolution: str) -> list[tuple[str, int]]:
    """(name, n_frames) of every sequence; video frame counts come from the container (may be approximate)."""
    _check_layout(layout, root)
    seqs = _sequence_images(Path(root), layout, resolution)
    if not seqs:
        raise StageError(f"{root}: no sequences found; {_expected(layout)}")
    return [(name, count_frames(path)) for name, path in seqs.items()]


def sequence_sources(root: str | os.PathLike, layout: str, resolution: str, sequence: str
                     ) -> dict[str, Path | None]:
    """{"images": folder or video file, "annotations": folder or None} of one sequence (rule inputs).

    For the synthetic layout the paths are computed, not checked: the synthetic rule writes them.
    """
    _check_layout(layout, root)
    root = Path(root)
    if layout == "synthetic":  # outputs of the synthetic rule: the paths exist only once it has run
        return {"images": root / "JPEGImages" / resolution / sequence,
                "annotations": root / "Annotations" / resolution / sequence}
    seqs = _sequence_images(root, layout, resolution)
    if sequence not in seqs:
        found = ", ".join(list(seqs)[:8])
        raise StageError(f"{root}: no sequence {sequence!r} (found {len(seqs)}: {found}...); "
                         f"{_expected(layout)}")
    images = seqs[sequence]
    if layout in ("davis", "synthetic"):
        annotations = root / "Annotations" / resolution / sequence
    elif layout == "fbms":
        annotations = (root / "Annotations" / sequence) if _fbms_cleaned(root) else images / "GroundTruth"
    elif layout == "segtrackv2":
        annotations = root / "GroundTruth" / sequence
        if not annotations.is_dir() and (root / "Annotations" / sequence).is_dir():
            annotations = root / "Annotations" / sequence
    else:
        return {"images": images, "annotations": None}
    if not annotations.is_dir():
        raise StageError(f"{annotations}: annotation folder of {sequence!r} not found; {_expected(layout)}")
    return {"images": images, "annotations": annotations}


# --------------------------------------------------------------------------- frames


def read_image(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """Decode an image fully (uint8 [H, W, 3] for RGB, [H, W] for L); a truncated file raises StageError."""
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 1024))
            tail = f.read()
        if b"\xff\xd9" not in tail:
            raise StageError(f"{path} is corrupt or truncated (no JPEG end marker); re-extract or remove it")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode) if im.mode != mode else im).copy()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise StageError(f"{path} is corrupt or truncated ({err}); re-extract or remove it") from err


def count_frames(images: str | os.PathLike) -> int:
    images = Path(images)
    if is_video(images):
        cap = cv2.VideoCapture(str(images))
        try:
            return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
        finally:
            cap.release()
    return len(image_files(images))


def frame_names(images: str | os.PathLike) -> list[str]:
    """Frame names (file stems; 00000, 00001... for a video) in order, without decoding."""
    images = Path(images)
    if is_video(images):
        return [f"{i:05d}" for i in range(count_frames(images))]
    return [p.stem for p in image_files(images)]


def iter_frames(images: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, rgb uint8 [H, W, 3]) for every frame of an image folder or a video file, in order."""
    images = Path(images)
    if not images.exists():
        raise StageError(f"{images}: no such image folder or video file")
    if is_video(images):
        cap = cv2.VideoCapture(str(images))
        if not cap.isOpened():
            raise StageError(f"{images}: OpenCV cannot open this video; "
                             "re-encode it (e.g. ffmpeg -c:v libx264)")
        try:
            i = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield f"{i:05d}", np.ascontiguousarray(bgr[..., ::-1])
                i += 1
        finally:
            cap.release()
        if i == 0:
            raise StageError(f"{images}: the video has no readable frames; re-encode or remove it")
        return
    if not images.is_dir():
        raise StageError(f"{images}: not an image folder nor a video file ({', '.join(VIDEO_EXTS)})")
    files = image_files(images)
    if not files:
        raise StageError(f"{images}: the sequence has no image files ({', '.join(IMAGE_EXTS)})")
    for path in files:
        yield path.stem, read_image(path, "RGB")


# --------------------------------------------------------------------------- ground truth


def _gt_stem(stem: str) -> str:
    return re.sub(r"_gt$", "", stem)


def _binarise(path: Path, layout: str, fbms_raw: bool) -> np.ndarray:
    """Foreground bool [H, W] of one mask file."""
    if fbms_raw:
        rgb = read_image(path, "RGB")  # white background, objects in colour
        return (rgb < 255).any(axis=-1)
    arr = read_image(path, "RGB").max(axis=-1)  # colour-coded object masks count as foreground
    if layout == "fbms":
        return arr > 0.1 * 255  # MotionGrouping cleaning threshold
    if path.suffix.lower() in (".jpg", ".jpeg"):
        return arr > 127  # lossy masks
    return arr > 0


def _mask_files(annotations: Path, layout: str) -> list[list[Path]]:
    """Groups of files to OR-merge: one group per object folder, or one group of the folder's files."""
    subdirs = sorted(d for d in annotations.iterdir() if d.is_dir() and image_files(d))
    if layout == "segtrackv2" and subdirs:
        return [image_files(d) for d in subdirs]
    return [image_files(annotations)]


def read_ground_truth(annotations: str | os.PathLike, layout: str, names: list[str],
                      frame_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(gt bool [A, Hg, Wg], gt_index int32 [A]) for the frames `names` of size frame_size = (H, W).

    Sparse ground truth (FBMS) gives A < T; a mask whose size differs from its frame raises StageError.
    """
    _check_layout(layout, annotations)
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise StageError(f"{annotations}: annotation folder not found; {_expected(layout)}")
    fbms_raw = layout == "fbms" and annotations.name == "GroundTruth"
    by_stem = {n: i for i, n in enumerate(names)}
    by_number: dict[int, int] = {}
    for i, n in enumerate(names):
        num = _number(n)
        if num is not None:
            by_number.setdefault(num, i)
    merged: dict[int, np.ndarray] = {}
    for group in _mask_files(annotations, layout):
        for path in group:
            stem = _gt_stem(path.stem)
            index = by_stem.get(stem)
            if index is None and _number(stem) is not None:
                index = by_number.get(_number(stem))
            if index is None:
                raise StageError(f"{path}: no frame matches this annotation "
                                 f"(frames {names[0]}..{names[-1]}); {_expected(layout)}")
            mask = _binarise(path, layout, fbms_raw)
            if mask.shape != tuple(frame_size):
                raise StageError(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its frame "
                                 f"{names[index]} ({frame_size[1]}x{frame_size[0]}); {_expected(layout)}")
            merged[index] = merged[index] | mask if index in merged else mask
    if not merged:
        raise StageError(f"{annotations}: no annotation files ({', '.join(IMAGE_EXTS)}); {_expected(layout)}")
    order = sorted(merged)
    gt = np.stack([merged[i] for i in order])  # [A, Hg, Wg]
    return gt, np.asarray(order, dtype=np.int32)


DENSE_GT_LAYOUTS = ("davis", "synthetic")  # layouts that annotate every frame (FBMS is sparse by design)


def missing_annotations(images: str | os.PathLike, annotations: str | os.PathLike | None, layout: str) -> list[str]:
    """Names of the frames without a mask, in a layout that promises one for every frame (DENSE_GT_LAYOUTS); [] for
    the other layouts, without annotations, or when the annotation folder is missing (read_ground_truth says so).
    Masks match frames by stem or frame number, as in read_ground_truth; nothing is decoded."""
    if layout not in DENSE_GT_LAYOUTS or annotations is None or not Path(annotations).is_dir():
        return []
    stems = {_gt_stem(path.stem) for path in image_files(annotations)}
    numbers = {_number(stem) for stem in stems} - {None}
    return [name for name in frame_names(images) if name not in stems and _number(name) not in numbers]


def missing_annotations_message(annotations: str | os.PathLike, missing: Sequence[str], n_frames: int, layout: str,
                                dataset: str) -> str:
    """The error for masks missing where the layout annotates every frame: the files, and the two fixes."""
    shown = ", ".join(str(Path(annotations) / f"{name}.png") for name in missing[:6])
    more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
    return (f"{annotations}: no mask for {len(missing)} of {n_frames} frames ({shown}{more}); the {layout} layout "
            f"annotates every frame. Restore the missing files, or set datasets.{dataset}.missing_annotations: warn "
            f"to score the annotated frames only (the tables then warn about it)")


def read_sequence(images: str | os.PathLike, annotations: str | os.PathLike | None, layout: str
                  ) -> tuple[list[str], Iterator[tuple[str, np.ndarray]], np.ndarray, np.ndarray]:
    """(frame names, iterator of (name, rgb uint8 [H, W, 3]), gt bool [A, Hg, Wg], gt_index int32 [A]).

    The first frame is decoded once to learn the frame size the ground truth must match; without annotations
    gt is empty ([0, H, W]).
    """
    _check_layout(layout, images)
    names = frame_names(images)
    frames = iter_frames(images)
    first = next(frames, None)
    frames.close()
    if first is None or not names:
        raise StageError(f"{images}: empty sequence; {_expected(layout)}")
    height, width = first[1].shape[:2]
    if annotations is None:
        gt, gt_index = np.zeros((0, height, width), bool), np.zeros(0, np.int32)
    else:
        gt, gt_index = read_ground_truth(annotations, layout, names, (height, width))
    return names, iter_frames(images), gt, gt_index


# --------------------------------------------------------------------------- sequence sheets

SHEET_COLUMNS = ["sequence", "split", "n_frames"]
FBMS_SPLIT_FOLDERS = {"Trainingset": "train", "Testset": "test"}


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """A sequence sheet as a DataFrame (sequence, split, n_frames; n_frames may be missing = <NA>)."""
    path = Path(path)
    try:
        sheet = pd.read_csv(path, sep="\t", dtype={"sequence": str, "split": str, "n_frames": "Int64"},
                            keep_default_na=False, na_values={"n_frames": [""]})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise StageError(f"{path}: not a readable sequence sheet ({err}); expected a tab-separated file with "
                         f"the header {' '.join(SHEET_COLUMNS)}") from err
    if list(sheet.columns) != SHEET_COLUMNS:
        raise StageError(f"{path}: columns {list(sheet.columns)}; a sequence sheet has exactly the header "
                         f"{' '.join(SHEET_COLUMNS)} (tab-separated)")
    repeated = sorted(set(sheet["sequence"][sheet["sequence"].duplicated()]))
    if repeated:
        raise StageError(f"{path}: sequences listed twice: {', '.join(repeated)}; keep one row each")
    return sheet


def sequence_splits(root: str | os.PathLike, layout: str, resolution: str) -> dict[str, str]:
    """name -> split of every sequence: train/test from the FBMS Trainingset/Testset folders, else all."""
    _check_layout(layout, root)
    seqs = _sequence_images(Path(root), layout, resolution)
    if layout == "fbms" and not _fbms_cleaned(Path(root)):
        return {name: FBMS_SPLIT_FOLDERS.get(path.parent.name, "all") for name, path in seqs.items()}
    return dict.fromkeys(seqs, "all")


def index_sheet(root: str | os.PathLike, layout: str, resolution: str,
                splits_from: str | os.PathLike | None = None) -> pd.DataFrame:
    """The sequence sheet of a dataset from its data: names, splits and frame counts (no image is decoded).

    With `splits_from` (an existing sheet) the rows are that sheet's sequences in its order, with its splits;
    a sequence of the sheet missing from the data is an error, data sequences not in the sheet are left out.
    """
    counts = dict(list_sequences(root, layout, resolution))
    if splits_from is None:
        splits = sequence_splits(root, layout, resolution)
        return pd.DataFrame({"sequence": list(counts), "split": [splits[n] for n in counts],
                             "n_frames": list(counts.values())}, columns=SHEET_COLUMNS)
    sheet = read_sheet(splits_from)
    missing = [name for name in sheet["sequence"] if name not in counts]
    if missing:
        raise StageError(f"{root}: no sequence {', '.join(missing)} of {splits_from}; "
                         f"{_expected(layout)} (or drop the rows from the sheet)")
    extra = sorted(set(counts) - set(sheet["sequence"]))
    if extra:
        log.warning("%s: %d sequences not in %s are left out: %s", root, len(extra), splits_from, ", ".join(extra))
    return pd.DataFrame({"sequence": sheet["sequence"], "split": sheet["split"],
                         "n_frames": [counts[n] for n in sheet["sequence"]]}, columns=SHEET_COLUMNS)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lrtl.datasets",
                                     description="Dataset layouts: write a sequence sheet from the data.")
    commands = parser.add_subparsers(dest="command", required=True)
    index = commands.add_parser("index", help="write the sequence sheet (sequence, split, n_frames) of a dataset")
    index.add_argument("--layout", required=True, help=f"one of {', '.join(LAYOUTS)}")
    index.add_argument("--root", required=True, help="dataset folder (datasets.<name>.root)")
    index.add_argument("--resolution", default="", help="<res> folder of the DAVIS layout (datasets.<name>.resolution)")
    index.add_argument("--splits-from", help="existing sheet whose sequences and splits to keep (counts are redone)")
    index.add_argument("--out", required=True, help="sheet to write (workflow/resources/sequences/<dataset>.tsv)")

    def body(args: argparse.Namespace) -> None:
        sheet = index_sheet(args.root, args.layout, args.resolution, args.splits_from)
        with atomic_path(args.out) as tmp:
            sheet.to_csv(tmp, sep="\t", index=False)
        log.info("%s: %d sequences, %d frames (%s)", args.out, len(sheet), int(sheet["n_frames"].sum()),
                 ", ".join(f"{k} {v}" for k, v in sheet["split"].value_counts().sort_index().items()))

    run_stage("datasets", body, parser, argv)


if __name__ == "__main__":
    main()
