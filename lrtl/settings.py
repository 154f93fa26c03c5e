"""Run settings: the config keys that decide how a job runs, never what it writes.

A stage's config section holds two kinds of keys. Result params (hashed into the job, recorded in resume
signatures) change what the stage writes; run settings (the device, data-loader workers, caches, batch sizes
that only bound memory) do not. The workflow passes the run settings apart, as `--settings JSON`, from a params
function Snakemake does not compare between runs, so changing one reruns nothing; resume signatures leave them
out, so changing one never restarts a job either. Dotted keys reach nested sections; a key under a null
(inactive backend) section is skipped.

    result, settings = split_settings("train", section)   # workflow side
    params = merge_settings(args.params, args.settings)    # stage side: the whole section again
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from lrtl.params import ParamsError

RUN_SETTINGS: dict[str, tuple[str, ...]] = {
    "flow": ("raft.device", "raft.batch_size"),
    "tracks": ("cotracker.device",),  # not points_per_batch: CoTracker tracks a batch's points jointly
    "train": ("device", "data.workers", "data.cache_queries", "data.preload_flow", "checkpoint_every"),
    "infer": ("device", "batch_size"),
}


def split_settings(stage: str, section: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(result params, run settings) of one stage's section; together they are the section again."""
    result = copy.deepcopy(dict(section))
    settings: dict[str, Any] = {}
    for dotted in RUN_SETTINGS.get(stage, ()):
        *parents, leaf = dotted.split(".")
        source, target = result, settings
        for part in parents:
            source = source.get(part)
            if not isinstance(source, dict):
                break
            target = target.setdefault(part, {})
        else:
            if leaf in source:
                target[leaf] = source.pop(leaf)
    return result, settings


def merge_settings(params: Mapping[str, Any], settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """The whole section from its result params and run settings; a settings key must not repeat a param."""
    merged = copy.deepcopy(dict(params))
    _merge_into(merged, settings or {}, "")
    return merged


def result_params(stage: str, section: Mapping[str, Any]) -> dict[str, Any]:
    """The result params of a whole section (what a resume signature records)."""
    return split_settings(stage, section)[0]


def _merge_into(target: dict[str, Any], settings: Mapping[str, Any], where: str) -> None:
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge_into(target[key], value, f"{where}{key}.")
        elif key in target:
            raise ParamsError(f"--settings repeats {where}{key}, which --params already gives; pass each key once")
        else:
            target[key] = copy.deepcopy(value)
