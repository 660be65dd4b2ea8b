"""Every BLAS/OpenMP pool of a cell is limited and recorded (threadpoolctl), numpy's OpenBLAS
included: environment variables no longer reach a library once it is loaded."""

from __future__ import annotations

import json

import numpy as np
import torch

from runner.run.threads import apply_threads, observe, thread_pools


def test_every_loaded_pool_follows_each_cells_thread_count() -> None:
    np.dot(np.ones((64, 64)), np.ones((64, 64)))  # numpy's BLAS is loaded and has run
    torch.ones(8) @ torch.ones(8)
    try:
        apply_threads(2)  # a cell asking for 2 threads, then one asking for 1, in one process
        assert {p["num_threads"] for p in thread_pools()} == {2}
        apply_threads(1)
        pools = thread_pools()
        assert {p["user_api"] for p in pools} >= {"blas", "openmp"}
        assert {p["num_threads"] for p in pools} == {1}
        assert torch.get_num_threads() == 1
        row = observe()
        assert json.loads(row["thread_pools"]) == pools and row["max_pool_threads"] == 1
    finally:
        apply_threads(1)
