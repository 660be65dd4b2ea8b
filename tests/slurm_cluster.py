"""A real two-node SLURM cluster on loopback, for tests/test_slurm.py.

Debian's slurm-wlm and munge (`apt-get install -y slurm-wlm munge`), run as root: a `munged`
with a key of the test's own, one `slurmctld` and two `slurmd -N n1` / `slurmd -N n2` processes,
both nodes at 127.0.0.1 with ports of their own, every state, spool, pid and log file under
the test's folder. Every daemon binds 127.0.0.1 only (CommunicationParameters), and every
process of the cluster, daemons and jobs alike, carries SLURM_CONF=<this cluster's file> in its
environment: that is how `stop` finds what is left of the cluster (job steps outlive a killed
slurmd) and kills those processes, and only those.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = (
    "munged",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "scontrol",
    "scancel",
    "sinfo",
    "squeue",
)
NODES = ("n1", "n2")
PARTITION = "debug"
START_TIMEOUT = 60.0


class SlurmUnavailable(RuntimeError):
    pass


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports the system has free now.

    Every socket stays bound until all are chosen: a port released and asked for again can come
    back at once, and two daemons given the same port fail with "Address already in use" (seen
    in CI: both slurmd nodes were handed one port)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def processes_with_env(name: str, value: str) -> list[int]:
    """Every process whose environment has name=value (as root, every process is readable)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _hex_address(text: str) -> str:
    """/proc/net/tcp{,6}'s local address (host byte order per 32-bit word) as text."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(words) == 4:
        return socket.inet_ntop(socket.AF_INET, words)
    return socket.inet_ntop(socket.AF_INET6, words)


def listening_addresses(pids: Iterable[int]) -> dict[int, set[str]]:
    """The addresses each process has a listening TCP socket on ('127.0.0.1', '::', ...)."""
    listening: dict[str, str] = {}  # socket inode -> local address
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                if parts[3] == "0A":  # LISTEN
                    listening[parts[9]] = _hex_address(parts[1].split(":")[0])
    found: dict[int, set[str]] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    match = re.fullmatch(r"socket:\[(\d+)\]", target)
                    if match and match.group(1) in listening:
                        found.setdefault(pid, set()).add(listening[match.group(1)])
    return found


def is_loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


@dataclass
class Job:
    job_id: str
    state: str
    restarts: int
    exit_code: str
    reason: str


@dataclass
class SlurmCluster:
    root: Path
    name: str = field(default_factory=lambda: "t" + secrets.token_hex(4))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    munge: Path | None = None  # munged's folder (key, socket, log)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    # --- start / stop ----------------------------------------------------------------------

    def start(self) -> None:
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            raise SlurmUnavailable(
                f"{', '.join(missing)} not found: install SLURM with `apt-get install -y "
                "slurm-wlm munge` (Debian), as .ci/run does"
            )
        if os.geteuid() != 0:
            raise SlurmUnavailable("the SLURM test cluster runs its daemons as root")
        for folder in (self.root / "state", self.root / "log"):
            folder.mkdir(parents=True)
        for node in NODES:
            (self.root / "spool" / node).mkdir(parents=True)
        # munged wants every folder above its socket searchable by all, which pytest's
        # temporary folders are not: a folder of its own under /tmp.
        munge = self.munge = Path(tempfile.mkdtemp(prefix="cpusweep-munge-"))
        munge.chmod(0o755)
        key = munge / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        socket_path = munge / "munge.sock"
        self._spawn(
            "munged",
            [
                "munged",
                "--foreground",
                f"--socket={socket_path}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
        )
        self._wait(socket_path.exists, "munged's socket")
        self._write_conf(socket_path)
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, "slurmctld")
        for node in NODES:
            self._spawn(f"slurmd-{node}", ["slurmd", "-D", "-N", node, "-f", str(self.conf)])
        self._wait(self._nodes_idle, "both slurmd nodes to be idle")

    def _write_conf(self, munge_socket: Path) -> None:
        host = socket.gethostname()
        user = pwd.getpwuid(os.geteuid()).pw_name
        r = self.root
        ctld_port, *node_ports = free_ports(1 + len(NODES))
        lines = [
            f"ClusterName={self.name}",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            f"AuthInfo=socket={munge_socket}",
            "CredType=cred/munge",
            # Bind every daemon (and srun) to the address its name resolves to, not 0.0.0.0.
            "CommunicationParameters=NoCtldInAddrAny,NoInAddrAny",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'spool'}/%n/slurmd.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MailProg=/bin/true",
            "ReturnToService=2",
            "MinJobAge=3600",  # finished jobs stay visible to scontrol
            "KillWait=10",
        ]
        for node, port in zip(NODES, node_ports, strict=True):
            lines.append(
                f"NodeName={node} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} "
                "CPUs=1 RealMemory=2000 State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE "
            "State=UP"
        )
        (r / "plugstack.conf").write_text("")
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - the daemon's
        self.processes[name] = subprocess.Popen(
            command,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait(self, condition, what: str) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + START_TIMEOUT
        while not condition():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}): {self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out waiting for {what}: {self.logs()}")
            time.sleep(0.2)

    def _nodes_idle(self) -> bool:
        out = self.run("sinfo", "--noheader", "--Node", "--format=%N %T", check=False)
        states = dict(line.split() for line in out.stdout.splitlines() if line.strip())
        return all(states.get(node) == "idle" for node in NODES)

    def leftovers(self) -> list[int]:
        """Processes of this cluster still alive (daemons excluded)."""
        daemons = {p.pid for p in self.processes.values()}
        return [p for p in processes_with_env("SLURM_CONF", str(self.conf)) if p not in daemons]

    def stop(self) -> list[str]:
        """Cancel every job, stop the daemons, kill whatever of this cluster is left; returns
        what had to be killed (described)."""
        if "slurmctld" in self.processes and self.processes["slurmctld"].poll() is None:
            self.run("scancel", "--full", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 30
            while (
                time.monotonic() < deadline
                and self.run(
                    "squeue", "--noheader", "--states=RUNNING,COMPLETING", check=False
                ).stdout.strip()
            ):
                time.sleep(0.5)
        for name in reversed(list(self.processes)):  # slurmd, slurmctld, then munged
            process = self.processes[name]
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        killed = []
        for pid in self.leftovers():
            killed.append(f"{pid} {process_name(pid)}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for folder in Path("/tmp").glob(f"cpusweep-{self.name}-*"):  # Ray's files of our jobs
            shutil.rmtree(folder, ignore_errors=True)
        if self.munge is not None:
            shutil.rmtree(self.munge, ignore_errors=True)
        return killed

    def logs(self) -> str:
        parts = []
        logs = [
            *(self.root / "log").glob("*"),
            *([self.munge / "munged.log"] if self.munge else []),
        ]
        for path in sorted(logs):
            if not path.is_file():
                continue
            text = path.read_text(errors="replace")
            parts.append(f"--- {path.name}\n{text[-3000:]}")
        return "\n".join(parts)

    # --- commands --------------------------------------------------------------------------

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run(
            list(command), env=self.env(), capture_output=True, text=True, timeout=60
        )
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(command)}: {out.returncode}\n{out.stderr}")
        return out

    def job(self, job_id: str) -> Job:
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout

        def field_(name: str) -> str:
            match = re.search(rf"\b{name}=(\S*)", out)
            assert match, f"no {name} in {out!r}"
            return match.group(1)

        return Job(
            job_id,
            field_("JobState"),
            int(field_("Restarts")),
            field_("ExitCode"),
            field_("Reason"),
        )

    def wait_for_job(self, job_id: str, states: set[str], timeout: float) -> Job:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in states:
                return job
            assert time.monotonic() < deadline, f"job {job_id} still {job} after {timeout} s"
            time.sleep(0.5)

    def job_processes(self, job_id: str) -> list[int]:
        """Processes of a job (its steps, Ray nodes, driver) still alive."""
        mine = set(processes_with_env("SLURM_CONF", str(self.conf)))
        return [p for p in processes_with_env("SLURM_JOB_ID", job_id) if p in mine]
