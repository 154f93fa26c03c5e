"""One source for dependencies: pyproject.toml. The conda env files install the package itself and may repeat a
pin only as pyproject states it; every declared dependency is imported somewhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMPORT_NAMES = {"opencv-python-headless": "cv2", "scikit-learn": "sklearn", "pyyaml": "yaml", "pillow": "PIL",
                "snakemake-executor-plugin-slurm": None, "jsonschema": None,  # None: used by snakemake, not imported
                "tabulate": None, "jinja2": None}  # None: used by pandas, not imported (to_markdown, Styler.to_latex)


def requirements(lines: list[str]) -> dict[str, str]:
    """{name: specifier} of requirement lines like 'torch>=2.4' (options and -e lines skipped)."""
    found = {}
    for line in lines:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(.*)", line.strip())
        if match and not line.startswith("-"):
            found[match.group(1).lower()] = match.group(2).replace(" ", "")
    return found


DECLARED = requirements(PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values()
                                                     for r in extra])


@pytest.mark.parametrize("env", ["envs/lrtl.yaml", "envs/lrtl-cpu.yaml"])
def test_env_files_install_the_package_and_repeat_only_its_pins(env: str) -> None:
    spec = yaml.safe_load((REPO / env).read_text())
    pip = next(item["pip"] for item in spec["dependencies"] if isinstance(item, dict) and "pip" in item)
    assert any(line.startswith("-e ..") for line in pip), f"{env} must install the package (-e ..)"
    for name, specifier in requirements(pip).items():
        assert name in DECLARED, f"{env}: {name} is not declared in pyproject.toml"
        assert specifier == DECLARED[name], f"{env}: {name}{specifier}, pyproject.toml says {name}{DECLARED[name]}"


def test_every_declared_dependency_is_imported() -> None:
    sources = "\n".join(p.read_text() for folder in ("lrtl", "tests", "benchmarks", "workflow")
                        for p in (REPO / folder).rglob("*") if p.suffix in (".py", ".smk"))
    for name in DECLARED:
        module = IMPORT_NAMES.get(name, name.replace("-", "_"))
        if module is None or name in ("pytest", "ruff", "snakefmt"):
            continue
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), f"nothing imports {name} ({module})"
