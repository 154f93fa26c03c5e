"""What a stage runs on and what it loaded: CPU threads, the torch device of a config value, the sha256 of a
weights file, the identity of input files and stores (for resume signatures). torch and OpenCV are imported
where needed, so a stage that uses neither does not pay for them."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lrtl.cli import StageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")


def limit_threads(threads: int | None, torch_too: bool) -> None:
    """Hold a job to `threads` CPU threads (its rule's `threads:`): OpenCV's pool, numpy's BLAS pool and, with
    `torch_too`, torch's intra-op threads. None or 0 leaves the libraries' choice (all cores)."""
    if not threads:
        return
    if threads < 0:
        raise StageError(f"--threads must be a positive number of threads, not {threads}")
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(threads)
    threadpool_limits(threads, user_api="blas")
    if torch_too:
        import torch

        torch.set_num_threads(threads)
    log.debug("CPU threads limited to %d", threads)


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` -> cuda when visible, else cpu; `cpu` / `cuda` as given. `key` names the config value in errors."""
    import torch

    if name not in DEVICES:
        raise StageError(f"{key} must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError(f"{key} is cuda but no CUDA device is visible; set it to auto or cpu")
    return torch.device(name)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (hashlib.file_digest reads it in blocks; weights files are hundreds of MB); a file
    unchanged since the last call in this process (same path, size and mtime) is not read again."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def input_identity(paths: Iterable[str | os.PathLike | None]) -> dict[str, list[int]]:
    """{path: [files, bytes, newest mtime_ns, digest]} of every input: a file, or a store folder walked file by
    file (digest: a hash of every file's relative path, size and mtime). A rebuilt, edited or replaced input
    gets another identity; reading it costs one stat per file. None entries are skipped.

    A resume state records this and is discarded when it differs (a job never resumes into other inputs).
    """
    identity = {}
    for path in paths:
        if path is None:
            continue
        root = Path(path)
        if not root.exists():
            raise StageError(f"{root}: input does not exist; build it first (snakemake {root})")
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        digest = hashlib.sha256()
        total, newest = 0, 0
        for file in files:
            stat = file.stat()
            total += stat.st_size
            newest = max(newest, stat.st_mtime_ns)
            digest.update(f"{file.relative_to(root) if root.is_dir() else ''}\t{stat.st_size}\t"
                          f"{stat.st_mtime_ns}\n".encode())
        identity[str(path)] = [len(files), total, newest, int(digest.hexdigest()[:12], 16)]
    return identity
