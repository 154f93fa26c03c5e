"""A real one-node SLURM cluster for the `slurm` tests: munged, slurmctld and slurmd on localhost.

The session fixture `slurm_cluster` installs Debian's SLURM packages when they are missing (root and apt-get
needed), writes a private `slurm.conf` (partitions `cpu` and `gpu`, a `gpu` GRES of fake GPUs: device files that
act as `/dev/null`; free ports; state and logs under one scratch directory), starts the three daemons in the
foreground as children of pytest, waits until the node is idle, and at teardown stops exactly those processes
(by PID) and removes the directory. Nothing is written to /etc: the client commands find the cluster through
`SLURM_CONF`, which the fixture exports for the session (jobs inherit it through `sbatch --export=ALL`).

The cluster has no accounting database: `sacct` does not work, so tests read `squeue --states=all` (finished
jobs stay visible for MinJobAge) and the controller's job-completion log (`jobcomp/filetxt`).

Where the cluster cannot run (not root, no apt-get, an install or daemon start that fails) the tests are
skipped with the reason and the daemon log tails; LRTL_SLURM_REQUIRED=1 (CI) turns those skips into failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "srun": "slurm-client",
    "munged": "munge",
}
SBIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")
SCRATCH_PREFIX = "lrtl-slurm-"
STARTUP_TIMEOUT_S = 60
MIN_JOB_AGE_S = 3600  # finished jobs stay in `squeue --states=all` / `scontrol show job` this long
# What the node advertises, whatever the machine has (SlurmdParameters=config_overrides; without cgroups
# nothing is enforced), so that the shipped profile's real requests (cpus_per_gpu 4-8, mem_mb 8000-32000) fit
# unchanged, and every job the test run has ready at once (the `jobs:` cap of tests/slurm/profile) starts at
# once instead of queueing behind the others.
NODE_CPUS = 64
NODE_MEMORY_MB = 256000
NODE_GPUS = 8


def _give_up(reason: str) -> None:
    """Skip (default) or fail (LRTL_SLURM_REQUIRED=1) the SLURM tests with `reason`."""
    if os.environ.get("LRTL_SLURM_REQUIRED", "") not in ("", "0"):
        pytest.fail(f"local SLURM cluster unavailable: {reason}", pytrace=False)
    pytest.skip(f"local SLURM cluster unavailable: {reason}")


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(SBIN_DIRS)
    return shutil.which(name, path=path)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} not written)"
    return f"--- {path.name} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ensure_installed() -> None:
    """apt-get install the SLURM and munge packages that are missing (root only)."""
    missing = sorted({pkg for binary, pkg in PACKAGES.items() if _which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        _give_up(f"packages {missing} are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        _give_up(f"packages {missing} are missing and there is no apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        # The package lists may be missing in a fresh container: update once and retry.
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        _give_up(
            f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )


def _pid_alive(pid: int, marker: str) -> bool:
    """True when `pid` runs with `marker` (our scratch dir) in its command line, so PID reuse is harmless."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return marker in cmdline


def _reap_leftovers() -> None:
    """Stop the daemons of an earlier test session that died without teardown (its owner PID is gone; the
    daemons are listed in its pids.json and still name its scratch dir), and remove that dir."""
    for old in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            record = json.loads((old / "pids.json").read_text())
        except (OSError, ValueError):
            continue  # not (yet) one of ours
        owner = record.pop("owner", None)
        if owner is not None and Path(f"/proc/{owner}").exists():
            continue  # a live session (another pytest, a developer's shell) owns it
        for pid in record.values():
            with contextlib.suppress(OSError):
                if _pid_alive(pid, str(old)):
                    os.kill(pid, signal.SIGTERM)
                    for _ in range(50):
                        if not _pid_alive(pid, str(old)):
                            break
                        time.sleep(0.1)
                    else:
                        os.kill(pid, signal.SIGKILL)
        shutil.rmtree(old, ignore_errors=True)


@dataclass
class SlurmCluster:
    """A running local cluster: its scratch dir, config, environment and the daemons this fixture started."""

    root: Path
    conf: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def ctld_log(self) -> Path:
        return self.root / "log" / "slurmctld.log"

    @property
    def jobcomp_log(self) -> Path:
        return self.root / "log" / "jobcomp.log"

    def logs(self) -> str:
        names = ["slurmctld.log", "slurmd.log", "munged.log"]
        return "\n".join(_tail(self.root / "log" / name) for name in names)

    def run(self, *cmd: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr}\n{self.logs()}")
        return proc

    def jobs(self) -> dict[str, dict[str, str]]:
        """Every job the controller still remembers (finished ones stay for MinJobAge), by job id, each the
        KEY=VALUE record of `scontrol show job --oneliner`: JobState, Partition, Comment (the plugin writes
        rule_<name>_wildcards_<...> there), ExitCode, TresPerJob (gres:gpu:1), StdOut, ArrayJobId ..."""
        out = self.run("scontrol", "show", "job", "--oneliner", check=False).stdout
        records = {}
        for line in out.splitlines():
            record = dict(re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)", line))
            if "JobId" in record:
                records[record["JobId"]] = record
        return records

    def completed(self) -> list[dict[str, str]]:
        """The controller's job-completion log (jobcomp/filetxt), one dict of KEY=VALUE per finished job."""
        if not self.jobcomp_log.exists():
            return []
        records = []
        for line in self.jobcomp_log.read_text().splitlines():
            record = {}
            for token in line.split():
                key, _, value = token.partition("=")
                record[key] = value
            records.append(record)
        return records

    def submitted_job_ids(self) -> set[str]:
        """Job ids the controller logged as submitted through sbatch (batch job RPC)."""
        ids = set()
        for line in self.ctld_log.read_text(errors="replace").splitlines():
            if "_slurm_rpc_submit_batch_job" in line and "JobId=" in line:
                ids.add(line.split("JobId=")[1].split()[0])
        return ids

    def stop(self) -> None:
        """Stop exactly the daemons this fixture started, in reverse start order (SIGTERM, then SIGKILL)."""
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            assert proc.poll() is not None, f"{name} (pid {proc.pid}) did not stop"


def _write_config(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    munge_socket = root / "munge" / "munge.socket.2"
    conf = root / "etc" / "slurm.conf"
    conf.write_text(
        f"""# Written by tests/slurm/conftest.py: one node (this machine), no accounting database.
ClusterName=lrtltest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.log
MinJobAge={MIN_JOB_AGE_S}
KillWait=5
InactiveLimit=0
NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 State=UNKNOWN \\
  CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:{NODE_GPUS}
PartitionName=cpu Nodes=localhost Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=localhost MaxTime=INFINITE State=UP
"""
    )
    files = ",".join(_fake_gpu_devices(root / "dev", NODE_GPUS))
    (root / "etc" / "gres.conf").write_text(
        f"# Fake GPUs, so that --gpus=1 requests are accepted.\nNodeName=localhost Name=gpu File={files}\n"
    )
    return conf


def _fake_gpu_devices(folder: Path, count: int) -> list[str]:
    """`count` character devices that behave as /dev/null (GRES `File=` wants one device file per GPU)."""
    null = os.stat("/dev/null").st_rdev
    paths = [folder / f"gpu{i}" for i in range(count)]
    for path in paths:
        os.mknod(path, stat.S_IFCHR | 0o666, null)
    return [str(path) for path in paths]


def _start(cluster: SlurmCluster, name: str, cmd: list[str]) -> None:
    log = open(cluster.root / "log" / f"{name}.stdout", "w")  # noqa: SIM115 - kept open for the daemon's life
    cluster.procs[name] = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=cluster.env,
        start_new_session=True,
    )
    pids = {"owner": os.getpid(), **{n: p.pid for n, p in cluster.procs.items()}}
    (cluster.root / "pids.json").write_text(json.dumps(pids))


def _wait(cluster: SlurmCluster, what: str, ready, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}")
        if ready():
            return
        time.sleep(0.5)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def _node_state(cluster: SlurmCluster) -> str:
    proc = cluster.run("sinfo", "--noheader", "--nodes=localhost", "--format=%T", check=False, timeout=20)
    return proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""


@contextlib.contextmanager
def local_slurm_cluster():
    """Start a one-node SLURM cluster (partitions cpu, gpu), point SLURM_CONF at it, yield it, stop it."""
    if os.geteuid() != 0:
        _give_up("the SLURM daemons need root (run the `slurm` tests as root, e.g. in CI)")
    _ensure_installed()
    _reap_leftovers()
    root = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    root.chmod(0o755)
    for sub in ("bin", "dev", "etc", "state", "spool", "run", "log", "munge"):
        (root / sub).mkdir()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    try:
        conf = _write_config(root)
    except OSError as error:  # e.g. mknod refused (a container without CAP_MKNOD)
        shutil.rmtree(root, ignore_errors=True)
        _give_up(f"cannot write the cluster's config and fake GPU devices: {error}")
    # The slurm-jobstep plugin drops SLURM_CONF before its nested `srun` (real clusters have
    # /etc/slurm/slurm.conf or configless mode). Rather than writing to /etc, a shim first on PATH (jobs
    # inherit PATH) puts it back.
    shim = root / "bin" / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF={conf} exec {_which("srun")} "$@"\n')
    shim.chmod(0o755)
    env = dict(
        os.environ, SLURM_CONF=str(conf), PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    for var in [
        v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and v != "SLURM_CONF"
    ]:
        del env[var]  # a surrounding SLURM job must not leak its settings into ours
    cluster = SlurmCluster(root=root, conf=conf, env=env)
    try:
        _start(
            cluster,
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={root}/munge/munge.socket.2",
                f"--key-file={key}",
                f"--log-file={root}/log/munged.log",
                f"--pid-file={root}/run/munged.pid",
                f"--seed-file={root}/munge/munged.seed",
            ],
        )
        _wait(cluster, "the munge socket", lambda: (root / "munge" / "munge.socket.2").exists())
        _start(cluster, "slurmctld", [_which("slurmctld"), "-D", "-c", "-i", "-f", str(conf)])
        _wait(
            cluster,
            "slurmctld to answer",
            lambda: cluster.run("scontrol", "ping", check=False).returncode == 0,
        )
        _start(cluster, "slurmd", [_which("slurmd"), "-D", "-N", "localhost", "-f", str(conf)])
        _wait(cluster, "the node to be idle", lambda: _node_state(cluster) == "idle")
    except Exception as error:  # noqa: BLE001 - any start failure becomes a skip with the logs
        state = _node_state(cluster) if "slurmctld" in cluster.procs else ""
        cluster.stop()
        logs = cluster.logs() + "\n" + "\n".join(_tail(p) for p in sorted((root / "log").glob("*.stdout")))
        shutil.rmtree(root, ignore_errors=True)
        _give_up(f"{error} (node state {state!r})\n{logs}")
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.run("scancel", "--user=root", check=False, timeout=20)
        cluster.stop()
        if os.environ.get("LRTL_SLURM_KEEP", "") in ("", "0"):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster (partitions cpu, gpu); SLURM_CONF points at it for the session."""
    with local_slurm_cluster() as cluster:
        yield cluster
