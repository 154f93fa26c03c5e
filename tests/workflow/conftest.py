"""Helpers to run Snakemake as a user would: a subprocess in a scratch working directory.

`finished_run` (session scope) is the tiny end-to-end run (tests/config.test.yaml) finished once for the session,
shared by test_e2e.py and test_report.py: a test may plan (-n) on it or read it, and one that removes an artefact
puts it back as it was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / "tests" / "config.test.yaml"


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: int = 900,
              snakefile: Path = REPO / "Snakefile") -> subprocess.CompletedProcess:
    """Run `snakemake -s <repo>/Snakefile -d <workdir> ARGS` and return the finished process."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table into {rule: count}."""
    counts: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("Job stats"))
    except StopIteration:
        return counts
    for line in lines[start + 1:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) != "total":
            counts[match.group(1)] = int(match.group(2))
        elif line.strip().startswith("total"):
            break
    return counts


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("e2e")
    snakemake(workdir, "--cores", "2", "--configfile", str(TEST_CONFIG))
    return workdir
