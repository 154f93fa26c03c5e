"""The SLURM profiles as files: every rule they name exists, the GPU rules (and only they) go to the GPU
partition, and the no-accounting overlay restates the main profile's defaults less the account. No cluster."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GPU_RULES = {"compute_flow", "track_chunk", "train_model", "infer_masks"}


def _profile(name: str) -> dict:
    return yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())


def _workflow_rules() -> set[str]:
    text = "\n".join(
        p.read_text() for p in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
    )
    return set(re.findall(r"^rule (\w+):", text, flags=re.M))


def test_profile_names_only_existing_rules_and_sends_gpu_rules_to_gpus() -> None:
    profile = _profile("slurm")
    rules = _workflow_rules()
    named = set(profile["set-resources"]) | set(profile["groups"])
    assert named <= rules, named - rules
    assert set(profile["set-resources"]) == GPU_RULES
    for rule, resources in profile["set-resources"].items():
        assert resources["slurm_partition"] != profile["default-resources"]["slurm_partition"], rule
        assert resources["gpu"] == 1 and resources["cpus_per_gpu"] >= 1, rule
    assert not set(profile["groups"]) & GPU_RULES
    assert set(profile["group-components"]) == set(profile["groups"].values())
    assert profile["executor"] == "slurm" and profile["retries"] >= 1


def test_noacct_overlay_restates_defaults_without_account() -> None:
    main, noacct = _profile("slurm"), _profile("slurm-noacct")
    expected = {k: v for k, v in main["default-resources"].items() if k != "slurm_account"}
    assert noacct["default-resources"] == expected
    assert noacct["slurm-status-command"] == "squeue"


def test_every_profile_line_is_commented() -> None:
    for name in ("slurm", "slurm-noacct"):
        for number, line in enumerate((REPO / "profiles" / name / "config.yaml").read_text().splitlines(), 1):
            stripped = line.strip()
            if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
                assert "#" in line, f"profiles/{name}/config.yaml:{number} has no comment: {line!r}"


def test_workflow_profile_leaves_cluster_settings_alone() -> None:
    """Snakemake applies profiles/default (next to the Snakefile) after `--profile profiles/slurm`, so it must
    neither set what a cluster run depends on nor give another value to a key the cluster profile sets."""
    default, slurm = _profile("default"), _profile("slurm")
    cluster_keys = {"executor", "jobs", "cores", "resources", "default-resources", "set-resources", "groups"}
    assert not set(default) & (cluster_keys | {"group-components", "retries", "keep-going"})
    assert {k: v for k, v in default.items() if k in slurm} == {k: slurm[k] for k in default if k in slurm}
