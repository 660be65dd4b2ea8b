"""Datasets: a registry of names and shapes (pure), and readers that load them (torch).

`load_splits` is imported lazily so that `runner.datasets.registry` stays free of torch.
May import only `runner.errors`: every stage above may read datasets.
"""

from runner.datasets.registry import DATASETS, DatasetInfo

__all__ = ["DATASETS", "DatasetInfo"]
