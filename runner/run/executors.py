"""Where cells run: one interface, a Ray backend and an in-process serial backend.

Both run the very same cell function (`runner.run.cellrun.run_cell`); the sweep loop
(runner/run/sweep.py) is written once against this interface. The serial executor is for tests,
debugging with pdb, and machines without Ray.
"""

from __future__ import annotations

import logging
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from runner.errors import ExecutorError
from runner.job.spec import Resources
from runner.run.checkpoint import CheckpointPolicy
from runner.run.threads import thread_env

log = logging.getLogger("cpusweep")

# {"status": "ok", "row": {...}} or {"status": "failed", "failure": {...}}, and "warnings": [...]
Result = dict[str, Any]


class Executor(ABC):
    """Runs cell payloads and hands back their results as they finish."""

    #: how many cells can compute at the same time
    slots: int = 1

    @abstractmethod
    def submit(self, payload: dict[str, Any]) -> Any:
        """Start (or queue) one cell; returns a handle."""

    @abstractmethod
    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, Result]]:
        """Results of the handles that finished, waiting at most `timeout` for the first."""

    def cancel(self, handles: Sequence[Any]) -> None:  # noqa: B027 - optional hook
        """Stop the given cells (best effort)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend."""

    @abstractmethod
    def describe(self) -> str:
        """One line for the user: what runs the cells."""


def _failure_result(payload: dict[str, Any], error_class: str, exc: BaseException) -> Result:
    from runner.job.cells import Cell
    from runner.results.failures import failure_record

    return {
        "status": "failed",
        "failure": failure_record(Cell.from_payload(payload), error_class, exc),
    }


class SerialExecutor(Executor):
    """Runs each cell in this process, one at a time, when its result is waited for."""

    slots = 1

    def __init__(
        self,
        data_root: str | None,
        download: bool | None,
        torch_threads: int,
        checkpoints: CheckpointPolicy | None = None,
        pin_cores: int = 0,
        max_cell_minutes: float | None = None,
    ):
        self._data_root = data_root
        self._download = download
        self._threads = torch_threads
        self._checkpoints = checkpoints
        self._pin_cores = pin_cores
        self._max_cell_minutes = max_cell_minutes
        self._pending: dict[int, dict[str, Any]] = {}
        self._next = 0

    def submit(self, payload: dict[str, Any]) -> int:
        handle = self._next
        self._next += 1
        self._pending[handle] = payload
        return handle

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, Result]]:
        from runner.run.cellrun import run_cell

        for handle in handles:
            payload = self._pending.pop(handle, None)
            if payload is not None:
                result = run_cell(
                    payload,
                    self._data_root,
                    self._download,
                    self._checkpoints,
                    pin_cores=self._pin_cores,
                    max_cell_minutes=self._max_cell_minutes,
                )
                return [(handle, result)]
        return []

    def cancel(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            self._pending.pop(handle, None)

    def describe(self) -> str:
        return f"serial executor (this process, {self._threads} torch thread(s))"


def _ray_entry(
    payload: dict[str, Any],
    data_root: str | None,
    download: bool | None,
    checkpoints: CheckpointPolicy | None,
    pin_cores: int = 0,
    max_cell_minutes: float | None = None,
) -> Result:
    """The Ray task body: import lazily so the worker pays for torch once per process."""
    from runner.run.cellrun import run_cell

    return run_cell(
        payload,
        data_root,
        download,
        checkpoints,
        pin_cores=pin_cores,
        max_cell_minutes=max_cell_minutes,
    )


def _classify_ray_error(exc: BaseException) -> str:
    import ray.exceptions as rex

    if isinstance(exc, rex.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, rex.TaskCancelledError):
        return "cancelled"
    if isinstance(exc, rex.RayTaskError):
        return "application"
    return "worker_crash"  # WorkerCrashedError, NodeDiedError, ObjectLostError, ...


def _connection_hint(exc: BaseException) -> str:
    """What to do when joining a cluster failed; Ray buries the reason in the cause's text."""
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and len(chain) < 10:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    if any("AuthenticationError" in str(e) or "InvalidAuthToken" in str(e) for e in chain):
        return (
            "The cluster requires its authentication token: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN=<token> (or RAY_AUTH_TOKEN_PATH=<file holding it>); on a node of "
            "the cluster, `ray get-auth-token` prints it."
        )
    return "Check the address and that the cluster is up (ray status)."


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at a `host:port` (or `ray://host:port`) address: Ray
    itself keeps retrying for minutes. Other forms (`auto`, ...) are left to Ray."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"nothing answers at {address} ({exc.strerror or exc}): is the Ray head running "
            "there (`ray status` on it), and its port (6379 by default; 10001 for ray://) "
            "reachable from here? For the Docker cluster, see docs/clusters.md."
        ) from None


_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _loopback_only() -> None:
    """Make the local Ray that is about to start listen on 127.0.0.1 only.

    On Linux, Ray binds its servers (GCS, raylet, workers, agents) to every interface and the
    machine's address unless this variable is "0" (it is how Ray keeps Windows and macOS
    instances private). Each Ray process reads it once, when it imports Ray: the variable is
    set for the processes Ray is about to start, and this process's copy of the flag is
    corrected in case Ray was imported before. An explicit setting by the user is kept."""
    os.environ.setdefault(_LOOPBACK_ENV, "0")
    constants: Any = sys.modules.get("ray._private.ray_constants")
    if constants is not None and hasattr(constants, "ENABLE_RAY_CLUSTER"):
        constants.ENABLE_RAY_CLUSTER = os.environ[_LOOPBACK_ENV].lower() in ("1", "true")


class RayExecutor(Executor):
    """One cell = one Ray task with the job's num_cpus and memory, and enforced threads."""

    def __init__(
        self,
        resources: Resources,
        address: str | None,
        cpus: int | None,
        data_root: str | None,
        download: bool | None,
        checkpoints: CheckpointPolicy | None = None,
        max_retries: int = 3,
        pin_cores: int = 0,
    ):
        address = address or os.environ.get("RAY_ADDRESS") or None
        if address:
            _check_reachable(address)
        else:
            _loopback_only()
        # The owner of a task (this driver) decides how often an out-of-memory kill is retried
        # (Ray's default: forever); once is enough to ride out a passing memory spike.
        os.environ.setdefault("RAY_task_oom_retries", "1")
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - ray is a dependency
            raise ExecutorError(
                f"Ray cannot be imported ({exc}); use --executor serial or reinstall the project"
            ) from None
        self._ray = ray
        self._payloads: dict[Any, dict[str, Any]] = {}
        self._data_root = data_root
        self._download = download
        self._checkpoints = checkpoints
        self._pin_cores = pin_cores
        self._max_cell_minutes = resources.max_cell_minutes
        runtime_env = {
            "env_vars": thread_env(resources.torch_threads),
            "worker_process_setup_hook": "runner.run.threads.worker_setup_hook",
        }
        try:
            if address:
                if cpus is not None:
                    log.warning("--cpus is ignored when joining an existing cluster (%s)", address)
                ray.init(
                    address=address,
                    runtime_env=runtime_env,
                    logging_level=logging.WARNING,
                    log_to_driver=False,
                )
                self._where = f"Ray cluster at {address}"
            else:
                ray.init(
                    # A new private instance, even when `ray start` left one running here.
                    address="local",
                    num_cpus=cpus or os.cpu_count() or 1,
                    include_dashboard=False,
                    runtime_env=runtime_env,
                    # Quiet: e.g. the notice that token authentication is on, which is
                    # just what a private loopback instance should have.
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
                public = os.environ[_LOOPBACK_ENV].lower() in ("1", "true")
                self._where = (
                    f"local Ray (every interface: {_LOOPBACK_ENV} is set)"
                    if public
                    else "local Ray (loopback only)"
                )
        except ExecutorError:
            raise
        except Exception as exc:
            raise ExecutorError(
                f"could not start or reach Ray ({type(exc).__name__}: {exc}). "
                + (
                    _connection_hint(exc)
                    if address
                    else "Try --executor serial to run without Ray."
                )
            ) from None

        self._check_fits(resources)
        total_cpus = float(ray.cluster_resources().get("CPU", 0))
        self.slots = max(1, int(total_cpus // resources.cpus_per_cell))
        self._cpus = total_cpus
        self._remote = ray.remote(_ray_entry).options(
            num_cpus=resources.cpus_per_cell,
            memory=int(resources.memory_gb * 2**30),
            # Worker-process crashes and lost nodes only (cell errors are results); a retried
            # cell continues from its checkpoint.
            max_retries=max_retries,
            retry_exceptions=False,
        )

    def _check_fits(self, resources: Resources) -> None:
        """A cell that fits on no node would wait forever: say so now instead."""
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        cpu = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
        mem = max((n["Resources"].get("memory", 0) for n in nodes), default=0) / 2**30
        problems = []
        if cpu < resources.cpus_per_cell:
            problems.append(
                f"cells need {resources.cpus_per_cell} CPU(s) but the largest node "
                f"offers {cpu:g} (start worker nodes, or lower "
                "[resources] cpus_per_cell)"
            )
        if mem < resources.memory_gb:
            problems.append(
                f"cells need {resources.memory_gb:g} GiB of memory but the largest "
                f"node offers {mem:.1f} GiB (lower [resources] memory_gb)"
            )
        if problems:
            self.close()
            raise ExecutorError("; ".join(problems))

    def submit(self, payload: dict[str, Any]) -> Any:
        handle = self._remote.remote(
            payload,
            self._data_root,
            self._download,
            self._checkpoints,
            self._pin_cores,
            self._max_cell_minutes,
        )
        self._payloads[handle] = payload
        return handle

    def wait(self, handles: Sequence[Any], timeout: float) -> list[tuple[Any, Result]]:
        ray = self._ray
        handles = list(handles)
        ready, rest = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        finished = []
        for handle in ready:
            payload = self._payloads.pop(handle)
            try:
                finished.append((handle, ray.get(handle)))
            except Exception as exc:  # the task itself died: worker crash, OOM kill, cancel
                failure = _failure_result(payload, _classify_ray_error(exc), exc)
                finished.append((handle, failure))
        return finished

    def cancel(self, handles: Sequence[Any]) -> None:
        for handle in handles:
            try:
                self._ray.cancel(handle, force=True)
            except Exception as exc:  # already finished or gone: nothing to stop
                log.debug("cancel failed: %s", exc)

    def close(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()

    def describe(self) -> str:
        return f"{self._where}, {self._cpus:g} CPUs, {self.slots} cell slot(s)"
