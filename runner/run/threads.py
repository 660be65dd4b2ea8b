"""Enforcing, and observing, the number of threads a cell computes with.

Ray's num_cpus is admission control only, and its workers are reused across tasks: a torch
that first ran in a 2-CPU task keeps 2 threads for the next 1-CPU task (Ray issue 35937).
So the thread count is enforced four ways (environment variables for every BLAS/OpenMP
library, a worker set-up hook, `torch.set_num_threads` at the top of each cell, and
threadpoolctl's limit on every BLAS and OpenMP pool loaded in the process, numpy's OpenBLAS
included, which the variables reach only before the library loads) and then observed from
inside the cell and recorded with its result (each pool threadpoolctl finds, with its size),
so the claim "one constrained CPU" is checked rather than assumed.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

THREADS_ENV = "CPUSWEEP_TORCH_THREADS"
_LIBRARY_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap every numeric library of a worker at `threads`."""
    env = {name: str(threads) for name in _LIBRARY_VARS}
    env[THREADS_ENV] = str(threads)
    return env


def apply_threads(threads: int) -> None:
    """Set torch's thread pools (and the library variables, for anything started later)."""
    import torch

    os.environ.update(thread_env(threads))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    # The inter-op pool can be sized only once per process, before any parallel work; on a
    # reused worker it raises. Its size is observed and recorded either way.
    try:
        if torch.get_num_interop_threads() != threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError:
        pass
    # The pools loaded now (numpy's BLAS, torch's OpenMP); set again per cell, as a reused
    # worker may have run a cell with another count.
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def worker_setup_hook() -> None:
    """Ray `worker_process_setup_hook`: runs once in every new worker process of the job."""
    from runner.run.allocator import steady_allocator

    threads = int(os.environ.get(THREADS_ENV, "1"))
    apply_threads(threads)
    steady_allocator()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def thread_pools() -> list[dict[str, Any]]:
    """Every BLAS and OpenMP pool loaded in this process, as threadpoolctl reports it."""
    from threadpoolctl import threadpool_info

    keep = ("user_api", "internal_api", "prefix", "version", "num_threads")
    pools = [{k: info.get(k) for k in keep} for info in threadpool_info()]
    return sorted(pools, key=lambda p: (str(p["user_api"]), str(p["prefix"])))


def observe() -> dict[str, Any]:
    """What this process really computes with, for the result row."""
    import torch

    from runner.run.allocator import current

    pools = thread_pools()
    try:
        os_threads = len(os.listdir("/proc/self/task"))
    except OSError:
        os_threads = -1
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = []
    return {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "os_threads": os_threads,
        "cpu_affinity": ",".join(map(str, affinity)),
        "cpu_model": _cpu_model(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""),
        "allocator": current(),
        # [{"user_api": "blas", "internal_api": "openblas", "num_threads": 1, ...}, ...]
        "thread_pools": json.dumps(pools, sort_keys=True),
        "max_pool_threads": max((int(p["num_threads"] or 0) for p in pools), default=0),
    }
