"""Datasets: a registry of names and shapes (pure), and readers that load them (torch).

`load_splits` is imported lazily so that `runner.datasets.registry` stays free of torch.
"""

from runner.datasets.registry import DATASETS, DatasetInfo

__all__ = ["DATASETS", "DatasetInfo"]
