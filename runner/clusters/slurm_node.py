"""One Ray node of a sweep's Ray cluster inside a SLURM allocation.

The sbatch script that `python -m runner slurm` writes (runner/clusters/slurm.py) starts one of
these on every node of its allocation, through srun:

    python -m runner.clusters.slurm_node head   --node-ip IP --cpus C --run-dir DIR
    python -m runner.clusters.slurm_node worker --node-ip IP --cpus C --run-dir DIR \
        --address HEAD:PORT

It does what `ray start --block` does, through the same Ray API (`ray._private.node.Node`,
which `ray start` and `ray.cluster_utils` wrap), with the differences an allocation needs:

- Every port is the operating system's choice (the head's GCS, raylets, object managers,
  agents, workers) and the Ray client server is not started, so two jobs that share a node,
  or two Ray nodes on one machine, never collide. The head writes its address to
  DIR/head-address for the script, which hands it to the other nodes and the driver.
- A node whose address is a loopback address (every SLURM node on one machine: a workstation,
  the tests) keeps every Ray server on it when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, as the
  script sets then: `ray start` refuses to join a cluster in that mode, and in the other one
  replaces 127.0.0.1 with the machine's network address.
- It says when its node has joined the cluster (DIR/ready-<name>), and stops every process
  of this node, and nothing else, when the script creates DIR/stop at the end of the sweep,
  or at SIGTERM, SIGINT or SIGHUP (SLURM sends SIGTERM at a cancel or a pre-emption), without
  Ray's drain wait. Never `ray stop`: it would end every Ray of the user on the machine.

The token (RAY_AUTH_MODE=token, RAY_AUTH_TOKEN) comes from the environment, as for `ray start`.
Exit codes: 0 stopped (DIR/stop or a signal), 1 a Ray process of this node died, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("cpusweep.slurm_node")

MiB = 2**20
# Rows and cell payloads are small; checkpoints go to the results folder, not the object store.
OBJECT_STORE_BYTES = 512 * MiB
OBJECT_STORE_MIN_BYTES = 80 * MiB  # Ray refuses less than 75 MiB
JOIN_TIMEOUT = 120  # seconds for a node to appear in the cluster
MARK = "CPUSWEEP_RAY_NODE"  # environment variable that tells this node's processes


class _Stop(Exception):
    """A signal asked this node to stop."""


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def slurm_memory_bytes(env: dict[str, str], cpus: int) -> int | None:
    """The memory SLURM gave this node's CPUs (--mem, --mem-per-cpu), None if it gave no
    figure (Ray then measures the node, or its cgroup)."""
    for name, scale in (("SLURM_MEM_PER_NODE", 1), ("SLURM_MEM_PER_CPU", cpus)):
        value = env.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value) * MiB * scale  # SLURM gives megabytes
    return None


def object_store_bytes(memory: int | None) -> int:
    """A small object store: at most 30% of the node's memory, as Ray's default is."""
    if memory is None:
        return OBJECT_STORE_BYTES
    return max(OBJECT_STORE_MIN_BYTES, min(OBJECT_STORE_BYTES, int(0.3 * memory)))


def ray_params(args: argparse.Namespace, memory: int | None) -> dict[str, Any]:
    """Keyword arguments of Ray's RayParams for this node."""
    params: dict[str, Any] = {
        "node_ip_address": args.node_ip,
        "node_name": args.name,
        "num_cpus": args.cpus,
        "num_gpus": 0,
        "object_store_memory": object_store_bytes(memory),
        # Every port picked by the OS: no clash with another job's nodes, or another node here.
        "node_manager_port": 0,
        "object_manager_port": 0,
        "min_worker_port": 0,
        "max_worker_port": 0,
        "dashboard_agent_listen_port": 0,
        "runtime_env_agent_port": 0,
        "metrics_export_port": 0,
        "ray_client_server_port": None,  # no Ray client server: the driver joins the GCS
    }
    if memory is not None:
        params["memory"] = max(1, memory - params["object_store_memory"])
    if args.role == "head":
        params.update(
            gcs_server_port=0,  # likewise
            include_dashboard=False,
            temp_dir=args.temp_dir,
        )
    else:
        params.update(gcs_address=args.address, include_log_monitor=False)
    return params


def marked_processes(name: str, value: str) -> list[int]:
    """Every process (but this one) whose environment holds name=value (Linux /proc)."""
    wanted = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def stop_processes(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(0.1)
            alive = [pid for pid in alive if _alive(pid)]
        pids = alive


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)


def run(args: argparse.Namespace) -> int:
    # Before Ray is imported: Ray reads both when it is imported.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    import ray._private.node
    import ray._private.parameter
    import ray._private.services

    os.environ[MARK] = secrets.token_hex(8)  # inherited by every process of this node
    memory = slurm_memory_bytes(dict(os.environ), args.cpus)
    params = ray._private.parameter.RayParams(**ray_params(args, memory))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    node = None
    try:
        node = ray._private.node.Node(
            params, head=args.role == "head", shutdown_at_exit=False, spawn_reaper=True
        )
        ray._private.services.wait_for_node(
            node.gcs_address, node.plasma_store_socket_name, timeout=JOIN_TIMEOUT
        )
        run_dir = Path(args.run_dir)
        if args.role == "head":
            _write(run_dir / "head-address", node.gcs_address)
        _write(run_dir / f"ready-{args.name}", node.node_id)
        log.warning(
            "Ray %s node %s up on %s (%s, %d CPUs, %s), cluster %s",
            args.role,
            node.node_id[:8],
            args.name,
            args.node_ip,
            args.cpus,
            "memory as Ray measures it" if memory is None else f"{memory // MiB} MiB from SLURM",
            node.gcs_address,
        )
        stop = run_dir / "stop"
        while not stop.exists():
            time.sleep(1)
            dead = [kind for kind, process in node.dead_processes() if process.returncode != 0]
            if dead:
                log.error("Ray process(es) of this node died: %s; stopping it", ", ".join(dead))
                return 1
        log.warning("the sweep is over: stopping the Ray node on %s", args.name)
        return 0
    except _Stop as signalled:
        log.warning("%s: stopping the Ray node on %s", signalled, args.name)
        return 0
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # let the clean-up finish
        if node is not None:
            node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)
        # Whatever else this node started, found by the mark every one of its processes
        # inherits (even those orphaned meanwhile), and only that: Ray's shutdown leaves the
        # agents the raylet started running for a minute or so.
        stop_processes(marked_processes(MARK, os.environ[MARK]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m runner.clusters.slurm_node",
        description="One Ray node inside a SLURM allocation (started by the script that "
        "`python -m runner slurm` writes).",
    )
    parser.add_argument("role", choices=("head", "worker"))
    parser.add_argument("--node-ip", required=True, help="this node's address")
    parser.add_argument("--cpus", type=int, required=True, help="CPUs this node offers")
    parser.add_argument(
        "--run-dir", required=True, help="folder for head-address and the ready-* files"
    )
    parser.add_argument(
        "--name",
        default=os.environ.get("SLURMD_NODENAME") or os.uname().nodename,
        help="node name (default: $SLURMD_NODENAME)",
    )
    parser.add_argument("--address", help="the head's GCS address (worker nodes)")
    parser.add_argument("--temp-dir", help="Ray's temporary folder on every node (head)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.role == "worker" and not args.address:
        parser.error("a worker node needs --address (the head's GCS address)")
    if args.cpus < 1:
        parser.error(f"--cpus must be at least 1, got {args.cpus}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
