"""Shared pieces of the stage command lines: logging, JSON params, errors that name the fix."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)


class StageError(RuntimeError):
    """An input problem the user can fix; the message names the file and the fix."""


def setup_logging(level: int = logging.INFO) -> None:
    """Log to stderr with timestamps; stage rules redirect stderr to the rule's log file."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


def json_params(text: str) -> dict[str, Any]:
    """argparse type for `--params '{...}'` and `--settings '{...}'`: a JSON object."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text[:200]}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, not {text[:200]}")
    return value


def add_settings_argument(parser: argparse.ArgumentParser) -> None:
    """`--settings JSON`: the section's run settings (lrtl.settings), merged into --params before parsing."""
    parser.add_argument("--settings", type=json_params, default={},
                        help="JSON of the section's run settings (device, workers, ...): how the job runs, "
                             "never what it writes")


def run_stage(name: str, body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
              argv: Sequence[str] | None) -> None:
    """Parse argv, set up logging, run `body`, and turn a StageError into one clear line and exit code 1."""
    args = parser.parse_args(argv)
    setup_logging()
    stage_log = logging.getLogger(f"lrtl.{name}")
    stage_log.info("arguments: %s", {k: v for k, v in vars(args).items()})
    try:
        body(args)
    except StageError as err:
        stage_log.error("%s", err)
        raise SystemExit(1) from err
    except PermissionError as err:  # e.g. a write-protected results/ folder
        stage_log.error("%s", permission_message(err))
        raise SystemExit(1) from err


def permission_message(err: PermissionError) -> str:
    """One line for a file this user may not write (or read): the path, and the fix."""
    path = err.filename or "a file of this stage"
    folder = os.path.dirname(os.path.normpath(path)) or "."
    return (f"{path}: {err.strerror or 'permission denied'} for this user (uid {os.getuid()}); make {folder} writable "
            f"(e.g. chmod -R u+w {folder}) or run as its owner, then rerun: nothing else was changed")
