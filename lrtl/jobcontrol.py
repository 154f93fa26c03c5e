"""A training job owns its state folder, and stops when the Snakemake controller that started it is gone.

    with hold_state_dir(state_dir):          # a second trainer on the same folder stops at once, naming this one
        stop_with_controller()               # a daemon thread: SIGTERM to this process when its controller exits
        run_train(...)

The lock is `fcntl.flock` on `<state_dir>/lock`, which holds the owner's PID, host and start time; the kernel drops
it when the process exits however it exits, so a killed trainer never leaves a stale lock (flock works on NFS
through the kernel's emulation with POSIX locks, so it also holds between SLURM nodes).

The controller is the nearest ancestor process whose command line names snakemake. Under the local executor
that is the controller itself (snakemake -> bash -c '...' -> python -m lrtl.train; the job's shell outlives a
`kill -9` of snakemake, so a parent-death signal would never fire); under SLURM it is the job's own snakemake
inside the allocation, which lives as long as the job. Run by hand (from a shell, under nohup, in tmux) there is
no snakemake ancestor and nothing is watched. Linux only (/proc); elsewhere nothing is watched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lrtl.cli import StageError

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
POLL_SECONDS = 2.0


@contextlib.contextmanager
def hold_state_dir(state_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on a training state folder for the duration of the block (created if missing).

    Another live process holding it raises StageError naming that process (PID, host, start time) and the fix.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_NAME
    handle = open(path, "a+")  # held open for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            owner = handle.read().strip() or "a process that has not written its PID yet"
            found = re.match(r"PID (\d+) on (\S+),", owner)
            stop = f"kill {found[1]} on {found[2]}" if found else "kill it"
            raise StageError(
                f"{state_dir}: another trainer is using this state folder ({owner}); two trainers on one folder "
                f"would overwrite each other's resume state. Wait for it to finish, or stop it ({stop}) and rerun: "
                f"the new job resumes from its last checkpoint"
            ) from err
        except OSError as err:  # a file system without locks (e.g. Lustre mounted without -o flock)
            log.warning("%s: cannot lock the state folder (%s); training without the one-trainer check", path, err)
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} on {socket.gethostname()}, started "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        yield state_dir
    finally:
        handle.close()  # drops the lock (so does the process's exit, however it exits)


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]


def _parent_and_start(pid: int) -> tuple[int, str]:
    """(parent PID, start time in clock ticks) of a process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid ... starttime (22nd)
    return int(fields[1]), fields[19]


def is_snakemake(argv: list[str]) -> bool:
    """Whether a command line runs snakemake (`snakemake ...`, `python .../bin/snakemake ...`,
    `python -m snakemake ...`)."""
    return any(os.path.basename(arg) == "snakemake" for arg in argv[:3])


def find_controller() -> tuple[int, str] | None:
    """(PID, start time) of the nearest ancestor that runs snakemake, or None (run by hand, or no /proc)."""
    try:
        pid = os.getppid()
        while pid > 1:
            parent, start = _parent_and_start(pid)
            if is_snakemake(_argv(pid)):
                return pid, start
            pid = parent
    except OSError:
        return None
    return None


def _alive(pid: int, start: str) -> bool:
    """Whether the process `pid` that started at `start` still runs (not a zombie, not a reused PID)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] not in ("Z", "X") and fields[19] == start


def stop_with_controller(poll_seconds: float = POLL_SECONDS) -> int | None:
    """Watch the controller (see the module docstring) from a daemon thread; when it is gone, log it and send
    SIGTERM to this process (its resume state stays for the next run). Returns the controller's PID, or None
    when there is none to watch."""
    controller = find_controller()
    if controller is None:
        return None
    pid, start = controller

    def watch() -> None:
        while _alive(pid, start):
            time.sleep(poll_seconds)
        log.error("the snakemake controller (PID %d) that started this job is gone: stopping; the next run resumes "
                  "from the last checkpoint in the state folder", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="controller-watch", daemon=True).start()
    log.info("stopping if the snakemake controller (PID %d) exits", pid)
    return pid
