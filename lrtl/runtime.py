"""What a stage runs on and what it loaded: the torch device of a config value, the sha256 of a weights file."""

from __future__ import annotations

import hashlib
import os

import torch

from lrtl.cli import StageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` -> cuda when visible, else cpu; `cpu` / `cuda` as given. `key` names the config value in errors."""
    if name not in DEVICES:
        raise StageError(f"{key} must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError(f"{key} is cuda but no CUDA device is visible; set it to auto or cpu")
    return torch.device(name)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MiB blocks (weights files are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
