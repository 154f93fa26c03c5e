"""Bad input met through Snakemake as a user meets it: each stops with one message naming the file or config key
and the fix, and leaves what is built in place (issue 22)."""

from __future__ import annotations

from pathlib import Path

from tests.workflow.conftest import TEST_CONFIG, snakemake


def test_a_misspelt_config_key_names_its_path_the_closest_key_and_the_file(workdir: Path) -> None:
    overlay = workdir / "typo.yaml"
    overlay.write_text("train:\n  defaults:\n    iteratons: 5\n")
    proc = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), str(overlay), check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "train.defaults.iteratons: unknown config key; did you mean `iterations`?" in text
    assert "(set in typo.yaml)" in text  # the overlay, relative to the working directory
    assert "Failed validating" not in text and len(text.splitlines()) < 12, text  # no dump of schema and config
